import json

import pytest

from tokenlearner import PRESETS, ModelConfig, preset


def test_defaults_are_the_keras_io_example():
    config = ModelConfig()
    assert (config.input_size, config.resize_size, config.image_size, config.patch_size) == (32, 52, 48, 6)
    assert (config.dim, config.depth, config.heads, config.key_dim) == (128, 4, 4, 128)
    assert config.mlp_units == (256, 128)
    assert (config.dropout, config.attention_dropout) == (0.1, 0.1)
    assert (config.tokenlearner, config.num_tokens, config.placement) == ("v1", 4, 3)
    assert config.pooling == "mean" and not config.fuser
    assert config.num_patches == 64 and config.tokens_per_block() == [64, 64, 64, 4]
    assert (config.frames, config.tubelet_frames, config.is_video) == (1, 1, False)


def test_a_clips_blocks_attend_over_every_slice():
    clip = ModelConfig(frames=8, tubelet_frames=2)
    assert (clip.temporal_slices, clip.input_shape) == (4, (8, 32, 32, 3))
    assert clip.tokens_per_block() == [4 * 64] * 3 + [4 * 4]
    assert clip.replace(fuser=True, placement=2).tokens_per_block() == [256, 256, 16, 16]
    assert clip.final_tokens() == 16 and clip.replace(tokenlearner="none").final_tokens() == 256


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip(name):
    config = PRESETS[name]
    restored = ModelConfig.from_json(config.to_json())
    assert restored == config
    assert json.loads(config.to_json())["mlp_units"] == list(config.mlp_units)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_tokens": 0}, "num_tokens=0 is out of range: must be from 1 to 64"),
        ({"num_tokens": 65}, "num_tokens=65 is out of range: must be from 1 to 64"),
        ({"placement": 5}, "placement=5 is out of range: must be from 0 to 4"),
        ({"placement": -1}, "placement=-1 is out of range"),
        ({"image_size": 50}, "image_size=50 is not divisible by patch_size=6"),
        ({"heads": 0}, "heads=0 is out of range: must be from 1"),
        ({"depth": 0}, "depth=0 is out of range: must be from 1"),
        ({"resize_size": 40}, "resize_size=40 is out of range: must be from 48"),
        ({"image_size": 54}, "resize_size=52 is out of range: must be from 54"),
        ({"tokenlearner": "v2"}, "tokenlearner='v2' is not allowed: choose one of none, v1, v11"),
        ({"pooling": "max"}, "pooling='max' is not allowed"),
        ({"inference_crop": "random"}, "inference_crop='random' is not allowed"),
        ({"dropout": 1.0}, "dropout=1.0 is out of range: must be in [0, 1)"),
        ({"attention_dropout": float("nan")}, "attention_dropout=nan is out of range"),
        ({"mlp_units": (256, 64)}, "mlp_units=[256, 64] must end with dim=128"),
        ({"mlp_units": ()}, "mlp_units=() is empty"),
        ({"depth": "4"}, "depth='4' must be of type int, not str"),
        ({"depth": True}, "depth=True must be of type int, not bool"),
        ({"fuser": 1}, "fuser=1 must be of type bool, not int"),
        ({"fuser": True, "tokenlearner": "none"}, "fuser=True needs a TokenLearner"),
        ({"fuser": True, "placement": 4}, "placement=4 with fuser=True must be less than depth=4"),
        ({"frames": 0}, "frames=0 is out of range: must be from 1 to 64"),
        ({"frames": 65}, "frames=65 is out of range"),
        ({"frames": 4, "tubelet_frames": 8}, "tubelet_frames=8 is out of range: must be from 1 to 4 (at most frames)"),
        ({"frames": 6, "tubelet_frames": 4}, "tubelet_frames=4 does not divide frames=6"),
        ({"tokenlearner": "v11", "v11_groups": 3}, "v11_groups=3 does not divide dim=128"),
        ({"tokenlearner": "v11", "pooling": "sum"}, "pooling='sum' applies to TokenLearner v1.0 only"),
    ],
)
def test_invalid_configs_name_field_value_and_range(changes, message):
    with pytest.raises(ValueError) as error:
        ModelConfig().replace(**changes)
    assert message in str(error.value)


def test_from_dict_rejects_unknown_fields_and_bad_json():
    with pytest.raises(ValueError, match="unknown model config field.*tokens"):
        ModelConfig.from_dict({"tokens": 8})
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{depth: 4")
    with pytest.raises(ValueError, match="must be a JSON object"):
        ModelConfig.from_json("[1, 2]")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "epochs=0 is out of range: must be from 1 to 10000"),
        ({"batch_size": 0}, "batch_size=0 is out of range: must be from 1 to 8192"),
        ({"learning_rate": 0.0}, "learning_rate=0.0 is out of range: must be in (0, 1]"),
        ({"weight_decay": 1.0}, "weight_decay=1.0 is out of range: must be in [0, 1)"),
        ({"schedule": "linear"}, "schedule='linear' is not allowed: choose one of constant, cosine"),
        ({"warmup_epochs": 20}, "warmup_epochs=20 is out of range: must be from 0 to 19 (fewer than epochs)"),
        ({"label_smoothing": 1.0}, "label_smoothing=1.0 is out of range: must be in [0, 1)"),
        ({"random_shift": 17}, "random_shift=17 is out of range: must be from 0 to 16"),
        ({"mixup_alpha": -1.0}, "mixup_alpha=-1.0 is out of range: must be in [0, 10]"),
        ({"cutmix_alpha": 11.0}, "cutmix_alpha=11.0 is out of range: must be in [0, 10]"),
        ({"seed": -1}, "seed=-1 is out of range: must be from 0"),
        ({"validation_fraction": 1.0}, "validation_fraction=1.0 is out of range: must be in (0, 1)"),
        ({"limit": -1}, "limit=-1 is out of range: must be from 0"),
        ({"eval_limit": -1}, "eval_limit=-1 is out of range: must be from 0"),
        ({"epochs": "20"}, "epochs='20' must be of type int, not str"),
        ({"learning_rate": True}, "learning_rate=True must be of type float, not bool"),
    ],
)
def test_invalid_recipes_name_field_value_and_range(changes, message):
    from tokenlearner.config import TrainConfig

    with pytest.raises(ValueError) as error:
        TrainConfig().replace(**changes)
    assert message in str(error.value)


@pytest.mark.parametrize("config_class, what", [(ModelConfig, "model config"), (None, "training config")])
def test_configs_from_json_name_unknown_fields_and_bad_json_alike(config_class, what):
    from tokenlearner.config import TrainConfig

    config_class = config_class or TrainConfig
    assert config_class.from_json(json.dumps(config_class().to_dict())) == config_class()
    with pytest.raises(ValueError, match=f"unknown {what} field\\(s\\) colour; known fields: "):
        config_class.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match=f"the {what} is not valid JSON"):
        config_class.from_json("{epochs: 4")
    with pytest.raises(ValueError, match=f"a {what} must be a JSON object, got list"):
        config_class.from_json("[1, 2]")


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match="keras-io-8-tokens"):
        preset("keras-io-16-tokens")


@pytest.mark.parametrize(
    "crop, region", [("top_left", (0.0, 0.0, 48 / 52, 48 / 52)), ("center", (2 / 52, 2 / 52, 50 / 52, 50 / 52))]
)
def test_covered_region(crop, region):
    assert ModelConfig(inference_crop=crop).covered_region() == pytest.approx(region)


def test_config_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys, tokenlearner, tokenlearner.flops; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False False"


@pytest.mark.parametrize("model", [
    ModelConfig(),
    ModelConfig(tokenlearner="v11", v11_style="mlp", fuser=True, placement=1, mlp_units=(64, 128), dropout=0.0),
    ModelConfig(depth=8, placement=0, pooling="sum", inference_crop="center"),
    ModelConfig(frames=8, tubelet_frames=2, num_tokens=8),
], ids=["keras-io", "v11-fuser", "sum-pooling-depth-8", "clip-tubelets"])
def test_config_flags_give_back_the_configs(model):
    from tokenlearner.cli import build_parser
    from tokenlearner.flags import config_flags, model_config, train_config
    from tokenlearner.config import TrainConfig

    train = TrainConfig(epochs=3, label_smoothing=0.1, schedule="cosine", seed=5)
    args = build_parser().parse_args(["train", "--out", "unused", *config_flags(model, train)])
    assert (model_config(args), train_config(args)) == (model, train)


def test_layer_names_follow_the_stages_in_depth_order():
    assert ModelConfig().layer_names("token_learner") == ["token_learner"]
    fused = ModelConfig(fuser=True, placement=2)
    assert fused.layer_names("token_learner") == ["token_learner_2", "token_learner_3"]
    assert fused.layer_names("token_fuser") == ["token_fuser_2", "token_fuser_3"]
    assert fused.layer_names("block") == [f"block_{index}" for index in range(4)]
    assert ModelConfig(tokenlearner="none").layer_names("token_learner") == []
