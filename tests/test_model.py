"""The whole model, in the manner of timm's tests: every variant runs forward and
backward with no NaN, every trainable weight gets a gradient, the analytic parameter
count agrees, and a checkpoint round trip gives identical outputs and maps."""

import numpy as np
import pytest
import tensorflow as tf

from tokenlearner import PRESETS, ModelConfig, attention_maps, build_model, predict_with_maps
from tokenlearner.runs import RunDirectory, RunError
from tokenlearner.flops import count_params

VARIANTS = {
    **{name: config for name, config in PRESETS.items() if not config.is_video},
    "v1-sum-pooling-at-embedding": ModelConfig(pooling="sum", placement=0),
    "v1-after-last-block": ModelConfig(placement=4, num_tokens=1),
    "v11-mlp": ModelConfig(tokenlearner="v11", v11_style="mlp", num_tokens=8),
    "v1-fuser": ModelConfig(fuser=True),
    "v11-mlp-fuser-from-block-1": ModelConfig(tokenlearner="v11", v11_style="mlp", fuser=True, placement=1),
    "v11-grouped-fuser": ModelConfig(tokenlearner="v11", fuser=True, placement=2, depth=3),
    "center-crop-patch-4": ModelConfig(inference_crop="center", patch_size=4, num_tokens=16),
}
IMAGES = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")


def expected_maps(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    shape = (len(IMAGES), config.num_tokens, config.grid_size, config.grid_size)
    if config.tokenlearner == "none":
        return {}
    if not config.fuser:
        return {"token_learner": shape}
    names = {}
    for index in range(config.placement, config.depth):
        names[f"token_learner_{index}"] = shape
        names[f"token_fuser_{index}"] = shape
    return names


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_maps_and_parameter_count(name):
    config = VARIANTS[name]
    model = build_model(config)
    assert model.count_params() == count_params(config)
    probabilities, maps = predict_with_maps(model, IMAGES)
    assert probabilities.shape == (2, config.num_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert {key: value.shape for key, value in maps.items()} == expected_maps(config)
    assert list(maps) == list(expected_maps(config))  # depth order
    np.testing.assert_allclose(probabilities, np.asarray(model(IMAGES, training=False)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_model_is_laid_out_as_its_config_stages_say(name):
    config = VARIANTS[name]
    stages = config.stages()
    model = build_model(config)
    assert [layer.name for layer in model.layers if layer.name.startswith(("block_", "token_"))
            and layer.name != "token_pool"] == [stage.name for stage in stages]
    for stage in stages:
        if stage.kind == "block":  # the tokens a block attends over: its input's length
            assert model.get_layer(stage.name).input.shape[1] == stage.tokens


@pytest.mark.parametrize("name", list(VARIANTS))
def test_backward_reaches_every_weight(name):
    model = build_model(VARIANTS[name])
    # Move every weight off its initial value: TokenFuser's zero-initialised token mixer
    # would otherwise hide the gate's gradient at step 0 by design.
    rng = np.random.default_rng(1)
    for variable in model.trainable_weights:
        variable.assign(variable.numpy() + rng.normal(scale=0.02, size=variable.shape).astype("float32"))
    labels = np.array([3, 7])
    with tf.GradientTape() as tape:
        probabilities = model(IMAGES, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities))
    gradients = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(float(loss))
    for variable, gradient in zip(model.trainable_weights, gradients, strict=True):
        assert gradient is not None, f"{variable.path} gets no gradient"
        gradient = np.asarray(gradient)
        assert np.all(np.isfinite(gradient)), f"{variable.path} has a non-finite gradient"
        assert np.any(gradient != 0), f"{variable.path} has an all-zero gradient"


VIDEO_BASES = {
    "v1": ModelConfig(depth=2, placement=1),
    "v11-mlp-fuser": ModelConfig(tokenlearner="v11", v11_style="mlp", fuser=True, depth=2, placement=1),
    "v11-grouped-at-embedding": ModelConfig(tokenlearner="v11", depth=2, placement=0, num_tokens=8),
    "no-tokenlearner": ModelConfig(tokenlearner="none", depth=2, placement=1),
}
# Clips of 1, 2 and 4 frames, as scenic's tests take them, and tubelets of 2 frames.
VIDEO_VARIANTS = {
    **{f"{name}-{frames}-frames": base.replace(frames=frames) for name, base in VIDEO_BASES.items()
       for frames in (1, 2, 4)},
    "v1-4-frames-tubelets-of-2": VIDEO_BASES["v1"].replace(frames=4, tubelet_frames=2),
    "v11-mlp-fuser-4-frames-tubelets-of-4": VIDEO_BASES["v11-mlp-fuser"].replace(frames=4, tubelet_frames=4),
    "video-shapes": PRESETS["video-shapes"],
}


def clips_for(config: ModelConfig, count: int = 2) -> np.ndarray:
    return np.random.default_rng(2).uniform(0, 255, size=(count, *config.input_shape)).astype("float32")


@pytest.mark.parametrize("name", list(VIDEO_VARIANTS))
def test_video_forward_maps_layout_and_parameter_count(name):
    config = VIDEO_VARIANTS[name]
    model = build_model(config)
    assert model.count_params() == count_params(config)
    probabilities, maps = predict_with_maps(model, clips_for(config))
    assert probabilities.shape == (2, config.num_classes)
    per_slice = (config.temporal_slices,) if config.is_video else ()  # one frame: the image model's maps
    expected = {stage.name: (2, *per_slice, config.num_tokens, config.grid_size, config.grid_size)
                for stage in config.stages() if stage.kind != "block"}
    assert {key: value.shape for key, value in maps.items()} == expected
    for stage in config.stages():
        if stage.kind == "block":
            assert model.get_layer(stage.name).input.shape[1] == stage.tokens


def test_a_one_frame_model_is_the_image_model():
    config = ModelConfig(frames=1)
    assert config == ModelConfig() and config.input_shape == (32, 32, 3)
    assert ModelConfig.from_dict({k: v for k, v in config.to_dict().items()
                                  if k not in ("frames", "tubelet_frames")}) == config
    model = build_model(config)
    assert model.input_shape == (None, 32, 32, 3)
    assert [(w.path, tuple(w.shape)) for w in model.weights] == \
        [(w.path, tuple(w.shape)) for w in build_model(ModelConfig()).weights]


@pytest.mark.parametrize("name", ["v1-4-frames", "v11-mlp-fuser-2-frames", "v1-4-frames-tubelets-of-2"])
def test_video_backward_reaches_every_weight(name):
    model = build_model(VIDEO_VARIANTS[name])
    rng = np.random.default_rng(1)
    for variable in model.trainable_weights:
        variable.assign(variable.numpy() + rng.normal(scale=0.02, size=variable.shape).astype("float32"))
    with tf.GradientTape() as tape:
        probabilities = model(clips_for(VIDEO_VARIANTS[name]), training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(np.array([3, 7]), probabilities))
    for variable, gradient in zip(model.trainable_weights, tape.gradient(loss, model.trainable_weights), strict=True):
        assert gradient is not None and np.any(np.asarray(gradient) != 0), f"{variable.path} gets no gradient"


@pytest.mark.parametrize("tokenlearner", ["v1", "v11"])
def test_each_frames_tokens_are_learned_from_that_frame(tokenlearner):
    """Placed right after the patch embedding, a clip's TokenLearner sees each frame on its
    own: changing frame 2 changes frame 2's maps only. One block earlier, attention over
    every frame's patches carries the change into all of them."""
    early = ModelConfig(frames=4, tokenlearner=tokenlearner, depth=1, placement=0)
    later = early.replace(placement=1)
    clips = clips_for(early, 1)
    changed = clips.copy()
    changed[:, 2] = 255 - changed[:, 2]
    for config, touched in ((early, [2]), (later, [0, 1, 2, 3])):
        model = build_model(config)
        before, after = (attention_maps(model, x)["token_learner"][0] for x in (clips, changed))
        differs = [index for index in range(4) if not np.allclose(before[index], after[index], atol=1e-6)]
        assert differs == touched, config


def test_a_clip_of_the_wrong_shape_is_refused():
    model = build_model(ModelConfig(frames=4, depth=1, placement=1))
    with pytest.raises(ValueError, match=r"expected a batch of clips \(B, T, H, W, 3\) of shape \(B, 4, 32, 32, 3\)"):
        predict_with_maps(model, np.zeros((1, 2, 32, 32, 3)))
    with pytest.raises(ValueError, match="expected a batch of RGB images"):
        predict_with_maps(build_model(ModelConfig(depth=1, placement=1)), np.zeros((1, 4, 32, 32, 3)))


@pytest.mark.parametrize("name", ["keras-io-4-tokens", "keras-io-no-tokenlearner", "v11-grouped-fuser"])
def test_run_directory_round_trip(name, tmp_path):
    config = VARIANTS[name]
    model = build_model(config)
    run = RunDirectory(tmp_path / "run").create({"model": config.to_dict()})
    run.save_model(model)
    restored, restored_config = run.load_model()
    assert restored_config == config
    before, before_maps = predict_with_maps(model, IMAGES)
    after, after_maps = predict_with_maps(restored, IMAGES)
    np.testing.assert_array_equal(before, after)
    assert before_maps.keys() == after_maps.keys()
    for key in before_maps:
        np.testing.assert_array_equal(before_maps[key], after_maps[key])
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "model.keras"]


def test_inference_is_deterministic_and_training_is_not():
    model = build_model(ModelConfig())
    np.testing.assert_array_equal(np.asarray(model(IMAGES)), np.asarray(model(IMAGES)))
    assert not np.array_equal(np.asarray(model(IMAGES, training=True)), np.asarray(model(IMAGES, training=True)))


def test_maps_follow_the_input():
    model = build_model(ModelConfig())
    maps = attention_maps(model, np.concatenate([IMAGES, IMAGES[::-1]]))["token_learner"]
    np.testing.assert_allclose(maps[0], maps[3], rtol=1e-5)
    assert not np.allclose(maps[0], maps[1])


def test_empty_input_is_refused():
    with pytest.raises(ValueError, match="no images"):
        predict_with_maps(build_model(ModelConfig()), np.zeros((0, 32, 32, 3)))


@pytest.mark.parametrize("broken", ["missing_model", "bad_json", "bad_config", "corrupt_model"])
def test_broken_checkpoints_give_clear_errors(broken, tmp_path):
    config = ModelConfig(depth=1, placement=1)
    run = RunDirectory(tmp_path / "run").create({"model": config.to_dict()})
    run.save_model(build_model(config))
    directory = run.path
    if broken == "missing_model":
        (directory / "model.keras").unlink()
        message = "has no model.keras"
    elif broken == "bad_json":
        (directory / "config.json").write_text("{")
        message = "config.json is not valid JSON"
    elif broken == "bad_config":
        (directory / "config.json").write_text('{"model": {"depth": 0}}')
        message = "depth=0 is out of range"
    else:
        (directory / "model.keras").write_bytes(b"PK\x03\x04 truncated")
        message = "model.keras could not be loaded"
    with pytest.raises(RunError, match=message):
        run.load_model()
