"""Every layer, in the manner of keras-hub's layer tests: output shapes, weight counts,
a `get_config` round trip that holds every constructor argument, and a `.keras` save/load round trip with identical outputs."""

import inspect

import keras
import numpy as np
import pytest

from tokenlearner.layers import (
    GroupedDense,
    ImagePreprocessing,
    MultiHeadSelfAttention,
    PatchEmbedding,
    TokenFuser,
    TokenLearner,
    TokenLearnerV11,
    TransformerBlock,
)

RNG = np.random.default_rng(0)
SEQUENCE = RNG.normal(size=(2, 16, 8)).astype("float32")  # (B, N = 4x4, C)
TOKENS = RNG.normal(size=(2, 3, 8)).astype("float32")  # (B, S, C)
IMAGES = RNG.uniform(0, 255, size=(2, 12, 12, 3)).astype("float32")

# (layer factory, inputs, expected output shape, expected trainable weight count)
CASES = {
    "preprocessing": (lambda: ImagePreprocessing(14, 12), (IMAGES,), (2, 12, 12, 3), 0),
    "preprocessing_center": (lambda: ImagePreprocessing(16, 12, "center"), (IMAGES,), (2, 12, 12, 3), 0),
    "patch_embedding": (lambda: PatchEmbedding(3, 8), (IMAGES,), (2, 16, 8), 3 * 3 * 3 * 8 + 8 + 16 * 8),
    "attention": (lambda: MultiHeadSelfAttention(2, 5, dropout=0.1), (SEQUENCE,), (2, 16, 8),
                  8 * 30 + 30 + 10 * 8 + 8),
    "grouped_dense": (lambda: GroupedDense(12, 4), (SEQUENCE,), (2, 16, 12), 4 * 2 * 3),
    "transformer_block": (lambda: TransformerBlock(2, 5, (12, 8)), (SEQUENCE,), (2, 16, 8),
                          2 * 16 + (8 * 30 + 30 + 10 * 8 + 8) + (8 * 12 + 12) + (12 * 8 + 8)),
    "token_learner_mean": (lambda: TokenLearner(3), (SEQUENCE,), (2, 3, 8), 16 + 9 * 8 * 3 + 3 * 9 * 3 * 3),
    "token_learner_sum": (lambda: TokenLearner(3, pooling="sum"), (SEQUENCE,), (2, 3, 8),
                          16 + 9 * 8 * 3 + 3 * 9 * 3 * 3),
    "token_learner_v11_grouped": (lambda: TokenLearnerV11(3, groups=2), (SEQUENCE,), (2, 3, 8),
                                  16 + 2 * 8 * 4 + 8 * 3),
    "token_learner_v11_mlp": (lambda: TokenLearnerV11(3, style="mlp", bottleneck_dim=6), (SEQUENCE,), (2, 3, 8),
                              16 + 8 * 6 + 6 + 6 * 3 + 3),
    "token_fuser": (lambda: TokenFuser(bottleneck_dim=6), (TOKENS, SEQUENCE), (2, 16, 8),
                    3 * 16 + 3 * 3 + 3 + 8 * 6 + 6 + 6 * 3 + 3),
}


def _functional(layer, inputs):
    symbolic = [keras.Input(x.shape[1:]) for x in inputs]
    return keras.Model(symbolic, layer(*symbolic))


@pytest.mark.parametrize("case", list(CASES))
def test_shapes_and_weight_counts(case):
    factory, inputs, shape, weights = CASES[case]
    layer = factory()
    output = layer(*inputs)
    assert tuple(output.shape) == shape
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == weights
    assert np.all(np.isfinite(np.asarray(output)))


@pytest.mark.parametrize("case", list(CASES))
def test_get_config_round_trip(case):
    layer = CASES[case][0]()
    config = layer.get_config()
    # A constructor argument missing from get_config would silently come back as its default.
    arguments = set(inspect.signature(type(layer).__init__).parameters) - {"self", "kwargs"}
    assert arguments <= set(config), f"get_config leaves out {sorted(arguments - set(config))}"
    restored = layer.__class__.from_config(config)
    assert restored.get_config() == config


@pytest.mark.parametrize("case", list(CASES))
def test_keras_file_round_trip_gives_identical_outputs(case, tmp_path):
    factory, inputs, _, _ = CASES[case]
    model = _functional(factory(), inputs)
    path = tmp_path / f"{case}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(model(list(inputs))), np.asarray(restored(list(inputs))))


@pytest.mark.parametrize("layer_class", [TokenLearner, TokenLearnerV11])
def test_token_learner_maps(layer_class):
    tokens, maps = layer_class(3)(SEQUENCE, return_maps=True)
    maps = np.asarray(maps)
    assert maps.shape == (2, 3, 4, 4)
    if layer_class is TokenLearnerV11:
        np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-5)  # softmax over positions
    else:
        assert np.all((maps > 0) & (maps < 1))  # sigmoid


def test_token_learner_pools_with_its_maps():
    """Mean pooling is the maps' weighted sum divided by N; sum pooling is the weighted sum."""
    mean_layer = TokenLearner(3)
    tokens, maps = mean_layer(SEQUENCE, return_maps=True)
    flat = np.asarray(maps).reshape(2, 3, 16)
    np.testing.assert_allclose(np.asarray(tokens), flat @ SEQUENCE / 16, rtol=1e-5, atol=1e-6)
    sum_layer = TokenLearner(3, pooling="sum")
    sum_layer.build(SEQUENCE.shape)
    sum_layer.set_weights(mean_layer.get_weights())
    np.testing.assert_allclose(np.asarray(sum_layer(SEQUENCE)), 16 * np.asarray(tokens), rtol=1e-5)


def test_token_fuser_starts_as_a_constant_gate_of_zero_tokens():
    """The official TokenFuser zero-initialises its token mixer, so at initialisation the
    fused output is the gate-weighted sum of LayerNorm(0) = beta = 0: the block starts as
    the identity once the caller adds the residual."""
    fused, gate = TokenFuser(bottleneck_dim=6)(TOKENS, SEQUENCE, return_maps=True)
    np.testing.assert_allclose(np.asarray(fused), 0.0, atol=1e-6)
    assert np.asarray(gate).shape == (2, 3, 4, 4)


def test_preprocessing_inference_windows():
    images = np.arange(2 * 12 * 12 * 3, dtype="float32").reshape(2, 12, 12, 3) % 255
    resized = keras.layers.Resizing(16, 16)(images / 255.0)
    top_left = ImagePreprocessing(16, 12)(images)
    center = ImagePreprocessing(16, 12, "center")(images)
    np.testing.assert_allclose(np.asarray(top_left), np.asarray(resized)[:, :12, :12], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(center), np.asarray(resized)[:, 2:14, 2:14], rtol=1e-6)


def test_preprocessing_augments_only_in_training():
    layer = ImagePreprocessing(16, 12)
    images = RNG.uniform(0, 255, size=(4, 12, 12, 3)).astype("float32")
    assert np.array_equal(np.asarray(layer(images)), np.asarray(layer(images)))
    crops = {np.asarray(layer(images, training=True)).tobytes() for _ in range(8)}
    assert len(crops) > 1


def test_non_square_positions_are_refused():
    with pytest.raises(ValueError, match="square grid"):
        TokenLearner(2)(np.zeros((1, 12, 8), "float32"))


def test_grouped_dense_is_a_grouped_pointwise_convolution():
    layer = GroupedDense(12, 4)
    conv = keras.layers.Conv2D(12, 1, groups=4, use_bias=False)
    conv.build((None, 4, 4, 8))
    layer.build(SEQUENCE.shape)
    # Conv2D's grouped kernel (1, 1, C/groups, units): group g's outputs are columns g*3:(g+1)*3.
    kernel = np.asarray(layer.kernel)  # (groups, C/groups, units/groups)
    conv.set_weights([np.concatenate(list(kernel), axis=1)[None, None]])
    expected = np.asarray(conv(SEQUENCE.reshape(2, 4, 4, 8))).reshape(2, 16, 12)
    np.testing.assert_allclose(np.asarray(layer(SEQUENCE)), expected, rtol=1e-5, atol=1e-6)
