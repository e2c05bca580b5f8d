"""Exact, analytic cost of a `ModelConfig`: parameters, multiply-accumulates, and the
keras.io table's "GFLOPs", per layer, for one image (or one clip) at inference.

A clip of L temporal slices costs what its layout says: the patch convolution runs on
every slice (a tubelet's frames side by side in its input channels), the blocks attend
over all the slices' patches or tokens together (T = L * N or L * S), and TokenLearner
and TokenFuser run on each slice's N patches apart, L times their image cost.

Full count
    MACs of every matrix product in the model: the patch convolution, each block's fused
    Q/K/V projection, the attention matmuls QK^T (heads * T^2 * key_dim) and AV (the
    same), the output projection and the MLP; TokenLearner's convolutions (k*k*C_in*C_out
    per position, C_in/groups for grouped ones), Dense layers and weighted pooling
    (S * N * C); TokenFuser's token mixing (C * S^2), gate MLP and fusion (N * S * C);
    and the classifier. FLOPs = 2 x MACs. Element-wise work (norms, activations, adds,
    softmax) is not counted; the TensorFlow profiler puts it at 1.2-1.5% of these models
    (1.6-2.2% with TokenFuser).

keras.io convention
    The keras.io table's figure came from a TensorFlow-profiler utility run on the
    frozen inference graph of Keras models, halved. That profiler counts 2 float ops per
    MAC for MatMul and Conv2D, plus element-wise ops at fixed rates (its
    `flops_registry`: 1 per element for Add, Mul, BiasAdd, Mean's input, Neg, Less; 2 for
    Rsqrt and SquaredDifference; 5 for Softmax; nothing for Einsum, Sigmoid, Tanh or
    resizing). It cannot see einsum, so none of MultiHeadAttention's work (projections
    or attention matmuls) is in the figure. `keras_io_flops` reproduces, for each layer,
    what the profiler counts in the keras.io way of building it (the same Keras 3 ops:
    LayerNormalization = 9*T*C + 4*T, tanh-GELU = 7 per element, TokenLearner v1.0
    pooling as a broadcast multiply and a mean, v1.1 pooling as an einsum). For the
    example's configurations this gives 0.01844, 0.01469, 0.01538 and 0.03594 against the
    published 0.0184, 0.0147, 0.0153 and 0.0359.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokenlearner.config import ModelConfig

CATEGORIES = (
    "patch_embedding",
    "attention_projections",
    "attention_matmuls",
    "mlp",
    "tokenlearner",
    "tokenfuser",
    "head",
)


@dataclass(frozen=True)
class LayerCost:
    name: str  # "<model layer>/<part>", e.g. "block_0/qkv"
    category: str  # one of CATEGORIES
    macs: int
    keras_io_flops: int  # the profiler's float ops for this part, keras.io way (0 inside attention)


@dataclass(frozen=True)
class CostReport:
    params: int
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def keras_io_gflops(self) -> float:
        return sum(layer.keras_io_flops for layer in self.layers) / 2 / 1e9

    def macs_by_layer(self) -> dict[str, int]:
        """MACs per model layer (`patch_embedding`, `block_0`, `token_learner`, ..., `classifier`), in model order."""
        totals: dict[str, int] = {}
        for layer in self.layers:
            owner = layer.name.split("/")[0]
            totals[owner] = totals.get(owner, 0) + layer.macs
        return totals

    def macs_by_category(self) -> dict[str, int]:
        totals = dict.fromkeys(CATEGORIES, 0)
        for layer in self.layers:
            totals[layer.category] += layer.macs
        return totals

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "macs": self.macs,
            "flops": self.flops,
            "keras_io_gflops": self.keras_io_gflops,
            "macs_by_category": self.macs_by_category(),
            "layers": [asdict(layer) for layer in self.layers],
        }


def _layer_norm(tokens: int, width: int) -> int:
    """Profiler float ops of Keras 3's LayerNormalization on (tokens, width): two means,
    a squared difference (2), the scale and shift (5): 9 per element, and 4 per row."""
    return 9 * tokens * width + 4 * tokens


_GELU = 7  # tanh-approximate GELU: 5 Mul/Pow/Add ops per element that the profiler counts (tanh is free)
_SOFTMAX = 5


def _dense(tokens: int, inputs: int, units: int, bias: bool = True, gelu: bool = False) -> tuple[int, int]:
    """(MACs, profiler float ops) of a Dense on (tokens, inputs)."""
    macs = tokens * inputs * units
    elementwise = tokens * units * ((1 if bias else 0) + (_GELU if gelu else 0))
    return macs, 2 * macs + elementwise


def count(config: ModelConfig) -> CostReport:
    """Parameters and per-layer MACs and keras.io-convention float ops of `config`."""
    rows: list[LayerCost] = []

    def add(name: str, category: str, macs: int, keras_io_flops: int) -> None:
        rows.append(LayerCost(name, category, macs, keras_io_flops))

    c, tokens, slices = config.dim, config.num_tokens, config.temporal_slices
    patches = slices * config.num_patches  # of the whole clip
    pixels = config.frames * config.input_size**2 * 3
    patch_macs = patches * config.patch_size**2 * 3 * config.tubelet_frames * c
    # Rescaling (Mul, Add), conv + BiasAdd, and the example's Embedding lookup (Less, Add) + add.
    add("patch_embedding", "patch_embedding", patch_macs,
        2 * pixels + 2 * patch_macs + patches * c + 2 * patches + patches * c)

    def block(name: str, length: int) -> None:
        inner = config.heads * config.key_dim
        add(f"{name}/attention_norm", "attention_projections", 0, _layer_norm(length, c))
        add(f"{name}/qkv", "attention_projections", length * c * 3 * inner, 0)
        add(f"{name}/attention_scores", "attention_matmuls", config.heads * length * length * config.key_dim, 0)
        add(f"{name}/attention_values", "attention_matmuls", config.heads * length * length * config.key_dim, 0)
        add(f"{name}/attention_output", "attention_projections", length * inner * c, length * c)  # + residual
        add(f"{name}/mlp_norm", "mlp", 0, _layer_norm(length, c))
        width = c
        for position, units in enumerate(config.mlp_units):
            macs, flops = _dense(length, width, units, gelu=True)
            add(f"{name}/mlp_dense_{position}", "mlp", macs, flops)
            width = units
        add(f"{name}/mlp_residual", "mlp", 0, length * c)

    def token_learner(name: str, patches: int) -> None:
        add(f"{name}/norm", "tokenlearner", 0, _layer_norm(patches, c))
        if config.tokenlearner == "v1":
            channels = c
            for index in range(4):
                macs = patches * 9 * channels * tokens
                gelu = _GELU * patches * tokens if index < 3 else 0  # the sigmoid is free
                add(f"{name}/conv_{index}", "tokenlearner", macs, 2 * macs + gelu)
                channels = tokens
            weighted = tokens * patches * c
            reduce = weighted if config.pooling == "mean" else weighted - slices * tokens * c
            add(f"{name}/pooling", "tokenlearner", weighted, weighted + reduce)
            return
        if config.v11_style == "grouped_conv":
            grouped = patches * c * (c // config.v11_groups)
            add(f"{name}/selector_grouped", "tokenlearner", grouped, 2 * grouped)
            macs, flops = _dense(patches, c, tokens, bias=False)
            add(f"{name}/selector", "tokenlearner", macs, flops)
            add(f"{name}/feature_grouped", "tokenlearner", grouped, 2 * grouped)
        else:
            macs, flops = _dense(patches, c, config.bottleneck_dim, gelu=True)
            add(f"{name}/selector_hidden", "tokenlearner", macs, flops)
            macs, flops = _dense(patches, config.bottleneck_dim, tokens)
            add(f"{name}/selector", "tokenlearner", macs, flops)
        add(f"{name}/pooling", "tokenlearner", tokens * patches * c, _SOFTMAX * tokens * patches)  # einsum

    def token_fuser(name: str, clip_tokens: int) -> None:
        mix_macs, mix_flops = _dense(slices * c, tokens, tokens)
        add(f"{name}/token_mixer", "tokenfuser", mix_macs,
            _layer_norm(clip_tokens, c) + mix_flops + _layer_norm(clip_tokens, c))
        hidden_macs, hidden_flops = _dense(patches, c, config.bottleneck_dim, gelu=True)
        add(f"{name}/gate_hidden", "tokenfuser", hidden_macs, _layer_norm(patches, c) + hidden_flops)
        gate_macs, gate_flops = _dense(patches, config.bottleneck_dim, tokens)
        add(f"{name}/gate_output", "tokenfuser", gate_macs, gate_flops)
        add(f"{name}/fusion", "tokenfuser", patches * tokens * c, patches * c)  # einsum + residual

    walk = {"block": block, "token_learner": token_learner, "token_fuser": token_fuser}
    for stage in config.stages():
        walk[stage.kind](stage.name, stage.tokens)

    final = config.final_tokens()
    head_macs, head_flops = _dense(1, c, config.num_classes)
    add("classifier", "head", head_macs,
        _layer_norm(final, c) + final * c + head_flops + _SOFTMAX * config.num_classes)
    return CostReport(count_params(config), tuple(rows))


def count_params(config: ModelConfig) -> int:
    """Trainable parameters of `build_model(config)`, counted from the config alone."""
    c, tokens, bottleneck = config.dim, config.num_tokens, config.bottleneck_dim
    norm = 2 * c
    inner = config.heads * config.key_dim
    positions = config.temporal_slices * config.num_patches
    total = config.patch_size**2 * 3 * config.tubelet_frames * c + c + positions * c
    mlp, width = 0, c
    for units in config.mlp_units:
        mlp += width * units + units
        width = units
    block = 2 * norm + c * 3 * inner + 3 * inner + inner * c + c + mlp
    if config.tokenlearner == "v1":
        learner = norm + 9 * c * tokens + 3 * 9 * tokens * tokens
    elif config.tokenlearner == "v11" and config.v11_style == "grouped_conv":
        learner = norm + 2 * c * (c // config.v11_groups) + c * tokens
    else:
        learner = norm + c * bottleneck + bottleneck + bottleneck * tokens + tokens
    fuser = 3 * norm + tokens * tokens + tokens + c * bottleneck + bottleneck + bottleneck * tokens + tokens
    each = {"block": block, "token_learner": learner, "token_fuser": fuser}
    total += sum(each[stage.kind] for stage in config.stages())
    return total + norm + c * config.num_classes + config.num_classes


def without_tokenlearner(config: ModelConfig) -> ModelConfig:
    """The same network with no TokenLearner or TokenFuser: every block attends over all
    the patches (of every frame, for a clip). What TokenLearner saves is measured against it."""
    return config.replace(tokenlearner="none", fuser=False, pooling="mean")
