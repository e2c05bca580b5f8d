"""Fidelity to the keras.io example, checked against `../shared/reference`: the same
parameter counts, and the same outputs for the same weights through `import-keras-io`."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import tokenlearner_command

from tokenlearner import ModelConfig
from tokenlearner.cli import build_parser
from tokenlearner.flags import model_config
from tokenlearner.keras_io import (
    keras_io_weight_map,
    load_keras_io_weights,
    reference_flags,
)
from tokenlearner.runs import RunDirectory

# Our flags, and more flags for the reference (whose model flags come from `reference_flags`): the example's
# model, without TokenLearner, and deeper with TokenLearner elsewhere. Its other rows differ from these in a
# number only (8 tokens, 8 blocks), which the published parameter counts below check without the reference.
CONFIGS = {
    "4-tokens": ((), ()),
    "no-tokenlearner": (("--tokenlearner", "none"), ()),
    "depth-8-4-tokens": (("--depth", "8", "--placement", "5"), ("--seed", "5")),
}
PUBLISHED_PARAMS = {"4-tokens": 1_349_946, "8-tokens": 1_355_850, "no-tokenlearner": 1_344_650,
                    "depth-8-no-tokenlearner": 2_665_610}
PUBLISHED_CONFIGS = {"4-tokens": ModelConfig(), "8-tokens": ModelConfig(num_tokens=8),
                     "no-tokenlearner": ModelConfig(tokenlearner="none"),
                     "depth-8-no-tokenlearner": ModelConfig(tokenlearner="none", depth=8)}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_the_models_have_the_examples_published_parameter_counts(name):
    from tokenlearner.flops import count

    assert count(PUBLISHED_CONFIGS[name]).params == PUBLISHED_PARAMS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_imported_weights_reproduce_the_reference(name, reference_script, cifar_dir, tmp_path):
    our_flags, more_reference_flags = CONFIGS[name]
    config = model_config(build_parser().parse_args(["bench", *our_flags]))
    weights, probe = tmp_path / "example.weights.h5", tmp_path / "probe.npz"
    reference = subprocess.run(
        [sys.executable, str(reference_script), str(cifar_dir), "--params-only", *reference_flags(config),
         *more_reference_flags, "--save-weights", str(weights), "--probe", str(probe)],
        capture_output=True, text=True, cwd=reference_script.parent.parent,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    reference_params = json.loads(reference.stdout.strip().splitlines()[-1])["params"]
    if name in PUBLISHED_PARAMS:
        assert reference_params == PUBLISHED_PARAMS[name]

    result = tokenlearner_command("import-keras-io", str(weights), "--probe", str(probe), "--out",
                              str(tmp_path / "checkpoint"), *our_flags)
    assert result.returncode == 0, result.stderr
    assert f"({reference_params:,} parameters)" in result.stdout
    run = RunDirectory(tmp_path / "checkpoint")
    assert run.status()["state"] == "finished"
    model, _ = run.load_model()
    saved = np.load(probe)
    ours = np.asarray(model(saved["images"].astype("float32"), training=False))
    np.testing.assert_allclose(ours, saved["outputs"], atol=1e-5)


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="the keras.io example has no tokenlearner=v11, fuser"):
        keras_io_weight_map(ModelConfig(tokenlearner="v11", fuser=True))


def test_weight_map_covers_every_variable_once():
    from tokenlearner import build_model

    for config in (ModelConfig(), ModelConfig(tokenlearner="none", depth=8), ModelConfig(placement=0)):
        mapping = keras_io_weight_map(config)
        assert sorted(mapping) == sorted(v.path for v in build_model(config).weights)
        sources = [path for pairs in mapping.values() for path, _ in pairs]
        assert len(sources) == len(set(sources))


def test_files_that_are_not_example_weights(tmp_path):
    with pytest.raises(ValueError, match="no such weights file"):
        load_keras_io_weights(tmp_path / "missing.weights.h5", ModelConfig())
    text = tmp_path / "text.weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="is not a Keras .weights.h5 file"):
        load_keras_io_weights(text, ModelConfig())
    other = tmp_path / "other.weights.h5"
    with h5py.File(other, "w") as handle:
        handle["layers/dense/vars/0"] = np.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match="does not hold the keras.io model these flags describe"):
        load_keras_io_weights(other, ModelConfig())


def test_import_command_refuses_to_overwrite(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = tokenlearner_command("import-keras-io", str(tmp_path / "w.weights.h5"), "--out", str(out))
    assert result.returncode == 2
    assert "already exists and is not empty: choose a new run directory" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_import_command_reports_bad_weights_in_one_line(tmp_path):
    result = tokenlearner_command("import-keras-io", str(tmp_path / "missing.weights.h5"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.weights.h5'}: no such weights file"]
    assert not (tmp_path / "o").exists()
