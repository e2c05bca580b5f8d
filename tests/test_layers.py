"""Every layer, in the manner of keras-hub's layer tests: output shapes, weight counts,
a `get_config` round trip that holds every constructor argument, and a `.keras` save/load round trip with identical outputs."""

import inspect

import keras
import numpy as np
import pytest

from tokenlearner.layers import (
    Dense,
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
CLIPS = RNG.uniform(0, 255, size=(2, 4, 12, 12, 3)).astype("float32")  # (B, T, H, W, 3)
STACKED = RNG.uniform(0, 1, size=(2, 12, 12, 4 * 3)).astype("float32")  # a clip's frames along the channels
CLIP_SEQUENCE = RNG.normal(size=(2, 2 * 16, 8)).astype("float32")  # (B, L = 2 slices x N, C)
CLIP_TOKENS = RNG.normal(size=(2, 2 * 3, 8)).astype("float32")  # (B, L x S, C)

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
    "preprocessing_clip": (lambda: ImagePreprocessing(14, 12, frames=4), (CLIPS,), (2, 12, 12, 12), 0),
    "patch_embedding_tubelets": (lambda: PatchEmbedding(3, 8, temporal_slices=2), (STACKED,), (2, 32, 8),
                                 3 * 3 * 6 * 8 + 8 + 32 * 8),
    "token_learner_clip": (lambda: TokenLearner(3, temporal_slices=2), (CLIP_SEQUENCE,), (2, 6, 8),
                           16 + 9 * 8 * 3 + 3 * 9 * 3 * 3),
    "token_learner_v11_clip": (lambda: TokenLearnerV11(3, groups=2, temporal_slices=2), (CLIP_SEQUENCE,),
                               (2, 6, 8), 16 + 2 * 8 * 4 + 8 * 3),
    "token_fuser_clip": (lambda: TokenFuser(bottleneck_dim=6, temporal_slices=2), (CLIP_TOKENS, CLIP_SEQUENCE),
                         (2, 32, 8), 3 * 16 + 3 * 3 + 3 + 8 * 6 + 6 + 6 * 3 + 3),
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


LEARNERS = {
    "v1": lambda slices: TokenLearner(3, temporal_slices=slices),
    "v11_grouped": lambda slices: TokenLearnerV11(3, groups=2, temporal_slices=slices),
    "v11_mlp": lambda slices: TokenLearnerV11(3, style="mlp", bottleneck_dim=6, temporal_slices=slices),
}


@pytest.mark.parametrize("version", list(LEARNERS))
def test_token_learner_learns_each_temporal_slice_on_its_own(version):
    """On a clip, the official code's TokenLearner: each slice's tokens and maps are what
    the image layer, with the same weights, gives for that slice alone."""
    clip_layer, image_layer = LEARNERS[version](2), LEARNERS[version](1)
    tokens, maps = clip_layer(CLIP_SEQUENCE, return_maps=True)
    image_layer.build(SEQUENCE.shape)
    image_layer.set_weights(clip_layer.get_weights())
    assert tuple(maps.shape) == (2, 2, 3, 4, 4)
    for index in range(2):
        slice_tokens, slice_maps = image_layer(CLIP_SEQUENCE[:, 16 * index : 16 * (index + 1)], return_maps=True)
        np.testing.assert_allclose(np.asarray(tokens)[:, 3 * index : 3 * (index + 1)], np.asarray(slice_tokens),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(maps)[:, index], np.asarray(slice_maps), rtol=1e-5, atol=1e-6)


def test_token_fuser_fuses_each_temporal_slice_on_its_own():
    clip_layer, image_layer = TokenFuser(bottleneck_dim=6, temporal_slices=2), TokenFuser(bottleneck_dim=6)
    clip_layer(CLIP_TOKENS, CLIP_SEQUENCE)
    # Away from its zero initialisation, so that the tokens reach the output.
    clip_layer.set_weights([w + RNG.normal(scale=0.1, size=w.shape) for w in clip_layer.get_weights()])
    image_layer(TOKENS, SEQUENCE)
    image_layer.set_weights(clip_layer.get_weights())
    fused, gates = clip_layer(CLIP_TOKENS, CLIP_SEQUENCE, return_maps=True)
    assert tuple(gates.shape) == (2, 2, 3, 4, 4)
    for index in range(2):
        slice_fused, slice_gates = image_layer(CLIP_TOKENS[:, 3 * index : 3 * (index + 1)],
                                               CLIP_SEQUENCE[:, 16 * index : 16 * (index + 1)], return_maps=True)
        np.testing.assert_allclose(np.asarray(fused)[:, 16 * index : 16 * (index + 1)], np.asarray(slice_fused),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(gates)[:, index], np.asarray(slice_gates), rtol=1e-5, atol=1e-6)


def test_patch_embedding_of_tubelets_is_a_3d_convolution():
    """A tubelet patch over 2 frames is ViViT's strided 3D convolution, slice after slice."""
    layer = PatchEmbedding(3, 8, temporal_slices=2)
    patches = np.asarray(layer(STACKED))
    clip = STACKED.reshape(2, 12, 12, 4, 3).transpose(0, 3, 1, 2, 4)  # (B, T, H, W, 3)
    conv = keras.layers.Conv3D(8, (2, 3, 3), strides=(2, 3, 3))
    conv.build(clip.shape)
    kernel, bias = layer.projection.get_weights()  # (3, 3, 2 frames x 3 channels, 8)
    conv.set_weights([kernel.reshape(3, 3, 2, 3, 8).transpose(2, 0, 1, 3, 4), bias])
    expected = np.asarray(conv(clip)).reshape(2, 32, 8) + np.asarray(layer.position_embedding)
    np.testing.assert_allclose(patches, expected, rtol=1e-5, atol=1e-5)


def test_preprocessing_crops_and_flips_every_frame_of_a_clip_alike():
    layer = ImagePreprocessing(16, 12, frames=4)
    still = np.repeat(CLIPS[:, :1], 4, axis=1)  # four copies of one frame
    for _ in range(4):
        frames = np.asarray(layer(still, training=True)).reshape(2, 12, 12, 4, 3)
        for index in range(1, 4):
            np.testing.assert_array_equal(frames[..., index, :], frames[..., 0, :])
    at_inference = np.asarray(layer(CLIPS)).reshape(2, 12, 12, 4, 3)
    for index in range(4):
        np.testing.assert_allclose(at_inference[..., index, :], np.asarray(ImagePreprocessing(16, 12)(CLIPS[:, index])),
                                   rtol=1e-6)


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


def test_dense_is_keras_dense_as_one_2d_product_without_tensordots_shape_ops(tmp_path):
    import tensorflow as tf

    ours, theirs = Dense(5, activation="gelu"), keras.layers.Dense(5, activation="gelu")
    ours.build(SEQUENCE.shape)
    theirs.build(SEQUENCE.shape)
    theirs.set_weights(ours.get_weights())
    for inputs in (SEQUENCE, CLIP_SEQUENCE.reshape(2, 2, 16, 8)):  # (B, N, C), and (B, slices, N, C)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(inputs)),
                                      keras.ops.convert_to_numpy(theirs(inputs)))
    open_batch = tf.TensorSpec((None, 16, 8), tf.float32)
    graphs = [tf.function(layer).get_concrete_function(open_batch) for layer in (ours, theirs)]
    assert graphs[0].structured_outputs.shape.as_list() == [None, 16, 5]
    # Keras' tensordot reads the open batch size at run time and rebuilds the shapes from it.
    shape_ops = {"Shape", "GatherV2", "Prod", "ConcatV2", "Transpose"}
    assert not shape_ops & {op.type for op in graphs[0].graph.get_operations()}
    assert shape_ops <= {op.type for op in graphs[1].graph.get_operations()}
    model = _functional(ours, (SEQUENCE,))
    model.save(tmp_path / "dense.keras")
    restored = keras.models.load_model(tmp_path / "dense.keras")
    assert isinstance(restored.layers[-1], Dense)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(SEQUENCE)),
                                  keras.ops.convert_to_numpy(model(SEQUENCE)))
