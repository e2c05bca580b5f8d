"""`bench --reference`: the keras.io reference timed batch by batch beside our bench."""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, tokenlearner_command

from tokenlearner import ModelConfig
from tokenlearner.keras_io import reference_flags

TWO_FITS = """
    import json, sys
    import numpy as np, keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((12, 3)), np.zeros((12, 2))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.fit(x, y, 4, 1, 0, [keras.callbacks.History()])  # callbacks passed by position
    print(json.dumps({"argv": sys.argv}))
    if sys.argv[1] == "raise":
        raise RuntimeError("the script failed")
    sys.exit(int(sys.argv[1]))
"""


def fit_timing(*args):
    return subprocess.run([sys.executable, "-m", "tokenlearner.fit_timing", *args], capture_output=True, text=True,
                          cwd=REPO)


# That `reference_flags` builds the same model in the script: tests/test_keras_io.py.
@pytest.mark.parametrize(("config", "named"), [
    (ModelConfig(tokenlearner="v11"), "tokenlearner='v11'"),
    (ModelConfig(fuser=True), "fuser=True"),
    (ModelConfig(depth=8), "placement=3"),
    (ModelConfig(dim=64, mlp_units=(128, 64)), "dim=64, mlp_units=[128, 64]"),
])
def test_models_the_reference_cannot_build_are_refused_by_field(config, named):
    with pytest.raises(ValueError) as refused:
        reference_flags(config)
    assert f"the keras.io reference cannot build this model ({named}): it varies only --tokens" in str(refused.value)


@pytest.mark.parametrize(("ending", "exit_status"), [("0", 0), ("3", 3), ("raise", 1)])
def test_fit_timing_times_every_batch_of_every_fit(ending, exit_status, tmp_path):
    script = tmp_path / "two_fits.py"
    script.write_text(textwrap.dedent(TWO_FITS))
    result = fit_timing(str(script), ending, "--flag")
    assert result.returncode == exit_status, result.stderr
    assert ("RuntimeError: the script failed" in result.stderr) == (ending == "raise")
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert printed[0]["argv"] == [str(script), ending, "--flag"]
    fits = printed[-1]["fits"]
    assert [len(fit["batch_ends_s"]) for fit in fits] == [3, 3]
    ends = fits[0]["batch_ends_s"] + fits[1]["batch_ends_s"]
    assert ends == sorted(ends) and ends[0] > 0


def test_fit_timing_without_a_script_says_so_in_one_line(tmp_path):
    result = fit_timing(str(tmp_path / "missing.py"))
    assert (result.returncode, result.stderr.strip()) == (2, f"error: {tmp_path / 'missing.py'}: no such file")


def test_bench_prints_its_measures_as_json_with_one_thread_per_op():
    result = tokenlearner_command("bench", "--steps", "1", "--batch-size", "20", "--json")
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["train_images_per_s"] > 0 and measured["infer_ms_per_image"] > 0
    assert 0 < measured["first_step_s"] < 300
    assert measured["intra_op_threads"] == 1  # what the chunked steps are made for


@pytest.mark.slow
def test_bench_times_the_reference_beside_ours(reference_script, cifar_dir):
    result = tokenlearner_command("bench", "--reference", str(reference_script), "--data-dir",
                        str(cifar_dir), "--pairs", "1", "--steps", "2", "--batch-size", "16", "--json")
    assert result.returncode == 0, result.stderr
    (pair,) = json.loads(result.stdout)["pairs"]
    # Batches of 16 take well under a second each; the reference's printout includes its wait.
    assert 0 < pair["reference_s_per_step"] < 2 and 0 < pair["ours_s_per_step"] < 2
    assert pair["reference_printed_s_per_step"] > 0
    assert 0 < pair["reference_first_step_s"] < 300 and 0 < pair["ours_first_step_s"] < 300


@pytest.mark.parametrize(("args", "message"), [
    (["--reference", "no_such_script.py"], "--reference no_such_script.py: no such file (the keras.io "
     "reference script, ../shared/reference/keras_io_reference.py)"),
    (["--reference", "{script}", "--tokenlearner", "v11"], "the keras.io reference cannot build this model "
     "(tokenlearner='v11'): it varies only --tokens, --depth and --tokenlearner none, with --placement depth//2+1"),
    (["--reference", "{script}", "--steps", "1"], "comparing with the reference needs --steps 2 or more"),
    (["--pairs", "2"], "--pairs and --data-dir go with --reference (bench alone trains on random images)"),
])
def test_bench_reference_errors_are_one_line(args, message, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("")
    args = [arg.format(script=script) for arg in args]
    result = tokenlearner_command("bench", *args, "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]


def test_a_failing_reference_is_reported_in_one_line(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text("raise SystemExit('cannot read the data')\n")
    (tmp_path / "test_batch").write_bytes(b"")
    result = tokenlearner_command("bench", "--reference", str(script), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: the reference failed (exit status 1): cannot read the data"]


def test_a_script_that_is_not_the_reference_is_named(tmp_path):
    script = tmp_path / "not_the_reference.py"
    script.write_text("print('hello')\n")
    (tmp_path / "test_batch").write_bytes(b"")  # where the data is found; the script never reads it
    result = tokenlearner_command("bench", "--reference", str(script), "--data-dir", str(tmp_path),
                        "--pairs", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {script} did not fit twice with 6 steps each: is it the keras.io reference script "
        "(keras_io_reference.py)?")
    assert "Traceback" not in result.stderr
