"""Fused CPU kernels for the model's dropout, GELU, LayerNorm and self-attention on
TensorFlow (`kernels.cc` beside this file), which make the training step faster
(docs/performance.md).

- `dropout` draws the very masks Keras' dropout draws (the same Philox numbers from the same
  seed), in one vectorised pass instead of TensorFlow's generator and three more passes.
- `gelu` is the tanh-approximate GELU of `keras.ops.gelu`, and its gradient, in one pass
  each; it agrees with TensorFlow's to float32 rounding (within 1e-6 for outputs up to 16).
- `layer_norm` is `keras.ops.layer_normalization` over the last axis, reading and writing
  each row once forward and once backward; it too agrees to float32 rounding.
- `self_attention` is `keras.layers.MultiHeadAttention`'s attention after its projections
  (scaled scores, softmax, dropout on the weights with Keras' masks, the weighted values),
  one head at a time in cache, reading the heads where they lie instead of transposing
  them; it agrees to float32 rounding.

The kernels are compiled on first use with the machine's C++ compiler and TensorFlow's own
headers, into a cache keyed by the TensorFlow build, the compiler and the source
(`$XDG_CACHE_HOME/tokenlearner/native`, else `~/.cache/tokenlearner/native`; point
`XDG_CACHE_HOME` elsewhere where the home folder is read-only), once per machine. Where
they cannot be built or loaded (no compiler, not the TensorFlow backend, or
`TOKENLEARNER_NATIVE_KERNELS=0`), these functions run Keras' own ops instead: the same
results, slower. Where TensorFlow sees a GPU, the model's ops are placed on it and these
functions run Keras' ops too: a CPU op among them would copy every tensor it reads and
writes across to the host. `describe()` says which ran, and why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from tokenlearner.files import atomic_path, exclusive

SWITCH = "TOKENLEARNER_NATIVE_KERNELS"
SOURCE = Path(__file__).with_name("kernels.cc")
INSTRUCTION_SETS = ("avx512", "avx2", "portable")
BUILD_TIMEOUT_S = 600


class BuildError(RuntimeError):
    """The kernels could not be compiled; the message says why."""


@dataclass(frozen=True)
class Kernels:
    library: object  # the module `tf.load_op_library` returns
    instruction_set: str  # the widest this CPU runs, which the kernels use


def cache_dir() -> Path:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "tokenlearner" / "native"
    try:
        return Path.home() / ".cache" / "tokenlearner" / "native"
    except RuntimeError as error:  # no HOME and no user entry, as in some containers
        raise BuildError(f"no folder for the kernel cache ({error}): set XDG_CACHE_HOME") from error


def _compiler() -> str:
    """The compiler command: $CXX (which may carry arguments, as "ccache g++" does), else the
    first of c++, g++ and clang++ found."""
    compiler = os.environ.get("CXX") or next(
        (found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)
    if compiler is None:
        raise BuildError("no C++ compiler found ($CXX, c++, g++ or clang++)")
    return compiler


def _command(compiler: str, output: Path) -> list[str]:
    import tensorflow as tf

    # -fno-trapping-math lets the compiler turn the GELU's clamps into vector selects;
    # -fopenmp-simd lets it vectorise the sums its `omp simd` pragmas mark (no OpenMP runtime).
    return [*shlex.split(compiler), "-O3", "-shared", "-fPIC", "-fno-trapping-math", "-fopenmp-simd", "-Wno-deprecated-declarations",
            *tf.sysconfig.get_compile_flags(), str(SOURCE), "-o", str(output), *tf.sysconfig.get_link_flags()]


def library_path(directory: Path | None = None, compiler: str | None = None) -> Path:
    """Where the kernels built by `compiler` for this TensorFlow and source live."""
    import tensorflow as tf

    compiler = compiler or _compiler()
    key = json.dumps([tf.__version__, platform.machine(), _command(compiler, Path("out")),
                      hashlib.sha256(SOURCE.read_bytes()).hexdigest()])
    return (directory or cache_dir()) / f"kernels-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(directory: Path | None = None, compiler: str | None = None, compile: bool = True) -> Path:
    """The compiled kernels' path, compiling them first if they are not in the cache (a
    `BuildError` instead, without `compile`). Concurrent builders take turns (a lock file),
    and the library appears whole or not at all (written under a temporary name, then
    renamed). A new cache folder is private to its user (0700), and a library that
    another user could have written is refused, since loading it runs its code."""
    compiler = compiler or _compiler()
    target = library_path(directory, compiler)
    if target.exists():
        return _trusted(target)
    if not compile:
        raise BuildError(f"{target.name} is not in {target.parent}: build them first (python -m tokenlearner "
                         "build-kernels)")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with exclusive(target.parent / "build.lock"):
        if target.exists():
            return _trusted(target)
        with atomic_path(target) as temporary:
            _compile(compiler, temporary)
            os.chmod(temporary, 0o755)
    return _trusted(target)


def _trusted(library: Path) -> Path:
    """`library`, if it and its folder belong to this user or root and nobody else may write them."""
    for path in (library.parent, library):
        status = path.stat()
        if status.st_uid not in (os.getuid(), 0) or status.st_mode & 0o022:
            raise BuildError(f"{path} is owned by user {status.st_uid} or writable by others, so it is not "
                             "loaded: delete it, or make it yours and writable only by you")
    return library


def _compile(compiler: str, output: Path) -> None:
    try:
        result = subprocess.run(_command(compiler, output), capture_output=True, text=True, errors="replace",
                                timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"{compiler} could not run: {error}") from error
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).splitlines()
        first_error = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "").strip()
        raise BuildError(f"{compiler} failed (exit {result.returncode})" + (f": {first_error}" if first_error else ""))


_LOADING = threading.Lock()


def _load() -> Kernels | str:
    """The loaded kernels, or why there are none; built and loaded once per process, even
    when several threads (the app's sessions) ask at once."""
    with _LOADING:
        return _load_once()


@functools.cache
def _load_once() -> Kernels | str:
    import keras

    if os.environ.get(SWITCH, "1") == "0":
        return f"switched off by {SWITCH}=0"
    if keras.backend.backend() != "tensorflow":
        return f"they are TensorFlow ops and Keras runs on {keras.backend.backend()}"
    if os.name != "posix":
        return "they are built only on Linux and macOS"
    if gpus := visible_gpus():
        return f"not used: TensorFlow places the model on {', '.join(gpus)}"
    import tensorflow as tf

    from tokenlearner.limits import demo_mode

    try:  # a public demo's kernels are built when it is provisioned, never inside a visitor's request
        path = build(compile=not demo_mode())
    except (BuildError, OSError) as error:
        return f"not built: {error}"
    try:
        library = tf.load_op_library(str(path))
    except (tf.errors.OpError, OSError) as error:
        return f"could not load {path}: {error}; delete it to rebuild"
    _register_gradients(library)

    with tf.init_scope():  # the first call may come while a model is being traced
        instruction_set = library.tokenlearner_widest_instruction_set().numpy().decode()
    return Kernels(library, instruction_set)


def visible_gpus() -> list[str]:
    """The GPUs TensorFlow places ops on (after `tf.config.set_visible_devices`), which
    decide that the model runs without the CPU kernels and in whole batches."""
    import tensorflow as tf

    return [device.name for device in tf.config.get_visible_devices("GPU")]


def _register_gradients(library) -> None:
    import tensorflow as tf

    def gelu_gradient(op, dy):
        return library.tokenlearner_gelu_grad(dy, op.inputs[0], instruction_set=op.get_attr("instruction_set"))

    def attention_gradient(op, d_attended, d_weights):  # the weights are handed on only for this gradient
        d_query, d_key, d_value = library.tokenlearner_attention_grad(
            d_attended, *op.inputs[:4], op.outputs[1], num_heads=op.get_attr("num_heads"), scale=op.get_attr("scale"),
            instruction_set=op.get_attr("instruction_set"))
        return d_query, d_key, d_value, None

    def layer_norm_gradient(op, dy):
        return library.tokenlearner_layer_norm_grad(dy, op.inputs[0], op.inputs[1], epsilon=op.get_attr("epsilon"),
                                                    instruction_set=op.get_attr("instruction_set"))

    registrations = [lambda: tf.no_gradient("TokenlearnerDropoutMask"),
                     lambda: tf.RegisterGradient("TokenlearnerGelu")(gelu_gradient),
                     lambda: tf.RegisterGradient("TokenlearnerLayerNorm")(layer_norm_gradient),
                     lambda: tf.RegisterGradient("TokenlearnerAttention")(attention_gradient)]
    for register in registrations:
        try:
            register()
        except KeyError:  # registered by an earlier import of this module (a reload, as Streamlit does)
            pass


def load() -> Kernels | None:
    """The kernels, built and loaded on the first call; None where they cannot be."""
    loaded = _load()
    return loaded if isinstance(loaded, Kernels) else None


def describe() -> str:
    """One line: which dropout, GELU, LayerNorm and attention the model runs, and why."""
    loaded = _load()
    if isinstance(loaded, Kernels):
        return f"native dropout, GELU, LayerNorm and attention kernels ({loaded.instruction_set})"
    return f"Keras' dropout, GELU, LayerNorm and attention (native kernels {loaded})"


def gelu(x):
    """`keras.ops.gelu(x, approximate=True)`, through the fused kernel where it is loaded."""
    from keras import ops

    kernels = load()
    if kernels is None or x.dtype != "float32":
        return ops.gelu(x, approximate=True)
    return kernels.library.tokenlearner_gelu(x)


def layer_norm(x, gamma, beta, epsilon: float):
    """`keras.ops.layer_normalization` over the last axis with `gamma` and `beta`, through
    the fused kernel where it is loaded."""
    from keras import ops

    kernels = load()
    if kernels is None or x.dtype != "float32":
        return ops.layer_normalization(x, gamma, beta, axis=-1, epsilon=epsilon)
    return kernels.library.tokenlearner_layer_norm(x, ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta),
                                                   epsilon=epsilon)


def dropout(x, rate: float, seed_generator):
    """`keras.random.dropout(x, rate, seed=seed_generator)` (0 < rate < 1): the same mask
    from the same seed, drawn by the fused kernel where it is loaded."""
    import keras

    kernels = load()
    if kernels is None or x.dtype != "float32":
        return keras.random.dropout(x, rate, seed=seed_generator)
    import tensorflow as tf

    return x * _dropout_mask(kernels, tf.shape(x), rate, seed_generator)


def _dropout_mask(kernels: Kernels, shape, rate: float, seed_generator):
    """The factors, 0 or 1/(1 - rate), by which Keras' dropout multiplies a tensor of `shape`."""
    import tensorflow as tf

    seed = seed_generator.next()
    if seed.dtype != tf.int32:  # as Keras' TensorFlow backend casts its seeds
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    # TensorFlow's dropout multiplies by float32(1 / (1 - rate)) computed in double.
    return kernels.library.tokenlearner_dropout_mask(shape, key, counter, rate=rate, scale=1 / (1 - rate))


def self_attention(query, key, value, num_heads: int, dropout_rate: float, seed_generator, training: bool):
    """softmax(q k^T / sqrt(key_dim)) v for each head, with dropout on the weights in
    training, as `keras.layers.MultiHeadAttention` computes it from its projections:
    `query`, `key` and `value` are (B, T, num_heads x key_dim), heads side by side, and so
    is the result. Through the fused kernel where it is loaded, which reads each head where
    it lies; else Keras' ops, which move the heads to the front and back."""
    import math

    from keras import ops

    tokens, width = query.shape[1], query.shape[2]
    key_dim = width // num_heads
    scale = 1.0 / math.sqrt(key_dim)
    dropping = training and dropout_rate > 0
    kernels = load()
    if kernels is not None and query.dtype == "float32":
        import tensorflow as tf

        batch = tf.shape(query)[0]
        mask = (_dropout_mask(kernels, tf.stack([batch, num_heads, tokens, tokens]), dropout_rate, seed_generator)
                if dropping else tf.zeros((0,)))
        return kernels.library.tokenlearner_attention(query, key, value, mask, num_heads=num_heads, scale=scale)[0]

    def split_heads(projection):  # (B, T, heads * key_dim) -> (B, heads, T, key_dim)
        return ops.transpose(ops.reshape(projection, (-1, tokens, num_heads, key_dim)), (0, 2, 1, 3))

    scores = ops.matmul(split_heads(query) * scale, ops.transpose(split_heads(key), (0, 1, 3, 2)))
    weights = ops.softmax(scores, axis=-1)
    if dropping:
        weights = dropout(weights, dropout_rate, seed_generator)
    attended = ops.matmul(weights, split_heads(value))
    return ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (-1, tokens, width))
