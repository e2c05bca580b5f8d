import json

import pytest
from conftest import tokenlearner_command

from tokenlearner import PRESETS, ModelConfig, build_model, native
from tokenlearner.flops import CATEGORIES, count
from tokenlearner.presets import PUBLISHED

# What the profiler counts outside MultiHeadAttention in the reference's frozen graph, halved.
REFERENCE_MEASURED = {
    "keras-io-no-tokenlearner": 0.01844,
    "keras-io-4-tokens": 0.01469,
    "keras-io-8-tokens": 0.01538,
    "keras-io-depth-8": 0.03594,
}
REFERENCE_FLAGS = {
    "keras-io-no-tokenlearner": ("--no-tl",),
    "keras-io-4-tokens": (),
    "keras-io-8-tokens": ("--tokens", "8"),
    "keras-io-depth-8": ("--no-tl", "--layers", "8"),
}


def test_tiny_model_by_hand():
    config = ModelConfig(input_size=8, resize_size=8, image_size=8, patch_size=4, dim=4, depth=1, heads=1,
                         key_dim=2, mlp_units=(3, 4), num_tokens=2, placement=1)
    report = count(config)
    patch = 4 * (4 * 4 * 3) * 4  # 4 patches, 48 inputs each, 4 outputs
    qkv = 4 * 4 * (3 * 2)  # 4 tokens, width 4 -> 3 x (1 head x 2)
    scores = values = 1 * 4 * 4 * 2  # heads x T x T x key_dim
    output = 4 * 2 * 4
    mlp = 4 * 4 * 3 + 4 * 3 * 4
    learner = 4 * 9 * 4 * 2 + 3 * (4 * 9 * 2 * 2) + 2 * 4 * 4  # 3x3 convs 4->2, 2->2 (x3), pooling S*N*C
    head = 4 * 10
    assert report.macs == patch + qkv + scores + values + output + mlp + learner + head == 1848
    assert report.flops == 2 * 1848
    assert sum(report.macs_by_category().values()) == report.macs
    assert report.macs_by_category()["attention_matmuls"] == 64


def test_tiny_clip_by_hand():
    """The tiny model above on clips of 4 frames cut into tubelets of 2: two slices of 4
    patches. The blocks attend over all 2 x 2 tokens; TokenLearner and TokenFuser run on
    each slice's 4 patches."""
    image = ModelConfig(input_size=8, resize_size=8, image_size=8, patch_size=4, dim=4, depth=2, heads=1,
                        key_dim=2, mlp_units=(3, 4), num_tokens=2, placement=1, fuser=True)
    clip = image.replace(frames=4, tubelet_frames=2)
    assert [(stage.name, stage.tokens) for stage in clip.stages()] == [
        ("block_0", 8), ("token_learner_1", 8), ("block_1", 4), ("token_fuser_1", 4)]
    macs = count(clip).macs_by_layer()
    assert macs["patch_embedding"] == 8 * (4 * 4 * 3 * 2) * 4  # 8 patches, 2 frames of 48 inputs each
    qkv, output, mlp = 4 * (3 * 2), 2 * 4, 4 * 3 + 3 * 4  # per token
    assert macs["block_0"] == 8 * (qkv + output + mlp) + 2 * 8 * 8 * 2  # T = 8: QK^T and AV
    assert macs["block_1"] == 4 * (qkv + output + mlp) + 2 * 4 * 4 * 2  # T = 2 slices x 2 tokens
    per_slice_learner = 4 * 9 * 4 * 2 + 3 * (4 * 9 * 2 * 2) + 2 * 4 * 4
    assert macs["token_learner_1"] == 2 * per_slice_learner
    per_slice_fuser = 4 * 2 * 2 + 4 * 4 * 64 + 4 * 64 * 2 + 4 * 2 * 4  # mixer, gate MLP, fusion
    assert macs["token_fuser_1"] == 2 * per_slice_fuser
    assert macs["classifier"] == 4 * 10
    assert count(clip).params == count(image).params + (4 * 4 * 3) * 4 + 4 * 4  # a second frame's kernel, 4 more positions


@pytest.mark.parametrize("name", list(REFERENCE_MEASURED))
def test_keras_io_convention_reproduces_the_published_table(name):
    gflops = count(PRESETS[name]).keras_io_gflops
    assert gflops == pytest.approx(PUBLISHED[name].gflops, rel=0.01)
    assert gflops == pytest.approx(REFERENCE_MEASURED[name], abs=5e-6)


@pytest.mark.parametrize("name", list(REFERENCE_MEASURED))
def test_keras_io_convention_equals_the_profiler_on_the_reference_graph(name, reference_script):
    from profiler import float_ops, reference_model

    model = reference_model(reference_script, *REFERENCE_FLAGS[name])
    outside_attention = sum(f for node, _, f in float_ops(model) if "multi_head_attention" not in node)
    assert count(PRESETS[name]).keras_io_gflops * 2e9 == outside_attention


VARIANTS = {
    **PRESETS,
    "v1-sum-fuser": ModelConfig(fuser=True, pooling="sum", placement=2),
    "v11-mlp-fuser": ModelConfig(tokenlearner="v11", v11_style="mlp", fuser=True, placement=1),
    "patch-4-16-tokens": ModelConfig(patch_size=4, num_tokens=16, placement=0),
    "clip-4-frames": ModelConfig(frames=4),
    "clip-4-frames-v1-sum-fuser": ModelConfig(frames=4, fuser=True, pooling="sum", placement=2),
    "clip-4-frames-tubelets-of-2-v11": ModelConfig(frames=4, tubelet_frames=2, tokenlearner="v11",
                                                   placement=1, num_tokens=8),
    "clip-2-frames-v11-mlp-fuser": ModelConfig(frames=2, tokenlearner="v11", v11_style="mlp", fuser=True,
                                               placement=3),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_full_count_against_the_profiler_on_our_graph(name, monkeypatch):
    """Our graph has no einsum, so the profiler sees every matrix product: its MatMul,
    BatchMatMul and Conv2D float ops must be exactly 2 x our MACs. Its total adds the
    element-wise work we leave out: 1.2-1.5% without TokenFuser; TokenFuser's three
    LayerNorms per block over few tokens raise that to 1.6-2.2%. (Built with Keras' own
    GELU and LayerNorm: the profiler cannot count the native kernels' float ops.)"""
    from profiler import MATRIX_OPS, float_ops

    monkeypatch.setattr(native, "load", lambda: None)

    config = VARIANTS[name]
    counted = float_ops(build_model(config), (1, *config.input_shape))
    report = count(config)
    assert sum(f for _, op, f in counted if op in MATRIX_OPS) == report.flops
    elementwise_share = sum(f for _, _, f in counted) / report.flops - 1
    assert 0 < elementwise_share < (0.025 if config.fuser else 0.02)


def test_report_rows_follow_the_model():
    report = count(ModelConfig(fuser=True, placement=2))
    layers = {row.name.split("/")[0] for row in report.layers}
    assert layers == {"patch_embedding", "block_0", "block_1", "block_2", "block_3", "token_learner_2",
                      "token_fuser_2", "token_learner_3", "token_fuser_3", "classifier"}
    assert {row.category for row in report.layers} <= set(CATEGORIES)


def test_flops_command_json():
    result = tokenlearner_command("flops", "--tokens", "8", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["params"] == 1_355_850
    assert report["flops"] == 2 * report["macs"]
    assert round(report["keras_io_gflops"], 4) == 0.0154
    assert sum(layer["macs"] for layer in report["layers"]) == report["macs"]
    assert {"name", "macs"} <= set(report["layers"][0])


def test_flops_command_counts_clips():
    result = tokenlearner_command("flops", "--frames", "8", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.pop("config")["frames"] == 8
    assert report == json.loads(json.dumps(count(ModelConfig(frames=8)).to_dict()))
    image = count(ModelConfig())
    assert report["params"] == image.params + 7 * 64 * 128  # position embeddings for 7 more frames
    assert report["macs_by_category"]["patch_embedding"] == 8 * image.macs_by_category()["patch_embedding"]
    table = tokenlearner_command("flops", "--frames", "8").stdout
    every_patch = count(ModelConfig(frames=8, tokenlearner="none")).macs
    assert f"MACs per clip               {report['macs']:,}" in table
    assert f"without TokenLearner        {every_patch:,} MACs, every block over all 512 patches" in table
    tubelets = tokenlearner_command("flops", "--frames", "8", "--tubelet-frames", "2", "--tokenlearner", "v11",
                                    "--tokens", "8")  # as docs/video.md shows it
    clip = ModelConfig(frames=8, tubelet_frames=2, tokenlearner="v11", num_tokens=8)
    assert f"MACs per clip               {count(clip).macs:,}" in tubelets.stdout
    refused = tokenlearner_command("flops", "--frames", "8", "--tubelet-frames", "3")
    assert refused.returncode == 2 and "tubelet_frames=3 does not divide frames=8" in refused.stderr


def test_flops_command_table():
    result = tokenlearner_command("flops", "--preset", "keras-io-depth-8")
    assert result.returncode == 0, result.stderr
    assert "block_7/attention_scores" in result.stdout
    assert "2,665,610" in result.stdout and "0.03594" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tokens", "0"], "error: num_tokens=0 is out of range"),
        (["--placement", "9"], "error: placement=9 is out of range: must be from 0 to 4"),
        (["--depth", "four"], "error: argument --depth: invalid int value: 'four'"),
        (["--tokenlearner", "v3"], "error: tokenlearner='v3' is not allowed"),
        (["--mlp-units", "256,x"], "is not a comma-separated list of integers"),
        (["--preset", "nope"], "error: argument --preset: invalid choice"),
    ],
)
def test_bad_flags_exit_with_one_line(flags, message):
    result = tokenlearner_command("flops", *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
