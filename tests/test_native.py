"""The native kernels against TensorFlow's and Keras' own ops: the same dropout masks bit
for bit on every instruction set this CPU runs, the GELU, LayerNorm and their gradients to
float32 rounding, a block's gradients with and without them, and a clear fallback where
they cannot be built."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tokenlearner import native
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.layers import Dropout, LayerNormalization, TransformerBlock
from tokenlearner.model import build_model
from tokenlearner.steps import CHUNK_IMAGES, Steps
from tokenlearner.training import make_optimizer

KERNELS = native.load()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason=f"the model runs {native.describe()}")


def _can_compile() -> bool:
    try:
        native._compiler()
    except native.BuildError:
        return False
    return os.environ.get(native.SWITCH, "1") != "0"


def test_kernels_are_built_where_a_compiler_is():
    if not _can_compile():
        pytest.skip(f"no compiler, or switched off: the model runs {native.describe()}")
    assert KERNELS is not None, native.describe()
    assert native.describe() == f"native dropout, GELU, LayerNorm and attention kernels ({KERNELS.instruction_set})"


@pytest.fixture(params=native.INSTRUCTION_SETS)
def instruction_set(request):
    """Each instruction set the kernels have, where this CPU runs it."""
    if KERNELS is None:
        pytest.skip(f"the model runs {native.describe()}")
    try:
        KERNELS.library.tokenlearner_gelu(tf.zeros((1,)), instruction_set=request.param)
    except tf.errors.InvalidArgumentError as error:
        pytest.skip(str(error))
    return request.param


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_masks_are_tensorflows(instruction_set, rate):
    rng = np.random.default_rng(0)
    for shape in [(7,), (3, 5, 13), (16, 4, 65, 65), (100_003,)]:
        x = tf.constant(rng.normal(size=shape).astype(np.float32))
        for seed in [(1, 2), (123_456, -7), (0, 0)]:
            expected = tf.nn.experimental.stateless_dropout(x, rate, seed=tf.constant(seed, tf.int32))
            key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=tf.constant(seed, tf.int32))
            mask = KERNELS.library.tokenlearner_dropout_mask(
                tf.shape(x), key, counter, rate=rate, scale=1 / (1 - rate), instruction_set=instruction_set)
            np.testing.assert_array_equal(x * mask, expected, err_msg=f"shape {shape}, seed {seed}")


def test_dropout_masks_follow_the_counter_across_its_carries(instruction_set):
    """Keras' seeds always give counters with a low word of 0; other keys and counters near
    the 64- and 128-bit wraps must still follow TensorFlow's Philox stream."""
    shape = tf.constant([1001], tf.int32)
    for counter in ([2**64 - 5, 7], [2**64 - 1, 2**64 - 1], [0, 2**64 - 1], [123, 456]):
        key = tf.constant([0x0123456789ABCDEF], tf.uint64)
        counter = tf.constant(counter, tf.uint64)
        uniform = tf.raw_ops.StatelessRandomUniformV2(shape=shape, key=key, counter=counter, alg=1)  # Philox
        mask = KERNELS.library.tokenlearner_dropout_mask(shape, key, counter, rate=0.3, scale=1 / 0.7,
                                                         instruction_set=instruction_set)
        np.testing.assert_array_equal(mask != 0, uniform >= np.float32(0.3), err_msg=str(counter.numpy()))


@needs_kernels
def test_a_shape_that_is_not_a_vector_is_an_error():
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=tf.constant((1, 2), tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="shape must be a vector"):
        KERNELS.library.tokenlearner_dropout_mask(tf.constant(5), key, counter, rate=0.1, scale=1 / 0.9)


def test_gelu_is_tensorflows_to_rounding(instruction_set):
    x = tf.constant(np.concatenate([np.linspace(-20, 20, 400_001), [0.0, 1e-30, -1e-30]]).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        expected = tf.nn.gelu(x, approximate=True)
    expected_gradient = tape.gradient(expected, x)
    outputs = KERNELS.library.tokenlearner_gelu(x, instruction_set=instruction_set)
    gradient = KERNELS.library.tokenlearner_gelu_grad(tf.ones_like(x), x, instruction_set=instruction_set)
    np.testing.assert_allclose(outputs, expected, rtol=2e-7, atol=1e-6)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6, atol=1e-5)
    assert np.isnan(KERNELS.library.tokenlearner_gelu(tf.constant([np.nan]), instruction_set=instruction_set)[0])


@needs_kernels
def test_gelu_gradient_is_registered():
    x = tf.constant(np.linspace(-4, 4, 101).astype(np.float32))
    upstream = tf.constant(np.linspace(1, 2, 101).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, keras_gelu = native.gelu(x), keras.ops.gelu(x, approximate=True)
    np.testing.assert_allclose(tape.gradient(ours, x, upstream), tape.gradient(keras_gelu, x, upstream),
                               rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 65, 128), (3, 7, 256), (130, 3), (5, 2)])
def test_layer_norm_is_keras_to_rounding(instruction_set, shape):
    """Rows in blocks of 64 and a remainder, widths from 2 to 256, inputs far from zero mean."""
    rng = np.random.default_rng(3)
    x = tf.constant((rng.normal(size=shape) * 3 + 5).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    gamma = tf.constant(rng.normal(size=shape[-1:]).astype(np.float32))
    beta = tf.constant(rng.normal(size=shape[-1:]).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        expected = keras.ops.layer_normalization(x, gamma, beta, axis=-1, epsilon=1e-6)
    expected_gradients = tape.gradient(expected, [x, gamma, beta], upstream)
    outputs = KERNELS.library.tokenlearner_layer_norm(x, gamma, beta, epsilon=1e-6, instruction_set=instruction_set)
    gradients = KERNELS.library.tokenlearner_layer_norm_grad(upstream, x, gamma, epsilon=1e-6,
                                                             instruction_set=instruction_set)
    for name, value, reference in zip(["y", "dx", "dgamma", "dbeta"], [outputs, *gradients],
                                      [expected, *expected_gradients]):
        scale = float(tf.reduce_max(tf.abs(reference)))
        np.testing.assert_allclose(value, reference, rtol=0, atol=1e-6 * max(scale, 1.0), err_msg=name)


def _keras_attention(query, key, value, mask, num_heads):
    """Keras' multi-head attention after its projections: heads moved forward, scaled
    queries, softmax, the dropout factors, heads moved back."""
    batch, tokens, width = query.shape
    key_dim = width // num_heads

    def split(projection):
        return tf.transpose(tf.reshape(projection, (batch, tokens, num_heads, key_dim)), (0, 2, 1, 3))

    weights = tf.nn.softmax(tf.matmul(split(query) * (1 / np.sqrt(key_dim)), split(key), transpose_b=True))
    if mask is not None:
        weights = weights * mask
    return tf.reshape(tf.transpose(tf.matmul(weights, split(value)), (0, 2, 1, 3)), (batch, tokens, width))


@pytest.mark.parametrize("dropping", [True, False], ids=["dropout", "no-dropout"])
@pytest.mark.parametrize("batch, tokens, num_heads, key_dim", [
    (3, 64, 4, 128),  # keras.io's blocks before TokenLearner: read and written in place
    (2, 8, 4, 128),  # after TokenLearner
    (2, 65, 3, 33),  # padded rows and columns
    (2, 5, 2, 7),
    (1, 130, 1, 16),
])
def test_attention_is_keras_to_rounding(instruction_set, batch, tokens, num_heads, key_dim, dropping):
    rng = np.random.default_rng(tokens)
    query, key, value, upstream = (tf.constant(rng.normal(size=(batch, tokens, num_heads * key_dim)).astype(np.float32))
                                   for _ in range(4))
    mask = (tf.constant((rng.random((batch, num_heads, tokens, tokens)) >= 0.1) / np.float32(0.9), tf.float32)
            if dropping else None)
    with tf.GradientTape() as tape:
        tape.watch([query, key, value])
        expected = _keras_attention(query, key, value, mask, num_heads)
    expected_gradients = tape.gradient(expected, [query, key, value], upstream)
    factors = mask if dropping else tf.zeros((0,))
    scale = float(1 / np.sqrt(key_dim))
    attended, weights = KERNELS.library.tokenlearner_attention(query, key, value, factors, num_heads=num_heads,
                                                                scale=scale, instruction_set=instruction_set)
    gradients = KERNELS.library.tokenlearner_attention_grad(upstream, query, key, value, factors, weights,
                                                            num_heads=num_heads, scale=scale,
                                                            instruction_set=instruction_set)
    for name, ours, reference in zip(["attended", "d_query", "d_key", "d_value"], [attended, *gradients],
                                     [expected, *expected_gradients]):
        largest = float(tf.reduce_max(tf.abs(reference)))
        np.testing.assert_allclose(ours, reference, rtol=0, atol=3e-6 * largest, err_msg=name)


@needs_kernels
@pytest.mark.parametrize("mask_shape, message", [
    ((2, 4, 8, 7), "mask must be \\(batch, num_heads, tokens, tokens\\) or empty"),
    ((1,), "mask must be"),
])
def test_attention_refuses_a_mask_of_another_shape(mask_shape, message):
    x = tf.zeros((2, 8, 4 * 16))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        KERNELS.library.tokenlearner_attention(x, x, x, tf.zeros(mask_shape), num_heads=4, scale=0.25)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_heads x key_dim"):
        KERNELS.library.tokenlearner_attention(x, x, x, tf.zeros((0,)), num_heads=5, scale=0.25)


def test_layer_normalization_layer():
    """Keras' layer's weights and outputs; over another axis it is Keras' own code."""
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 6, 8)).astype(np.float32))
    for axis in (-1, 1):
        ours = LayerNormalization(axis=axis, epsilon=1e-6)
        theirs = keras.layers.LayerNormalization(axis=axis, epsilon=1e-6)
        ours.build(x.shape), theirs.build(x.shape)
        assert [w.path.split("/")[-1] for w in ours.weights] == ["gamma", "beta"]
        for mine, reference in zip(ours.weights, theirs.weights):
            mine.assign(np.random.default_rng(5).normal(size=mine.shape))
            reference.assign(mine)
        np.testing.assert_allclose(ours(x), theirs(x), rtol=0, atol=2e-6)


@needs_kernels
def test_dropout_layer_draws_keras_masks():
    x = tf.constant(np.random.default_rng(1).normal(size=(4, 65, 256)).astype(np.float32))
    ours, theirs = Dropout(0.1, seed=3), keras.layers.Dropout(0.1, seed=3)
    traced = tf.function(lambda inputs: ours(inputs, training=True))
    for call in range(3):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours_out = traced(x) if call == 2 else ours(x, training=True)
            theirs_out = theirs(x, training=True)
        np.testing.assert_array_equal(ours_out, theirs_out, err_msg=f"call {call}")
        np.testing.assert_array_equal(tape.gradient(ours_out, x), tape.gradient(theirs_out, x))
        np.testing.assert_array_equal(ours.seed_generator.state, theirs.seed_generator.state)
    np.testing.assert_array_equal(ours(x, training=False), x)


@needs_kernels
def test_a_block_trains_as_with_keras_ops(monkeypatch):
    """One transformer block's outputs and gradients in training, dropout on, with the
    kernels and with Keras' ops (same seeds): the same masks and GELU to rounding."""
    x = tf.constant(np.random.default_rng(2).normal(size=(8, 65, 128)).astype(np.float32))
    results = []
    for use_kernels in (True, False):
        if not use_kernels:
            monkeypatch.setattr(native, "load", lambda: None)
        keras.utils.set_random_seed(5)
        block = TransformerBlock(4, 32, (256, 128), dropout=0.1, attention_dropout=0.1)
        block.build(x.shape)
        with tf.GradientTape() as tape:
            outputs = block(x, training=True)
            loss = tf.reduce_sum(outputs * outputs)
        results.append((outputs, tape.gradient(loss, block.trainable_variables)))
    (outputs, gradients), (expected, expected_gradients) = results
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    for gradient, expected_gradient in zip(gradients, expected_gradients):
        scale = float(tf.reduce_max(tf.abs(expected_gradient)))
        np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(params=["no GPU", "a GPU"])
def seen_devices(request, monkeypatch):
    """TensorFlow's visible devices, with a GPU added to them in the second case (this
    machine has none to show), and the kernels loaded afresh for them."""
    if request.param == "a GPU":
        real = tf.config.get_visible_devices
        gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
        monkeypatch.setattr(tf.config, "get_visible_devices",
                            lambda device_type=None: [gpu] if device_type == "GPU" else real(device_type))
    native._load_once.cache_clear()
    yield request.param
    monkeypatch.undo()
    native._load_once.cache_clear()


def _op_types(function) -> set[str]:
    """Every op in a traced function's graph, its loops' bodies included."""
    graph = function.graph.as_graph_def()
    return {node.op for node in graph.node} | {node.op for body in graph.library.function for node in body.node_def}


@needs_kernels
def test_the_model_runs_the_cpu_kernels_only_where_tensorflow_sees_no_gpu(seen_devices):
    """A CPU op in a GPU's graph would copy every tensor it touches across to the host, and
    a GPU needs the whole batch at once: where TensorFlow sees a GPU, the training step is
    traced with Keras' ops and without chunks."""
    config = ModelConfig(depth=1, placement=1)
    model = build_model(config)
    steps = Steps(model, make_optimizer(TrainConfig(), 1), config.num_classes)
    ops = _op_types(steps.train_step.get_concrete_function())
    kernels = {"TokenlearnerDropoutMask", "TokenlearnerGelu", "TokenlearnerLayerNorm", "TokenlearnerAttention"}
    if seen_devices == "a GPU":
        assert native.describe() == ("Keras' dropout, GELU, LayerNorm and attention (native kernels not used: "
                                     "TensorFlow places the model on /physical_device:GPU:0)")
        assert not ops & kernels
        assert steps.chunk_images is None
    else:
        assert native.describe().startswith("native dropout, GELU, LayerNorm and attention kernels")
        assert kernels <= ops
        assert steps.chunk_images == CHUNK_IMAGES


def test_a_compiler_that_fails_is_reported(tmp_path):
    with pytest.raises(native.BuildError, match=r"^false failed \(exit 1\)$"):
        native.build(tmp_path, compiler="false")
    with pytest.raises(native.BuildError, match=r"^env false failed \(exit 1\)$"):  # $CXX may carry words
        native.build(tmp_path, compiler="env false")
    with pytest.raises(native.BuildError, match="could not run"):
        native.build(tmp_path, compiler=str(tmp_path / "no-such-compiler"))
    assert list(tmp_path.glob("*.so")) == []


@pytest.mark.parametrize("setting, reason", [
    ({native.SWITCH: "0"}, "switched off by TOKENLEARNER_NATIVE_KERNELS=0"),
    ({"XDG_CACHE_HOME": "{tmp}/a-file", "CXX": "c++"}, "not built: [Errno 20] Not a directory"),
    ({"CXX": "false"}, "not built: false failed (exit 1)"),
])
def test_without_kernels_the_model_runs_keras_ops(tmp_path, setting, reason):
    """Switched off, a cache folder that cannot be made, a compiler that fails: one line
    says why, and the model's ops still run."""
    (tmp_path / "a-file").write_text("")
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
                   **{name: value.format(tmp=tmp_path) for name, value in setting.items()}}
    code = ("from tokenlearner import native; import keras; print(native.describe()); print(native.load()); "
            "x = keras.ops.ones((2, 4)); print(keras.ops.convert_to_numpy(native.gelu(x)).shape, "
            "keras.ops.convert_to_numpy(native.layer_norm(x, keras.ops.ones((4,)), keras.ops.zeros((4,)), 1e-6))"
            ".shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=environment, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    description, loaded, shapes = result.stdout.splitlines()[:3]
    expected = f"Keras' dropout, GELU, LayerNorm and attention (native kernels {reason}"
    assert description.startswith(expected), description
    assert (loaded, shapes) == ("None", "(2, 4) (2, 4)")


def test_no_home_folder_asks_for_a_cache_folder(monkeypatch):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", no_home)
    with pytest.raises(native.BuildError, match="set XDG_CACHE_HOME"):
        native.cache_dir()


def test_a_reloaded_module_loads_the_kernels_again():
    """Streamlit re-imports changed modules; the gradients are registered once per process."""
    code = ("import importlib; from tokenlearner import native; first = native.describe(); "
            "importlib.reload(native); print(first == native.describe(), native.describe())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True "), result.stdout


@pytest.mark.skipif(not _can_compile(), reason="no C++ compiler")
def test_concurrent_builds_make_one_library(tmp_path):
    """Two builders at once (two processes training on a fresh machine): one compiles, the
    other waits for it, and the cache holds one whole library and no temporary files."""
    paths = []
    builders = [threading.Thread(target=lambda: paths.append(native.build(tmp_path))) for _ in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    assert len(paths) == 2 and paths[0] == paths[1] == native.library_path(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["build.lock", paths[0].name]
    assert paths[0].stat().st_size > 0
