"""The training engine: the keras.io recipe by default, written as an explicit loop so
that a run can report progress, stop at any step and write its run directory as it goes.

One step is the example's maths: the model's own augmentation and dropout, categorical
cross-entropy on its softmax output (sparse labels, one-hot inside the step so that label
smoothing is an option), AdamW. The weights with the best validation top-1 are kept and
the test set is evaluated with them.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tokenlearner import native
from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.data import Cifar10, Split, split
from tokenlearner.datasets import check_data_fits, test_set
from tokenlearner.flops import count
from tokenlearner.moving_shapes import MovingShapes
from tokenlearner.runs import RunDirectory
from tokenlearner.steps import Steps

MAP_IMAGES = 8
PROGRESS_SECONDS = 2.0

# report(message, transient): transient messages are progress lines a terminal may overwrite.
Report = Callable[[str, bool], None]


def _quiet(message: str, transient: bool) -> None:
    pass


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """Keras' AdamW with the recipe's learning rate, warm-up, schedule and weight decay,
    as `FlatAdamW`: the same updates, in a step that traces and compiles seconds sooner."""
    import keras

    from tokenlearner.adamw import FlatAdamW

    learning_rate = config.learning_rate
    if config.schedule == "cosine" or config.warmup_epochs:
        warmup = config.warmup_epochs * steps_per_epoch
        # CosineDecay with alpha=1 decays to 100% of the peak: a constant after warm-up.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else config.learning_rate,
            decay_steps=max(config.epochs * steps_per_epoch - warmup, 1),
            alpha=0.0 if config.schedule == "cosine" else 1.0,
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    return FlatAdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)


class StopFlag:
    """Set by SIGINT/SIGTERM (when training runs in the main thread) or by a STOP file."""

    def __init__(self, run: RunDirectory):
        self.run = run
        self.signalled = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame):
        self.signalled = True

    def __bool__(self) -> bool:
        return self.signalled or self.run.stop_requested()


class Startup:
    """The seconds each stage took from the command's start to the end of the first
    training step, in order; a run's summary keeps them as `startup_s`."""

    def __init__(self):
        self.last = time.time()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        """The time since the last lap (or the start) was spent on `stage`."""
        now = time.time()
        self.stages[stage] = now - self.last
        self.last = now


def training_parts(data: Cifar10 | MovingShapes, recipe: TrainConfig) -> tuple[Split, np.ndarray, np.ndarray]:
    """The training and validation parts and the test images and labels that `recipe` asks
    for: CIFAR-10's training batches split with its seed, or the clips' own three parts;
    `limit` and `eval_limit` keep the first images of each."""
    limit, eval_limit = recipe.limit or None, recipe.eval_limit or None
    test_images, test_labels = test_set(data)
    if isinstance(data, Cifar10):
        parts = split(data, recipe.validation_fraction, recipe.seed, limit, eval_limit)
        return parts, test_images[:eval_limit], test_labels[:eval_limit]
    train, val = np.arange(len(data.train_labels))[:limit], np.arange(len(data.val_labels))[:eval_limit]
    parts = Split(data.train_clips[train], data.train_labels[train], data.val_clips[val], data.val_labels[val],
                  train, val)
    return parts, test_images[:eval_limit], test_labels[:eval_limit]


def _data_record(data: Cifar10 | MovingShapes, parts: Split, test_labels: np.ndarray) -> dict:
    """What the run records of its data: enough to find or draw the same images again."""
    counts = {"train_images": len(parts.train_labels), "val_images": len(parts.val_labels),
              "test_images": len(test_labels)}
    if isinstance(data, MovingShapes):
        return {**data.describe(), **counts}
    return {"directory": str(data.directory), **counts, "class_names": list(data.class_names)}


def train(model_config: ModelConfig, train_config: TrainConfig, data: Cifar10 | MovingShapes, run_dir: str | Path,
          report: Report = _quiet, startup: Startup | None = None,
          after_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train `model_config` on `data` with `train_config`, writing the run directory
    `run_dir` (which must not exist or be empty) as it goes; returns the final summary.

    `startup` holds the caller's stages so far (reading the data, imports), to which the
    stages up to the first step are added; `report` receives one-line progress messages;
    `after_epoch` receives each epoch's record once its files (record, maps, best weights)
    are written, and training waits for it (a search's trial hands the epoch to its
    scheduler there, which may end the run).
    Data the model cannot take, or cannot split as asked, raises a DataError before
    anything is written."""
    startup = startup or Startup()
    check_data_fits(model_config, data)
    parts, test_images, test_labels = training_parts(data, train_config)
    startup.lap("splitting the data")
    kernels = native.describe()
    startup.lap("loading the kernels")
    report(f"model runs {kernels}", False)
    run = RunDirectory(run_dir).create({
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "data": _data_record(data, parts, test_labels),
        "command": sys.argv,
        "kernels": kernels,
    })
    run.write_map_images(parts.val_index[:MAP_IMAGES].tolist(), parts.val_labels[:MAP_IMAGES].tolist(),
                         "val_clip" if isinstance(data, MovingShapes) else "train_batch")
    run.set_status("running")
    try:
        with StopFlag(run) as stop:
            summary = _train(model_config, train_config, parts, (test_images, test_labels), run, stop, report,
                             startup, after_epoch)
    except BaseException as error:
        run.set_status("failed", error=f"{type(error).__name__}: {error}")
        raise
    run.set_status("stopped" if summary["stopped"] else "finished")
    return summary


def _train(model_config: ModelConfig, train_config: TrainConfig, parts: Split, test: tuple[np.ndarray, np.ndarray],
           run: RunDirectory, stop: StopFlag, report: Report, startup: Startup,
           after_epoch: Callable[[dict], None] | None) -> dict:
    """The loop of `train`: epochs of steps, a validation pass and the maps after each, the
    best weights kept and saved, the test pass with them; returns the summary."""
    import keras

    from tokenlearner.model import build_model, predict_with_maps

    keras.utils.set_random_seed(train_config.seed)
    model = build_model(model_config)
    steps_per_epoch = math.ceil(len(parts.train_labels) / train_config.batch_size)
    optimizer = make_optimizer(train_config, steps_per_epoch)
    steps = Steps(model, optimizer, model_config.num_classes, train_config)
    cost = count(model_config)
    startup.lap("building the model")

    map_images = parts.val_images[:MAP_IMAGES]
    run.write_maps(0, *predict_with_maps(model, map_images))
    startup.lap("the maps before training")
    steps.train_step.get_concrete_function()  # traced here, only to time it apart from its first call
    startup.lap("tracing the training step")

    unit = "clips" if model_config.is_video else "images"
    shuffle = np.random.default_rng(train_config.seed)
    total_steps = train_config.epochs * steps_per_epoch
    best_top1, best_epoch, best_weights = -1.0, 0, None
    # Throughput leaves out the first step, which traces and compiles the step function.
    step_seconds, timed_images, first_step_s, stopped = 0.0, 0, None, False
    loop_start = time.time()
    for epoch in range(1, train_config.epochs + 1):
        epoch_start, last_report = time.time(), time.time()
        order = shuffle.permutation(len(parts.train_labels))
        totals, seen = np.zeros(3), 0
        for step in range(steps_per_epoch):
            if stop:
                stopped = True
                break
            index = order[step * train_config.batch_size : (step + 1) * train_config.batch_size]
            step_start = time.time()
            loss, top1, top5 = steps.train_step(parts.train_images[index], parts.train_labels[index])
            totals += (float(loss), int(top1), int(top5))
            seen += len(index)
            now = time.time()
            if first_step_s is None:
                startup.lap("the first step")
                first_step_s = sum(startup.stages.values())
            else:
                step_seconds += now - step_start
                timed_images += len(index)
            if now - last_report >= PROGRESS_SECONDS or step == steps_per_epoch - 1:
                last_report = now
                done = (epoch - 1) * steps_per_epoch + step + 1
                rate = timed_images / step_seconds if step_seconds else 0.0
                eta = (total_steps - done) * (now - loop_start) / done
                run.write_progress(epoch=epoch, epochs=train_config.epochs, step=step + 1,
                                   steps=steps_per_epoch, images_per_s=rate, eta_s=eta)
                report(f"epoch {epoch}/{train_config.epochs}  step {step + 1}/{steps_per_epoch}  "
                       f"loss {totals[0] / seen:.4f}  "
                       + (f"{rate:.0f} {unit}/s  ETA {_duration(eta)}" if rate else "compiling the step"), True)
        if seen == 0:  # stopped before this epoch's first step
            break
        validation = steps.evaluate(parts.val_images, parts.val_labels)
        loss, top1, top5 = (float(value) for value in totals / seen)
        record = {"epoch": epoch, "loss": loss, "top1": top1, "top5": top5,
                  "val_loss": validation["loss"], "val_top1": validation["top1"], "val_top5": validation["top5"],
                  "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                  "seconds": time.time() - epoch_start, "complete": not stopped}
        run.append_epoch(record)
        run.write_maps(epoch, *predict_with_maps(model, map_images))
        report(f"epoch {epoch}: loss {record['loss']:.4f}  top-1 {record['top1']:.3f}  "
               f"val top-1 {record['val_top1']:.3f}  val top-5 {record['val_top5']:.3f}", False)
        if validation["top1"] > best_top1:
            best_top1, best_epoch, best_weights = validation["top1"], epoch, model.get_weights()
            run.save_model(model)
        if after_epoch is not None:
            after_epoch(record)
        if stopped:
            break
    train_seconds = time.time() - loop_start

    summary = {
        "params": cost.params, "macs": cost.macs, "keras_io_gflops": cost.keras_io_gflops,
        # A run stopped before its first step evaluated no epoch and saved no weights.
        "epochs_completed": sum(epoch["complete"] for epoch in run.epochs()), "best_epoch": best_epoch or None,
        "best_val_top1": float(best_top1) if best_epoch else None,
        "train_seconds": train_seconds, "train_images_per_s": timed_images / step_seconds if step_seconds else None,
        "first_step_s": first_step_s, "startup_s": startup.stages if first_step_s else None, "stopped": stopped,
        "test_top1": None, "test_top5": None, "test_loss": None, "test_images": len(test[1]),
    }
    if best_weights is not None and not stopped:
        model.set_weights(best_weights)
        test = steps.evaluate(*test)
        summary.update(test_top1=float(test["top1"]), test_top5=float(test["top5"]), test_loss=float(test["loss"]),
                       test_confusion=test["confusion"])
        report(f"test top-1 {test['top1']:.4f}  top-5 {test['top5']:.4f} (weights of epoch {best_epoch})", False)
    run.write_summary(summary)
    return summary


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
