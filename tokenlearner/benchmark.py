"""Training and inference speed of a config on this machine, measured after warm-up.

Random uint8 images cost the same to train on as CIFAR-10, so no data is needed. Numbers
on shared machines vary by 10-20% from run to run: compare configs (or this project with
the keras.io reference) side by side, in one session.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from tokenlearner.config import ModelConfig, TrainConfig

INFERENCE_REPEATS = 3


def benchmark(config: ModelConfig, batch_size: int = 256, steps: int = 6, started: float | None = None) -> dict:
    """`train_images_per_s` and `train_s_per_step` (median over `steps` steps after two
    warm-up steps), `infer_ms_per_image` (median over batches of `batch_size`) and
    `first_step_s`, the seconds from `started` (default: now) to the end of the first
    training step, tracing included."""
    import keras

    from tokenlearner.model import build_model
    from tokenlearner.training import Steps, make_optimizer

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
    }


def _timed(function, repeats: int) -> list[float]:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times
