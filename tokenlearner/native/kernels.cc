// Fused CPU kernels for training the mini ViT through TensorFlow, built by
// tokenlearner/native/__init__.py on first use.
//
// TokenlearnerDropoutMask draws the very random numbers that Keras' TensorFlow dropout
// (tf.nn.experimental.stateless_dropout) draws, Philox4x32-10 from the key and counter of
// StatelessRandomGetKeyCounter, and turns them into the mask 0 or 1/(1 - rate) in the same
// pass. TensorFlow's generator writes every number to memory and then compares and selects
// in further passes; this kernel runs 16 (AVX-512) or 8 (AVX2) Philox streams side by side.
//
// TokenlearnerGelu and TokenlearnerGeluGrad compute the tanh-approximate GELU,
// 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as x sigmoid(2u),
// and its gradient, in one pass each instead of TensorFlow's chain of element-wise ops.
//
// TokenlearnerLayerNorm and TokenlearnerLayerNormGrad normalise over the last axis, as
// keras.layers.LayerNormalization does, reading and writing each row once instead of
// TensorFlow's mean, variance, rsqrt, scale and shift passes; the gradient's sums over rows
// (for gamma and beta) are taken per block of rows and then in block order, so they do not
// depend on how many threads ran.
//
// TokenlearnerAttention and TokenlearnerAttentionGrad compute multi-head self-attention
// after the projections, softmax(scale q k^T), dropout by a given mask, times v, and its
// gradient, one (image, head) at a time on copies that fit in cache, reading the heads
// where they lie in the (B, T, heads x key_dim) projections instead of transposing them.
//
// Every kernel takes `instruction_set` ("auto", "avx512", "avx2" or "portable"); "auto"
// picks the widest the CPU has, and the others exist so that tests can check each path.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define TOKENLEARNER_X86 1
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tokenlearner {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

enum class InstructionSet { kPortable, kAvx2, kAvx512 };

bool Supports(InstructionSet set) {
#ifdef TOKENLEARNER_X86
  switch (set) {
    case InstructionSet::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma");
    case InstructionSet::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case InstructionSet::kPortable:
      return true;
  }
  return false;
#else
  return set == InstructionSet::kPortable;
#endif
}

const char* Name(InstructionSet set) {
  switch (set) {
    case InstructionSet::kAvx512:
      return "avx512";
    case InstructionSet::kAvx2:
      return "avx2";
    case InstructionSet::kPortable:
      return "portable";
  }
  return "portable";
}

InstructionSet Widest() {
  for (InstructionSet set : {InstructionSet::kAvx512, InstructionSet::kAvx2}) {
    if (Supports(set)) return set;
  }
  return InstructionSet::kPortable;
}

absl::Status ParseInstructionSet(const std::string& name, InstructionSet* set) {
  if (name == "auto") {
    *set = Widest();
    return absl::OkStatus();
  }
  for (InstructionSet candidate :
       {InstructionSet::kPortable, InstructionSet::kAvx2, InstructionSet::kAvx512}) {
    if (name == Name(candidate)) {
      if (!Supports(candidate)) {
        return absl::InvalidArgumentError("instruction set " + name + " is not supported by this CPU");
      }
      *set = candidate;
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError("unknown instruction set " + name);
}

// ---------------------------------------------------------------- Philox dropout mask

constexpr uint32_t kPhiloxM0 = 0xD2511F53, kPhiloxM1 = 0xCD9E8D57;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9, kPhiloxW1 = 0xBB67AE85;
constexpr int kPhiloxRounds = 10;
// A unit of work: 16 Philox counters, 4 numbers each.
constexpr int64_t kGroupsPerBlock = 16;
constexpr int64_t kElementsPerBlock = 4 * kGroupsPerBlock;

struct MaskParams {
  uint32_t key0, key1;
  uint64_t counter_low, counter_high;
  uint32_t threshold;  // keep an element when the low 23 bits of its number reach this
  float scale;
};

// The 128-bit counter of group `group`, as four 32-bit words, low first.
inline void Counter(const MaskParams& p, uint64_t group, uint32_t words[4]) {
  const uint64_t low = p.counter_low + group;
  const uint64_t high = p.counter_high + (low < p.counter_low ? 1 : 0);
  words[0] = static_cast<uint32_t>(low);
  words[1] = static_cast<uint32_t>(low >> 32);
  words[2] = static_cast<uint32_t>(high);
  words[3] = static_cast<uint32_t>(high >> 32);
}

// Element 4 g + j of the output takes number j of group g, as StatelessRandomUniformV2 lays
// them out; `lanes[j][l]` is number j of the block's group l.
inline void WriteBlock(const float lanes[4][kGroupsPerBlock], int64_t first, int64_t n, float* out) {
  const int64_t count = std::min<int64_t>(kElementsPerBlock, n - first);
  if (count == kElementsPerBlock) {
    for (int64_t l = 0; l < kGroupsPerBlock; ++l) {
      for (int j = 0; j < 4; ++j) out[first + 4 * l + j] = lanes[j][l];
    }
    return;
  }
  for (int64_t e = 0; e < count; ++e) out[first + e] = lanes[e % 4][e / 4];
}

void MaskBlocksPortable(const MaskParams& p, int64_t begin, int64_t end, int64_t n, float* out) {
  float lanes[4][kGroupsPerBlock];
  for (int64_t block = begin; block < end; ++block) {
    for (int64_t l = 0; l < kGroupsPerBlock; ++l) {
      uint32_t x[4];
      Counter(p, static_cast<uint64_t>(block * kGroupsPerBlock + l), x);
      uint32_t k0 = p.key0, k1 = p.key1;
      for (int round = 0; round < kPhiloxRounds; ++round) {
        const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * x[0];
        const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * x[2];
        const uint32_t y0 = static_cast<uint32_t>(product1 >> 32) ^ x[1] ^ k0;
        const uint32_t y2 = static_cast<uint32_t>(product0 >> 32) ^ x[3] ^ k1;
        x[1] = static_cast<uint32_t>(product1);
        x[3] = static_cast<uint32_t>(product0);
        x[0] = y0;
        x[2] = y2;
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
      }
      for (int j = 0; j < 4; ++j) lanes[j][l] = (x[j] & 0x7fffff) >= p.threshold ? p.scale : 0.0f;
    }
    WriteBlock(lanes, block * kElementsPerBlock, n, out);
  }
}

#ifdef TOKENLEARNER_X86

__attribute__((target("avx512f"))) inline void MulHiLo512(__m512i a, __m512i m, __m512i* low, __m512i* high) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *low = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *high = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) void MaskBlocksAvx512(const MaskParams& p, int64_t begin, int64_t end,
                                                         int64_t n, float* out) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i low23 = _mm512_set1_epi32(0x7fffff);
  const __m512i threshold = _mm512_set1_epi32(static_cast<int>(p.threshold));
  const __m512 keep = _mm512_set1_ps(p.scale), drop = _mm512_setzero_ps();
  alignas(64) uint32_t words[4][kGroupsPerBlock];
  alignas(64) float lanes[4][kGroupsPerBlock];
  for (int64_t block = begin; block < end; ++block) {
    for (int64_t l = 0; l < kGroupsPerBlock; ++l) {
      uint32_t x[4];
      Counter(p, static_cast<uint64_t>(block * kGroupsPerBlock + l), x);
      for (int j = 0; j < 4; ++j) words[j][l] = x[j];
    }
    __m512i x0 = _mm512_load_si512(words[0]), x1 = _mm512_load_si512(words[1]);
    __m512i x2 = _mm512_load_si512(words[2]), x3 = _mm512_load_si512(words[3]);
    uint32_t k0 = p.key0, k1 = p.key1;
    for (int round = 0; round < kPhiloxRounds; ++round) {
      __m512i low0, high0, low1, high1;
      MulHiLo512(x0, m0, &low0, &high0);
      MulHiLo512(x2, m1, &low1, &high1);
      const __m512i y0 = _mm512_xor_si512(_mm512_xor_si512(high1, x1), _mm512_set1_epi32(static_cast<int>(k0)));
      const __m512i y2 = _mm512_xor_si512(_mm512_xor_si512(high0, x3), _mm512_set1_epi32(static_cast<int>(k1)));
      x0 = y0;
      x1 = low1;
      x2 = y2;
      x3 = low0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const __m512i numbers[4] = {x0, x1, x2, x3};
    for (int j = 0; j < 4; ++j) {
      const __mmask16 kept = _mm512_cmpge_epu32_mask(_mm512_and_si512(numbers[j], low23), threshold);
      _mm512_store_ps(lanes[j], _mm512_mask_blend_ps(kept, drop, keep));
    }
    WriteBlock(lanes, block * kElementsPerBlock, n, out);
  }
}

__attribute__((target("avx2"))) inline void MulHiLo256(__m256i a, __m256i m, __m256i* low, __m256i* high) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"))) void MaskBlocksAvx2(const MaskParams& p, int64_t begin, int64_t end,
                                                    int64_t n, float* out) {
  constexpr int kWidth = 8;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i low23 = _mm256_set1_epi32(0x7fffff);
  // The low 23 bits are never negative, so a signed comparison serves.
  const __m256i threshold = _mm256_set1_epi32(static_cast<int>(p.threshold));
  const __m256 keep = _mm256_set1_ps(p.scale);
  alignas(32) uint32_t words[4][kGroupsPerBlock];
  alignas(32) float lanes[4][kGroupsPerBlock];
  for (int64_t block = begin; block < end; ++block) {
    for (int64_t l = 0; l < kGroupsPerBlock; ++l) {
      uint32_t x[4];
      Counter(p, static_cast<uint64_t>(block * kGroupsPerBlock + l), x);
      for (int j = 0; j < 4; ++j) words[j][l] = x[j];
    }
    for (int half = 0; half < kGroupsPerBlock; half += kWidth) {
      __m256i x0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[0] + half));
      __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[1] + half));
      __m256i x2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[2] + half));
      __m256i x3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[3] + half));
      uint32_t k0 = p.key0, k1 = p.key1;
      for (int round = 0; round < kPhiloxRounds; ++round) {
        __m256i low0, high0, low1, high1;
        MulHiLo256(x0, m0, &low0, &high0);
        MulHiLo256(x2, m1, &low1, &high1);
        const __m256i y0 = _mm256_xor_si256(_mm256_xor_si256(high1, x1), _mm256_set1_epi32(static_cast<int>(k0)));
        const __m256i y2 = _mm256_xor_si256(_mm256_xor_si256(high0, x3), _mm256_set1_epi32(static_cast<int>(k1)));
        x0 = y0;
        x1 = low1;
        x2 = y2;
        x3 = low0;
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
      }
      const __m256i numbers[4] = {x0, x1, x2, x3};
      for (int j = 0; j < 4; ++j) {
        const __m256i dropped = _mm256_cmpgt_epi32(threshold, _mm256_and_si256(numbers[j], low23));
        _mm256_store_ps(lanes[j] + half, _mm256_andnot_ps(_mm256_castsi256_ps(dropped), keep));
      }
    }
    WriteBlock(lanes, block * kElementsPerBlock, n, out);
  }
}

#endif  // TOKENLEARNER_X86

void MaskBlocks(InstructionSet set, const MaskParams& p, int64_t begin, int64_t end, int64_t n, float* out) {
#ifdef TOKENLEARNER_X86
  if (set == InstructionSet::kAvx512) return MaskBlocksAvx512(p, begin, end, n, out);
  if (set == InstructionSet::kAvx2) return MaskBlocksAvx2(p, begin, end, n, out);
#endif
  MaskBlocksPortable(p, begin, end, n, out);
}

// ---------------------------------------------------------------- one loop, three instruction sets

// `Loop` inlined into a function compiled for AVX-512, for AVX2 or for neither, so that the
// compiler vectorises the same source for each; `Run` calls the one `set` names.
template <auto Loop, typename... Args>
__attribute__((target("avx512f,avx2,fma"))) void RunAvx512(Args... args) {
  Loop(args...);
}
template <auto Loop, typename... Args>
__attribute__((target("avx2,fma"))) void RunAvx2(Args... args) {
  Loop(args...);
}
template <auto Loop, typename... Args>
void RunPortable(Args... args) {
  Loop(args...);
}

template <auto Loop, typename... Args>
void Run(InstructionSet set, Args... args) {
#ifdef TOKENLEARNER_X86
  if (set == InstructionSet::kAvx512) return RunAvx512<Loop>(args...);
  if (set == InstructionSet::kAvx2) return RunAvx2<Loop>(args...);
#endif
  RunPortable<Loop>(args...);
}

// ---------------------------------------------------------------- GELU

constexpr float kSqrt2OverPi = 0.7978845608028654f, kCubic = 0.044715f;

// exp(v) for v in float range: Cephes' expf (range reduction by ln 2, degree-6 polynomial),
// branch-free so that the loops below vectorise (with -fno-trapping-math).
inline __attribute__((always_inline)) float Exp(float v) {
  v = v < -87.3f ? -87.3f : v;
  v = v > 88.3f ? 88.3f : v;
  // Adding 1.5 x 2^23 rounds to the nearest integer, which lands in the low mantissa bits.
  constexpr float kRound = 12582912.0f;
  const float shifted = v * 1.44269504088896341f + kRound;
  int32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
  const int32_t n = shifted_bits - 0x4B400000;
  const float nf = shifted - kRound;
  const float r = (v - nf * 0.693359375f) + nf * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  // Unsigned, so that the garbage exponent of a NaN input shifts without undefined behaviour.
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof(power));
  return poly * power;
}

// sigmoid(2u) = 0.5 (1 + tanh(u)).
inline __attribute__((always_inline)) float Gate(float x) {
  return 1.0f / (1.0f + Exp(-2.0f * kSqrt2OverPi * (x + kCubic * x * x * x)));
}

inline __attribute__((always_inline)) void GeluLoop(const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * Gate(x[i]);
}

// d/dx x s(2u) = s + 2 x s (1 - s) u'.
inline __attribute__((always_inline)) void GeluGradLoop(const float* __restrict dy, const float* __restrict x,
                                                       float* __restrict dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float gate = Gate(v);
    const float slope = kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
    dx[i] = dy[i] * (gate + 2.0f * v * gate * (1.0f - gate) * slope);
  }
}

// ---------------------------------------------------------------- LayerNorm

struct RowMoments {
  float mean, inverse_std;
};

// Keras' LayerNormalization: mean, then the mean squared difference from it.
inline __attribute__((always_inline)) RowMoments Moments(const float* __restrict x, int64_t width, float epsilon) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < width; ++c) sum += x[c];
  const float mean = sum / static_cast<float>(width);
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < width; ++c) squares += (x[c] - mean) * (x[c] - mean);
  return {mean, 1.0f / std::sqrt(squares / static_cast<float>(width) + epsilon)};
}

inline __attribute__((always_inline)) void LayerNormRows(const float* __restrict x, const float* __restrict gamma,
                                                        const float* __restrict beta, float* __restrict y,
                                                        int64_t rows, int64_t width, float epsilon) {
  for (int64_t row = 0; row < rows; ++row) {
    const float* in = x + row * width;
    float* out = y + row * width;
    const RowMoments moments = Moments(in, width, epsilon);
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) {
      // In Keras' order: x * (inv gamma) + (beta - mean * inv gamma).
      const float scale = moments.inverse_std * gamma[c];
      out[c] = in[c] * scale + (beta[c] - moments.mean * scale);
    }
  }
}

// dx = inv (g - mean(g) - xhat mean(g xhat)) with g = dy gamma and xhat = (x - mean) inv;
// this block's sums of dy xhat and dy go to gamma_sum and beta_sum.
inline __attribute__((always_inline)) void LayerNormGradRows(const float* __restrict dy, const float* __restrict x,
                                                            const float* __restrict gamma, float* __restrict dx,
                                                            float* __restrict gamma_sum, float* __restrict beta_sum,
                                                            int64_t rows, int64_t width, float epsilon) {
  for (int64_t c = 0; c < width; ++c) gamma_sum[c] = beta_sum[c] = 0.0f;
  for (int64_t row = 0; row < rows; ++row) {
    const float* gradient = dy + row * width;
    const float* in = x + row * width;
    float* out = dx + row * width;
    const RowMoments moments = Moments(in, width, epsilon);
    float g_sum = 0.0f, g_xhat_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, g_xhat_sum)
    for (int64_t c = 0; c < width; ++c) {
      const float xhat = (in[c] - moments.mean) * moments.inverse_std;
      const float g = gradient[c] * gamma[c];
      g_sum += g;
      g_xhat_sum += g * xhat;
      gamma_sum[c] += gradient[c] * xhat;
      beta_sum[c] += gradient[c];
    }
    const float g_mean = g_sum / static_cast<float>(width);
    const float g_xhat_mean = g_xhat_sum / static_cast<float>(width);
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) {
      const float xhat = (in[c] - moments.mean) * moments.inverse_std;
      out[c] = moments.inverse_std * (gradient[c] * gamma[c] - g_mean - xhat * g_xhat_mean);
    }
  }
}

// ---------------------------------------------------------------- self-attention

// One (image, head) of multi-head self-attention at a time, on copies of its queries, keys
// and values that fit in cache: the heads are read out of the (B, T, heads x key_dim)
// projections where they lie, so no transposes, and each of the five matrix products runs
// through one register-blocked kernel. The copies are zero-padded to whole blocks of the
// product kernel (rows to 4, columns to 32), so it needs no edge cases.

constexpr int64_t kBlockRows = 4, kBlockColumns = 32;

inline int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// c = alpha a b for a (m x k, element [i][p] at a[i lda + p step], so that a may be a
// transpose), b (k x n, row stride ldb) and c (m x n, row stride ldc), with m a multiple of
// kBlockRows and n of kBlockColumns; sums run over k in order. a's elements are broadcast
// one at a time, so its layout costs nothing; b's rows are read as vectors. c is computed
// one panel of kBlockColumns columns at a time, so that b's panel stays in L1 while every
// row of a passes it, in blocks of 8 rows where they fit (16 accumulators of the 32
// AVX-512 registers: b is loaded once per 16 multiply-adds) and of 4 for the rest.
#ifdef TOKENLEARNER_X86
template <int Rows>
__attribute__((target("avx512f,fma"))) inline __attribute__((always_inline)) void BlockAvx512(
    const float* a, int64_t lda, int64_t step, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t k,
    float alpha) {
  __m512 sums[Rows][2];
  for (auto& row : sums) row[0] = row[1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    const __m512 low = _mm512_loadu_ps(b + p * ldb), high = _mm512_loadu_ps(b + p * ldb + 16);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const __m512 factor = _mm512_set1_ps(a[r * lda + p * step]);
      sums[r][0] = _mm512_fmadd_ps(factor, low, sums[r][0]);
      sums[r][1] = _mm512_fmadd_ps(factor, high, sums[r][1]);
    }
  }
  const __m512 factor = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
    _mm512_storeu_ps(c + r * ldc, _mm512_mul_ps(factor, sums[r][0]));
    _mm512_storeu_ps(c + r * ldc + 16, _mm512_mul_ps(factor, sums[r][1]));
  }
}

__attribute__((target("avx512f,fma"))) void MatMulAvx512(const float* a, int64_t lda, int64_t step, const float* b,
                                                         int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
                                                         int64_t k, float alpha) {
  for (int64_t j = 0; j < n; j += kBlockColumns) {
    int64_t i = 0;
    for (; i + 2 * kBlockRows <= m; i += 2 * kBlockRows) {
      BlockAvx512<2 * kBlockRows>(a + i * lda, lda, step, b + j, ldb, c + i * ldc + j, ldc, k, alpha);
    }
    if (i < m) BlockAvx512<kBlockRows>(a + i * lda, lda, step, b + j, ldb, c + i * ldc + j, ldc, k, alpha);
  }
}

// The same with AVX2: blocks of 4 rows by 16 columns (8 accumulators of the 16 registers).
__attribute__((target("avx2,fma"))) void MatMulAvx2(const float* a, int64_t lda, int64_t step, const float* b,
                                                    int64_t ldb, float* c, int64_t ldc, int64_t m, int64_t n,
                                                    int64_t k, float alpha) {
  for (int64_t j = 0; j < n; j += 16) {
    for (int64_t i = 0; i < m; i += kBlockRows) {
      __m256 sums[kBlockRows][2];
      for (auto& row : sums) row[0] = row[1] = _mm256_setzero_ps();
      const float* column = b + j;
      const float* rows = a + i * lda;
      for (int64_t p = 0; p < k; ++p) {
        const __m256 low = _mm256_loadu_ps(column + p * ldb), high = _mm256_loadu_ps(column + p * ldb + 8);
#pragma GCC unroll 4
        for (int64_t r = 0; r < kBlockRows; ++r) {
          const __m256 factor = _mm256_set1_ps(rows[r * lda + p * step]);
          sums[r][0] = _mm256_fmadd_ps(factor, low, sums[r][0]);
          sums[r][1] = _mm256_fmadd_ps(factor, high, sums[r][1]);
        }
      }
      const __m256 factor = _mm256_set1_ps(alpha);
      for (int64_t r = 0; r < kBlockRows; ++r) {
        _mm256_storeu_ps(c + (i + r) * ldc + j, _mm256_mul_ps(factor, sums[r][0]));
        _mm256_storeu_ps(c + (i + r) * ldc + j + 8, _mm256_mul_ps(factor, sums[r][1]));
      }
    }
  }
}
#endif

void MatMulPortable(const float* a, int64_t lda, int64_t step, const float* b, int64_t ldb, float* c, int64_t ldc,
                    int64_t m, int64_t n, int64_t k, float alpha) {
  for (int64_t i = 0; i < m; ++i) {
    float* out = c + i * ldc;
    std::fill(out, out + n, 0.0f);
    for (int64_t p = 0; p < k; ++p) {
      const float factor = a[i * lda + p * step];
      const float* row = b + p * ldb;
      for (int64_t j = 0; j < n; ++j) out[j] += factor * row[j];
    }
    for (int64_t j = 0; j < n; ++j) out[j] *= alpha;
  }
}

using MatMulFunction = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                                int64_t, int64_t, float);

// A product's right factor is read a panel of rows at a time, and at a power-of-two row
// stride (the projections' 2 KB, or 64 or 128 floats) those rows fall into a few of L1's
// sets and evict each other. Every right factor is therefore a copy whose rows are one
// cache line longer than they need to be.
constexpr int64_t kSkew = 16;

// Where one (image, head) lies in the (B, T, heads x key_dim) projections and (B, heads, T, T)
// weights, and the padded sizes of its copies. Where the tokens and key_dim fill whole
// product blocks (64 tokens and key_dim 128, as in keras.io), the products read their left
// factors in the projections and write their results there in place.
struct Head {
  int64_t tokens, key_dim, width;  // width = heads x key_dim, the projections' row stride
  int64_t rows, columns, padded_dim;  // tokens rounded up to kBlockRows and to kBlockColumns, key_dim to kBlockColumns
  int64_t copy_stride, transposed_stride;  // of the copies (padded_dim + kSkew) and transposed copies (columns + kSkew)
  bool in_place;  // rows == tokens and padded_dim == key_dim
  int64_t Offset(int64_t image, int64_t head) const { return image * tokens * width + head * key_dim; }
  // Floats in a copy or a transposed copy (the larger).
  int64_t Tall() const { return std::max(columns * copy_stride, padded_dim * transposed_stride); }
  // The scratch one head needs, in floats.
  int64_t Scratch() const { return 3 * columns * columns + 5 * Tall(); }
};

Head MakeHead(int64_t tokens, int64_t key_dim, int64_t heads) {
  const int64_t columns = RoundUp(tokens, kBlockColumns), padded_dim = RoundUp(key_dim, kBlockColumns);
  Head head{tokens, key_dim, heads * key_dim, RoundUp(tokens, kBlockRows), columns, padded_dim,
            padded_dim + kSkew, columns + kSkew, false};
  head.in_place = head.rows == tokens && head.padded_dim == key_dim;
  return head;
}

struct Operand {
  const float* data;
  int64_t stride;
};
struct Target {
  float* data;
  int64_t stride;
};

// A head's rows of a projection, times `scale`, copied into `copy` with zeros around, as a
// product's operand (rows x padded_dim, row stride copy_stride).
inline __attribute__((always_inline)) Operand Rows(const Head& h, const float* from, float* copy, float scale = 1.0f) {
  for (int64_t i = 0; i < h.rows; ++i) {
    float* out = copy + i * h.copy_stride;
    if (i < h.tokens) {
      const float* in = from + i * h.width;
#pragma omp simd
      for (int64_t c = 0; c < h.key_dim; ++c) out[c] = in[c] * scale;
      std::fill(out + h.key_dim, out + h.padded_dim, 0.0f);
    } else {
      std::fill(out, out + h.padded_dim, 0.0f);
    }
  }
  return {copy, h.copy_stride};
}

// Where a product bound for a head's rows of `to` is written: there, or into `scratch` for
// `WriteBack`.
inline __attribute__((always_inline)) Target Destination(const Head& h, float* to, float* scratch) {
  return h.in_place ? Target{to, h.width} : Target{scratch, h.padded_dim};
}

inline __attribute__((always_inline)) void WriteBack(const Head& h, const Target& product, float* to) {
  if (h.in_place) return;
  for (int64_t i = 0; i < h.tokens; ++i) {
    const float* row = product.data + i * product.stride;
    std::copy(row, row + h.key_dim, to + i * h.width);
  }
}

// to[c][j] = from[j][c] (row stride transposed_stride) for c < key_dim, j < tokens, zero
// for tokens <= j < columns. The
// rows are read whole: reading a column at the projections' stride (a power of two) would
// keep hitting the same few cache sets.
inline __attribute__((always_inline)) void CopyTransposed(const Head& h, const float* from, int64_t stride,
                                                          float* to) {
  for (int64_t j = 0; j < h.tokens; ++j) {
    const float* in = from + j * stride;
    for (int64_t c = 0; c < h.key_dim; ++c) to[c * h.transposed_stride + j] = in[c];
  }
  for (int64_t c = 0; c < h.key_dim; ++c) {
    std::fill(to + c * h.transposed_stride + h.tokens, to + c * h.transposed_stride + h.columns, 0.0f);
  }
}

// Zeroes a square's rows from `tokens` to `rows`, and each row's columns from `tokens` to
// `rows`, which a product reads where the square or its transpose is its left factor.
inline __attribute__((always_inline)) void ZeroEdges(const Head& h, float* square) {
  for (int64_t i = 0; i < h.tokens; ++i) {
    std::fill(square + i * h.columns + h.tokens, square + i * h.columns + h.rows, 0.0f);
  }
  std::fill(square + h.tokens * h.columns, square + h.rows * h.columns, 0.0f);
}

struct AttentionArgs {
  const float *query, *key, *value, *mask;  // mask: (B, heads, T, T) factors, or nullptr for no dropout
  float scale;  // of the queries, 1/sqrt(key_dim)
  int64_t heads;
};

// attended = dropout(softmax(scale q k^T)) v for units [begin, end) (unit = image x heads + head);
// the softmax, before dropout, goes to `weights` for the gradient.
template <MatMulFunction MatMul>
inline __attribute__((always_inline)) void AttentionUnits(const Head& h, const AttentionArgs& args, float* attended,
                                                          float* weights, float* scratch, int64_t begin,
                                                          int64_t end) {
  const int64_t square = h.columns * h.columns, tall = h.Tall();
  float *query_copy = scratch, *value_copy = query_copy + tall, *key_t = value_copy + tall, *product = key_t + tall,
        *scores = product + tall, *dropped = scores + square;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t image = unit / args.heads, head = unit % args.heads, offset = h.Offset(image, head);
    // The queries are scaled before their product, as Keras scales them, for the same rounding.
    const Operand query = Rows(h, args.query + offset, query_copy, args.scale),
                  value = Rows(h, args.value + offset, value_copy);
    CopyTransposed(h, args.key + offset, h.width, key_t);
    MatMul(query.data, query.stride, 1, key_t, h.transposed_stride, scores, h.columns, h.rows, h.columns, h.key_dim, 1.0f);
    float* unit_weights = weights + unit * h.tokens * h.tokens;
    const float* unit_mask = args.mask ? args.mask + unit * h.tokens * h.tokens : nullptr;
    for (int64_t i = 0; i < h.tokens; ++i) {
      const float* row = scores + i * h.columns;
      float largest = row[0];
#pragma omp simd reduction(max : largest)
      for (int64_t j = 1; j < h.tokens; ++j) largest = std::max(largest, row[j]);
      float* out = unit_weights + i * h.tokens;
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < h.tokens; ++j) {
        out[j] = Exp(row[j] - largest);
        total += out[j];
      }
      const float inverse = 1.0f / total;
      float* kept = dropped + i * h.columns;
#pragma omp simd
      for (int64_t j = 0; j < h.tokens; ++j) out[j] *= inverse;
      if (unit_mask) {
#pragma omp simd
        for (int64_t j = 0; j < h.tokens; ++j) kept[j] = out[j] * unit_mask[i * h.tokens + j];
      } else {
        std::copy(out, out + h.tokens, kept);
      }
    }
    ZeroEdges(h, dropped);
    const Target out = Destination(h, attended + offset, product);
    MatMul(dropped, h.columns, 1, value.data, value.stride, out.data, out.stride, h.rows, h.padded_dim, h.tokens, 1.0f);
    WriteBack(h, out, attended + offset);
  }
}

struct AttentionGradArgs {
  AttentionArgs forward;
  const float *d_attended, *weights;
};

// d_query, d_key and d_value for units [begin, end), from the forward pass's weights.
template <MatMulFunction MatMul>
inline __attribute__((always_inline)) void AttentionGradUnits(const Head& h, const AttentionGradArgs& args,
                                                              float* d_query, float* d_key, float* d_value,
                                                              float* scratch, int64_t begin, int64_t end) {
  const int64_t square = h.columns * h.columns, tall = h.Tall();
  float *query_copy = scratch, *key_copy = query_copy + tall, *d_out_copy = key_copy + tall,
        *value_t = d_out_copy + tall, *product = value_t + tall, *dropped = product + tall,
        *d_dropped = dropped + square, *d_scores = d_dropped + square;
  const AttentionArgs& in = args.forward;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t image = unit / in.heads, head = unit % in.heads, offset = h.Offset(image, head);
    // The keys' gradient is the scores' gradient times the scaled queries, as in Keras.
    const Operand query = Rows(h, in.query + offset, query_copy, in.scale), key = Rows(h, in.key + offset, key_copy),
                  d_out = Rows(h, args.d_attended + offset, d_out_copy);
    CopyTransposed(h, in.value + offset, h.width, value_t);
    const float* unit_weights = args.weights + unit * h.tokens * h.tokens;
    const float* unit_mask = in.mask ? in.mask + unit * h.tokens * h.tokens : nullptr;
    for (int64_t i = 0; i < h.tokens; ++i) {
      const float* p = unit_weights + i * h.tokens;
      float* kept = dropped + i * h.columns;
      if (unit_mask) {
#pragma omp simd
        for (int64_t j = 0; j < h.tokens; ++j) kept[j] = p[j] * unit_mask[i * h.tokens + j];
      } else {
        std::copy(p, p + h.tokens, kept);
      }
    }
    // d(dropped weights) = d_out v^T, then back through the dropout and the softmax.
    MatMul(d_out.data, d_out.stride, 1, value_t, h.transposed_stride, d_dropped, h.columns, h.rows, h.columns, h.key_dim,
           1.0f);
    for (int64_t i = 0; i < h.tokens; ++i) {
      const float* p = unit_weights + i * h.tokens;
      float* d_p = d_dropped + i * h.columns;
      if (unit_mask) {
#pragma omp simd
        for (int64_t j = 0; j < h.tokens; ++j) d_p[j] *= unit_mask[i * h.tokens + j];
      }
      float along = 0.0f;
#pragma omp simd reduction(+ : along)
      for (int64_t j = 0; j < h.tokens; ++j) along += d_p[j] * p[j];
      float* d_s = d_scores + i * h.columns;
#pragma omp simd
      for (int64_t j = 0; j < h.tokens; ++j) d_s[j] = (d_p[j] - along) * p[j];
    }
    ZeroEdges(h, dropped);
    ZeroEdges(h, d_scores);
    // The transposes of the weights and of the scores' gradient are read in place (step = columns).
    Target out = Destination(h, d_value + offset, product);
    MatMul(dropped, 1, h.columns, d_out.data, d_out.stride, out.data, out.stride, h.rows, h.padded_dim, h.tokens, 1.0f);
    WriteBack(h, out, d_value + offset);
    out = Destination(h, d_query + offset, product);
    MatMul(d_scores, h.columns, 1, key.data, key.stride, out.data, out.stride, h.rows, h.padded_dim, h.tokens, in.scale);
    WriteBack(h, out, d_query + offset);
    out = Destination(h, d_key + offset, product);
    MatMul(d_scores, 1, h.columns, query.data, query.stride, out.data, out.stride, h.rows, h.padded_dim, h.tokens, 1.0f);
    WriteBack(h, out, d_key + offset);
  }
}

void Attention(InstructionSet set, const Head& h, const AttentionArgs& args, float* attended, float* weights,
               float* scratch, int64_t begin, int64_t end) {
#ifdef TOKENLEARNER_X86
  if (set == InstructionSet::kAvx512)
    return RunAvx512<AttentionUnits<MatMulAvx512>>(h, args, attended, weights, scratch, begin, end);
  if (set == InstructionSet::kAvx2)
    return RunAvx2<AttentionUnits<MatMulAvx2>>(h, args, attended, weights, scratch, begin, end);
#endif
  RunPortable<AttentionUnits<MatMulPortable>>(h, args, attended, weights, scratch, begin, end);
}

void AttentionGrad(InstructionSet set, const Head& h, const AttentionGradArgs& args, float* d_query, float* d_key,
                   float* d_value, float* scratch, int64_t begin, int64_t end) {
#ifdef TOKENLEARNER_X86
  if (set == InstructionSet::kAvx512)
    return RunAvx512<AttentionGradUnits<MatMulAvx512>>(h, args, d_query, d_key, d_value, scratch, begin, end);
  if (set == InstructionSet::kAvx2)
    return RunAvx2<AttentionGradUnits<MatMulAvx2>>(h, args, d_query, d_key, d_value, scratch, begin, end);
#endif
  RunPortable<AttentionGradUnits<MatMulPortable>>(h, args, d_query, d_key, d_value, scratch, begin, end);
}

// ---------------------------------------------------------------- kernels

// Splits [0, units) over TensorFlow's intra-op threads (one, when training runs one thread
// per op). `cost_per_unit` is Shard's estimate of a unit's cycles, which only decides how
// many threads are worth waking; the kernels below pass a rough cycles-per-element figure
// times the elements in a unit: 40 for the dropout mask (ten Philox rounds make four
// numbers), 10 for GELU forward and 15 for its gradient (one exp and a few multiply-adds),
// and 6 and 10 per row element for LayerNorm's forward and backward passes (two and three
// sweeps over the row).
template <typename Work>
void Parallel(OpKernelContext* ctx, int64_t units, int64_t cost_per_unit, Work work) {
  const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, units, cost_per_unit, work);
}

class InstructionSetKernel : public OpKernel {
 public:
  explicit InstructionSetKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string name;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("instruction_set", &name));
    OP_REQUIRES_OK(ctx, ParseInstructionSet(name, &set_));
  }

 protected:
  InstructionSet set_ = InstructionSet::kPortable;
};

class DropoutMaskOp : public InstructionSetKernel {
 public:
  explicit DropoutMaskOp(OpKernelConstruction* ctx) : InstructionSetKernel(ctx) {
    float rate;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rate", &rate));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &params_.scale));
    OP_REQUIRES(ctx, rate >= 0.0f && rate < 1.0f, absl::InvalidArgumentError("rate must be in [0, 1)"));
    // uniform = (bits & 0x7fffff) / 2^23 exactly, so uniform >= rate is bits >= ceil(rate 2^23).
    params_.threshold = static_cast<uint32_t>(std::ceil(static_cast<double>(rate) * 8388608.0));
  }

  void Compute(OpKernelContext* ctx) override {
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsVector(ctx->input(0).shape()),
                absl::InvalidArgumentError("shape must be a vector"));
    TensorShape shape;
    OP_REQUIRES_OK(ctx, tensorflow::TensorShapeUtils::MakeShape(ctx->input(0).vec<int32_t>(), &shape));
    const Tensor& key = ctx->input(1);
    const Tensor& counter = ctx->input(2);
    OP_REQUIRES(ctx, key.NumElements() == 1 && counter.NumElements() == 2,
                absl::InvalidArgumentError("key must have 1 element and counter 2"));
    Tensor* mask = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &mask));
    MaskParams params = params_;
    const uint64_t key_value = key.flat<uint64_t>()(0);
    params.key0 = static_cast<uint32_t>(key_value);
    params.key1 = static_cast<uint32_t>(key_value >> 32);
    params.counter_low = counter.flat<uint64_t>()(0);
    params.counter_high = counter.flat<uint64_t>()(1);
    const int64_t n = shape.num_elements();
    float* out = mask->flat<float>().data();
    const InstructionSet set = set_;
    Parallel(ctx, (n + kElementsPerBlock - 1) / kElementsPerBlock, 40 * kElementsPerBlock,
             [&](int64_t begin, int64_t end) { MaskBlocks(set, params, begin, end, n, out); });
  }

 private:
  MaskParams params_{};
};

constexpr int64_t kGeluBlock = 4096;

class GeluOp : public InstructionSetKernel {
 public:
  using InstructionSetKernel::InstructionSetKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int64_t n = x.NumElements();
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const InstructionSet set = set_;
    Parallel(ctx, (n + kGeluBlock - 1) / kGeluBlock, 10 * kGeluBlock, [&](int64_t begin, int64_t end) {
      const int64_t first = begin * kGeluBlock, last = std::min(n, end * kGeluBlock);
      Run<GeluLoop>(set, in + first, out + first, last - first);
    });
  }
};

class GeluGradOp : public InstructionSetKernel {
 public:
  using InstructionSetKernel::InstructionSetKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == x.shape(), absl::InvalidArgumentError("dy and x must have one shape"));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    const int64_t n = x.NumElements();
    const float* gradient = dy.flat<float>().data();
    const float* in = x.flat<float>().data();
    float* out = dx->flat<float>().data();
    const InstructionSet set = set_;
    Parallel(ctx, (n + kGeluBlock - 1) / kGeluBlock, 15 * kGeluBlock, [&](int64_t begin, int64_t end) {
      const int64_t first = begin * kGeluBlock, last = std::min(n, end * kGeluBlock);
      Run<GeluGradLoop>(set, gradient + first, in + first, out + first, last - first);
    });
  }
};

// Rows per unit of work in LayerNorm's kernels; the gradient's sums for gamma and beta are
// taken per such block, then added in block order.
constexpr int64_t kLayerNormBlock = 64;

class LayerNormKernel : public InstructionSetKernel {
 public:
  explicit LayerNormKernel(OpKernelConstruction* ctx) : InstructionSetKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

 protected:
  // The width of the last axis, which gamma must match.
  static absl::Status Width(const Tensor& x, const Tensor& gamma, int64_t* width) {
    *width = gamma.NumElements();
    if (x.dims() >= 1 && gamma.dims() == 1 && x.dim_size(x.dims() - 1) == *width && *width > 0) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError("gamma must be a vector as long as x's last axis");
  }
  float epsilon_ = 0.0f;
};

class LayerNormOp : public LayerNormKernel {
 public:
  using LayerNormKernel::LayerNormKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& gamma = ctx->input(1);
    const Tensor& beta = ctx->input(2);
    int64_t width = 0;
    OP_REQUIRES_OK(ctx, Width(x, gamma, &width));
    OP_REQUIRES(ctx, beta.shape() == gamma.shape(), absl::InvalidArgumentError("beta must have gamma's shape"));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int64_t rows = x.NumElements() / width;
    const float *in = x.flat<float>().data(), *scale = gamma.flat<float>().data(), *shift = beta.flat<float>().data();
    float* out = y->flat<float>().data();
    const InstructionSet set = set_;
    const float epsilon = epsilon_;
    Parallel(ctx, (rows + kLayerNormBlock - 1) / kLayerNormBlock, 6 * width * kLayerNormBlock,
             [&](int64_t begin, int64_t end) {
               const int64_t first = begin * kLayerNormBlock, last = std::min(rows, end * kLayerNormBlock);
               Run<LayerNormRows>(set, in + first * width, scale, shift, out + first * width, last - first, width,
                                  epsilon);
             });
  }
};

class LayerNormGradOp : public LayerNormKernel {
 public:
  using LayerNormKernel::LayerNormKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    int64_t width = 0;
    OP_REQUIRES_OK(ctx, Width(x, gamma, &width));
    OP_REQUIRES(ctx, dy.shape() == x.shape(), absl::InvalidArgumentError("dy and x must have one shape"));
    Tensor *dx = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, gamma.shape(), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, gamma.shape(), &dbeta));
    const int64_t rows = x.NumElements() / width;
    const int64_t blocks = (rows + kLayerNormBlock - 1) / kLayerNormBlock;
    Tensor sums;  // per block: the sums for gamma, then for beta
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_FLOAT, TensorShape({std::max<int64_t>(blocks, 1), 2, width}),
                                           &sums));
    const float *gradient = dy.flat<float>().data(), *in = x.flat<float>().data();
    const float* scale = gamma.flat<float>().data();
    float* out = dx->flat<float>().data();
    float* block_sums = sums.flat<float>().data();
    const InstructionSet set = set_;
    const float epsilon = epsilon_;
    Parallel(ctx, blocks, 10 * width * kLayerNormBlock, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kLayerNormBlock, count = std::min(rows, first + kLayerNormBlock) - first;
        float* gamma_sum = block_sums + block * 2 * width;
        Run<LayerNormGradRows>(set, gradient + first * width, in + first * width, scale, out + first * width,
                               gamma_sum, gamma_sum + width, count, width, epsilon);
      }
    });
    float* gamma_total = dgamma->flat<float>().data();
    float* beta_total = dbeta->flat<float>().data();
    std::fill(gamma_total, gamma_total + width, 0.0f);
    std::fill(beta_total, beta_total + width, 0.0f);
    for (int64_t block = 0; block < blocks; ++block) {
      const float* gamma_sum = block_sums + block * 2 * width;
      for (int64_t c = 0; c < width; ++c) {
        gamma_total[c] += gamma_sum[c];
        beta_total[c] += gamma_sum[width + c];
      }
    }
  }
};

// Where TensorFlow's threads run more than one unit each, the scratch is taken once per shard.
class AttentionKernel : public InstructionSetKernel {
 public:
  explicit AttentionKernel(OpKernelConstruction* ctx) : InstructionSetKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_heads", &heads_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES(ctx, heads_ > 0, absl::InvalidArgumentError("num_heads must be positive"));
  }

 protected:
  // Checks query, key and value (B, T, heads x key_dim) and the mask, (B, heads, T, T) or empty.
  absl::Status Shapes(const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& mask,
                      Head* head) const {
    if (query.dims() != 3 || query.dim_size(2) % heads_ != 0 || query.dim_size(2) == 0 || query.dim_size(1) == 0) {
      return absl::InvalidArgumentError("query must be (batch, tokens, num_heads x key_dim)");
    }
    if (key.shape() != query.shape() || value.shape() != query.shape()) {
      return absl::InvalidArgumentError("query, key and value must have one shape");
    }
    const int64_t batch = query.dim_size(0), tokens = query.dim_size(1);
    if (mask.NumElements() != 0 && mask.shape() != TensorShape({batch, heads_, tokens, tokens})) {
      return absl::InvalidArgumentError("mask must be (batch, num_heads, tokens, tokens) or empty");
    }
    *head = MakeHead(tokens, query.dim_size(2) / heads_, heads_);
    return absl::OkStatus();
  }

  AttentionArgs Args(const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& mask) const {
    return {query.flat<float>().data(), key.flat<float>().data(), value.flat<float>().data(),
            mask.NumElements() ? mask.flat<float>().data() : nullptr, scale_, heads_};
  }

  template <typename Work>
  void PerUnit(OpKernelContext* ctx, const Head& head, int64_t units, Work work) {
    Parallel(ctx, units, 8 * head.tokens * head.tokens * head.key_dim, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(head.Scratch());
      work(scratch.data(), begin, end);
    });
  }

  int64_t heads_ = 0;
  float scale_ = 1.0f;
};

class AttentionOp : public AttentionKernel {
 public:
  using AttentionKernel::AttentionKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor &query = ctx->input(0), &key = ctx->input(1), &value = ctx->input(2), &mask = ctx->input(3);
    Head head{};
    OP_REQUIRES_OK(ctx, Shapes(query, key, value, mask, &head));
    const int64_t batch = query.dim_size(0);
    Tensor *attended = nullptr, *weights = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, query.shape(), &attended));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch, heads_, head.tokens, head.tokens}), &weights));
    const AttentionArgs args = Args(query, key, value, mask);
    float *out = attended->flat<float>().data(), *out_weights = weights->flat<float>().data();
    const InstructionSet set = set_;
    PerUnit(ctx, head, batch * heads_, [&](float* scratch, int64_t begin, int64_t end) {
      Attention(set, head, args, out, out_weights, scratch, begin, end);
    });
  }
};

class AttentionGradOp : public AttentionKernel {
 public:
  using AttentionKernel::AttentionKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor &d_attended = ctx->input(0), &query = ctx->input(1), &key = ctx->input(2), &value = ctx->input(3),
                 &mask = ctx->input(4), &weights = ctx->input(5);
    Head head{};
    OP_REQUIRES_OK(ctx, Shapes(query, key, value, mask, &head));
    const int64_t batch = query.dim_size(0);
    OP_REQUIRES(ctx, d_attended.shape() == query.shape(),
                absl::InvalidArgumentError("d_attended must have the query's shape"));
    OP_REQUIRES(ctx, weights.shape() == TensorShape({batch, heads_, head.tokens, head.tokens}),
                absl::InvalidArgumentError("weights must be (batch, num_heads, tokens, tokens)"));
    Tensor *d_query = nullptr, *d_key = nullptr, *d_value = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, query.shape(), &d_query));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, query.shape(), &d_key));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, query.shape(), &d_value));
    const AttentionGradArgs args{Args(query, key, value, mask), d_attended.flat<float>().data(),
                                 weights.flat<float>().data()};
    float *dq = d_query->flat<float>().data(), *dk = d_key->flat<float>().data(), *dv = d_value->flat<float>().data();
    const InstructionSet set = set_;
    PerUnit(ctx, head, batch * heads_, [&](float* scratch, int64_t begin, int64_t end) {
      AttentionGrad(set, head, args, dq, dk, dv, scratch, begin, end);
    });
  }
};

class WidestInstructionSetOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = Name(Widest());
  }
};

}  // namespace
}  // namespace tokenlearner

REGISTER_OP("TokenlearnerDropoutMask")
    .Input("shape: int32")
    .Input("key: uint64")
    .Input("counter: uint64")
    .Attr("rate: float")
    .Attr("scale: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("mask: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle shape;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(0, &shape));
      c->set_output(0, shape);
      return absl::OkStatus();
    });

REGISTER_OP("TokenlearnerGelu")
    .Input("x: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("y: float")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_OP("TokenlearnerGeluGrad")
    .Input("dy: float")
    .Input("x: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("dx: float")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_OP("TokenlearnerLayerNorm")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("epsilon: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("y: float")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_OP("TokenlearnerLayerNormGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("gamma: float")
    .Attr("epsilon: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return absl::OkStatus();
    });

REGISTER_OP("TokenlearnerAttention")
    .Input("query: float")
    .Input("key: float")
    .Input("value: float")
    .Input("mask: float")
    .Attr("num_heads: int")
    .Attr("scale: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("attended: float")
    .Output("weights: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int64_t heads;
      TF_RETURN_IF_ERROR(c->GetAttr("num_heads", &heads));
      c->set_output(0, c->input(0));
      tensorflow::shape_inference::ShapeHandle query;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &query));
      c->set_output(1, c->MakeShape({c->Dim(query, 0), c->MakeDim(heads), c->Dim(query, 1), c->Dim(query, 1)}));
      return absl::OkStatus();
    });

REGISTER_OP("TokenlearnerAttentionGrad")
    .Input("d_attended: float")
    .Input("query: float")
    .Input("key: float")
    .Input("value: float")
    .Input("mask: float")
    .Input("weights: float")
    .Attr("num_heads: int")
    .Attr("scale: float")
    .Attr("instruction_set: {'auto', 'avx512', 'avx2', 'portable'} = 'auto'")
    .Output("d_query: float")
    .Output("d_key: float")
    .Output("d_value: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      for (int output = 0; output < 3; ++output) c->set_output(output, c->input(1));
      return absl::OkStatus();
    });

REGISTER_OP("TokenlearnerWidestInstructionSet")
    .Output("name: string")
    .SetShapeFn(tensorflow::shape_inference::ScalarShape);

REGISTER_KERNEL_BUILDER(Name("TokenlearnerDropoutMask").Device(tensorflow::DEVICE_CPU).HostMemory("shape"),
                        tokenlearner::DropoutMaskOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerGelu").Device(tensorflow::DEVICE_CPU), tokenlearner::GeluOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerGeluGrad").Device(tensorflow::DEVICE_CPU), tokenlearner::GeluGradOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerLayerNorm").Device(tensorflow::DEVICE_CPU), tokenlearner::LayerNormOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerLayerNormGrad").Device(tensorflow::DEVICE_CPU),
                        tokenlearner::LayerNormGradOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerAttention").Device(tensorflow::DEVICE_CPU), tokenlearner::AttentionOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerAttentionGrad").Device(tensorflow::DEVICE_CPU),
                        tokenlearner::AttentionGradOp);
REGISTER_KERNEL_BUILDER(Name("TokenlearnerWidestInstructionSet").Device(tensorflow::DEVICE_CPU),
                        tokenlearner::WidestInstructionSetOp);
