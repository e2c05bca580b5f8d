"""Training and inference speed of a config on this machine, measured after warm-up, and
the same measured side by side with the keras.io reference.

Random uint8 images cost the same to train on as CIFAR-10, so no data is needed. Numbers
on shared machines vary by 10-20% from run to run: compare configs (or this project with
the keras.io reference) side by side, in one session.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tokenlearner import native
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.data import find_data_dir
from tokenlearner.flags import config_flags
from tokenlearner.keras_io import reference_flags

INFERENCE_REPEATS = 3


def benchmark(config: ModelConfig, batch_size: int = 256, steps: int = 6, started: float | None = None) -> dict:
    """`train_images_per_s` and `train_s_per_step` (median over `steps` steps after two
    warm-up steps), `infer_ms_per_image` (median over batches of `batch_size`) and
    `first_step_s`, the seconds from `started` (default: now) to the end of the first
    training step, tracing included; `intra_op_threads`, the threads each op ran on (0:
    TensorFlow's default, every core)."""
    import keras
    import tensorflow as tf

    from tokenlearner.model import build_model
    from tokenlearner.steps import Steps
    from tokenlearner.training import make_optimizer

    started = time.time() if started is None else started
    keras.utils.set_random_seed(0)
    model = build_model(config)
    training = Steps(model, make_optimizer(TrainConfig(batch_size=batch_size), 1), config.num_classes)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, config.input_size, config.input_size, 3), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, batch_size, dtype=np.int32)

    training.train_step(images, labels)
    first_step_s = time.time() - started
    step_times = _timed(lambda: training.train_step(images, labels), steps)
    inference_times = _timed(lambda: training.eval_step(images, labels), INFERENCE_REPEATS)
    step = statistics.median(step_times)
    return {
        "train_images_per_s": batch_size / step,
        "train_s_per_step": step,
        "infer_ms_per_image": 1000 * statistics.median(inference_times) / batch_size,
        "first_step_s": first_step_s,
        "batch_size": batch_size,
        "steps": steps,
        "step_times_s": step_times,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "kernels": native.describe(),
    }


def _timed(function, repeats: int) -> list[float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


class ComparisonError(RuntimeError):
    """The reference script, or a bench beside it, did not give its timings."""


def compare_with_reference(script: Path, data_dir: str | None, config: ModelConfig, *, batch_size: int,
                           steps: int, pairs: int, report: Callable[[dict], None] = lambda pair: None) -> dict:
    """Alternate the keras.io reference `script` and our `bench`, each in a new process,
    `pairs` times, and give both steady seconds per step and their ratio for each pair.

    The reference runs its `--steps` mode under `tokenlearner.fit_timing`: its step time is
    the median gap between the batches of its second `fit` (`steps` >= 2), not the
    `steady_s_per_step` it prints, which is kept as `reference_printed_s_per_step` (see
    `fit_timing` for why the two differ). `first_step_s` counts from each process's start.
    `report` is called with each pair as it is measured. The reference reads CIFAR-10 from
    `data_dir`, found as every command finds it. A `ComparisonError` says what went wrong.
    """
    if steps < 2:
        raise ComparisonError("comparing with the reference needs --steps 2 or more")
    try:
        flags = reference_flags(config)
    except ValueError as error:
        raise ComparisonError(str(error)) from None
    reference_command = [sys.executable, "-m", "tokenlearner.fit_timing", str(script),
                         str(find_data_dir(data_dir)), "--steps", str(steps), "--batch", str(batch_size), *flags]

    ours_command = [sys.executable, "-m", "tokenlearner", "bench", "--json", "--steps", str(steps),
                    "--batch-size", str(batch_size), *config_flags(config)]
    measured = []
    for _ in range(pairs):
        reference = _json_lines(_output(reference_command, "the reference"), "the reference")
        timed_fits = next((line["fits"] for line in reference if "fits" in line), [])
        printed = next((line["steady_s_per_step"] for line in reference if "steady_s_per_step" in line), None)
        if printed is None or len(timed_fits) < 2 or len(timed_fits[1]["batch_ends_s"]) < 2:
            raise ComparisonError(f"{script} did not fit twice with {steps} steps each: is it the keras.io "
                                 "reference script (keras_io_reference.py)?")
        ends = timed_fits[1]["batch_ends_s"]
        ours = _json_lines(_output(ours_command, "our bench"), "our bench")[-1]
        pair = {
            "reference_s_per_step": statistics.median(b - a for a, b in zip(ends, ends[1:])),
            "reference_printed_s_per_step": printed,
            "reference_first_step_s": timed_fits[0]["batch_ends_s"][0],
            "ours_s_per_step": ours["train_s_per_step"],
            "ours_first_step_s": ours["first_step_s"],
        }
        pair["speedup"] = pair["reference_s_per_step"] / pair["ours_s_per_step"]
        report(pair)
        measured.append(pair)
    return {"batch_size": batch_size, "steps": steps, "pairs": measured,
            "median_speedup": statistics.median(pair["speedup"] for pair in measured)}


def _output(command: list[str], what: str) -> str:
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode:
        last = (finished.stderr.strip().splitlines() or ["no message"])[-1]
        raise ComparisonError(f"{what} failed (exit status {finished.returncode}): {last}")
    return finished.stdout


def _json_lines(output: str, what: str) -> list[dict]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if not lines:
        raise ComparisonError(f"{what} printed no timings: " + (output.strip().splitlines() or ["(nothing)"])[-1])
    return lines
