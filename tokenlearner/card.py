"""Shipping a finished run as a checkpoint: the run directory copied into `checkpoints/`,
with a model card (`README.md`) generated from its files and a picture of its
learned-token maps.

The card is a pure function of the folder's files (`render_card`), so a test can check
that a shipped card still agrees with them. The picture shows the maps alone, without
the images under them: CIFAR-10's pixels are never copied into the repository. The app's
Attention page draws the same maps over the images of the user's own copy.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.data import Cifar10
from tokenlearner.moving_shapes import MovingShapes
from tokenlearner.overlay import clip_sheet, colorize, normalise, stack_rows, token_colours
from tokenlearner.runs import RunDirectory, RunError

CARD = "README.md"
PICTURE = "maps.png"
PICTURE_IMAGES = 4
COPIED = ("config.json", "status.json", "metrics.jsonl", "metrics.json", "model.keras", "maps")
MAX_BYTES = 8 * 1024 * 1024
FULL_TRAIN_SET = 50_000
WEIGHTS_ENTRY = "model.weights.h5"
# Half of the 0.5 points within which a card's test top-1 must be reproducible.
SHIPPING_TOLERANCE = 0.0025


def describe(config: ModelConfig) -> str:
    """One line: what this model is."""
    blocks = f"{config.depth}-block mini ViT ({config.dim} wide, {config.heads} heads)"
    if config.is_video:
        tubelets = f", patches of {config.tubelet_frames} frames" if config.tubelet_frames > 1 else ""
        blocks += f" over {config.frames}-frame clips{tubelets}"
    patches = config.temporal_slices * config.num_patches
    if config.tokenlearner == "none":
        return f"{blocks} without TokenLearner: every block attends over all {patches} patches"
    version = {"v1": "v1.0", "v11": f"v1.1 ({config.v11_style.replace('_', ' ')})"}[config.tokenlearner]
    fuser = " with TokenFuser" if config.fuser else ""
    where = (f"from each temporal slice's {config.num_patches} patches ({config.temporal_slices} slices)"
             if config.is_video else f"from the {config.num_patches} patches")
    return (f"{blocks} with TokenLearner {version}{fuser}: {config.num_tokens} tokens learned {where} "
            f"after block {config.placement} of {config.depth}")


def render_card(directory: str | os.PathLike, name: str | None = None) -> str:
    """The model card of a checkpoint folder (called `name`, default: the folder's), from
    its config.json, metrics.json and metrics.jsonl alone."""
    run = RunDirectory(directory)
    name = name or run.path.name
    record, summary, epochs = run.record(), run.summary(), run.epochs()
    model, recipe, data = ModelConfig.from_dict(record["model"]), TrainConfig.from_dict(record["train"]), record["data"]
    best = next(e for e in epochs if e["epoch"] == summary["best_epoch"])
    defaults = TrainConfig()
    recipe_rows = "\n".join(
        f"| `{name}` | {value} | {getattr(defaults, name)} |" for name, value in recipe.to_dict().items())
    maps_section = (
        "This model has no TokenLearner, so it learns no token maps: it is the baseline the\n"
        "others are measured against."
        if model.tokenlearner == "none" else
        f"![maps of a test clip]({PICTURE})\n\n"
        "A test clip the model classifies right (the caption says which shape moves): each row is one\n"
        "temporal slice, its first frame and then every token's map over it (bright: the patches the\n"
        "token pools), then the patches coloured by the token that weights them most. The app's Video\n"
        "page plays any test clip this way, or a GIF of your own."
        if model.is_video else
        f"![maps of {PICTURE_IMAGES} test images]({PICTURE})\n\n"
        f"Each row is one test image (the first {PICTURE_IMAGES} of different classes that the model gets\n"
        "right): every token's map over the patch grid (bright: the patches the token pools), then the\n"
        "patches coloured by the token that weights them most. The images themselves are left out,\n"
        "because CIFAR-10's images are not redistributed here; the app's Attention page draws these\n"
        "maps over the images of your own copy.")
    overlay = "" if model.tokenlearner == "none" else " --overlay maps.png"
    maps_use = ("is empty: without TokenLearner there are no token maps" if model.tokenlearner == "none" else
                "maps each TokenLearner (and TokenFuser) layer's name to its maps on the patch grid, "
                + ("(clips, temporal slices, tokens, height, width)" if model.is_video else
                   "(images, tokens, height, width)"))
    versions = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
    if model.is_video:
        trained_on = f"""**Trained on {data['train_images']:,} clips of moving shapes** (`tokenlearner/moving_shapes.py`, seed
{data['seed']}), with {data['val_images']:,} more for validation and {data['test_images']:,} test clips for the results
below, each part drawn from its own stream: four shapes on a 32x32 canvas, one of which moves, and
the label is which one ({len(data['class_names'])} classes, chance {100 / len(data['class_names']):.0f}%). No single frame can tell
the labels apart (docs/video.md), so what this model reaches it reaches from motion."""
        unit, sample = "clip", f"np.zeros((2, {model.frames}, 32, 32, 3), np.uint8)  # clips: {model.frames} frames of 32x32, 0-255"
        command_input = "--image clip.gif"
        trained_by = f"\nTrained by\n\n```bash\npython -m tokenlearner {' '.join(record['command'][1:])}\n```\n"
    else:
        trained_on = f"""**Trained on {data['train_images']:,} CIFAR-10 training images**, with {data['val_images']:,} more held out for
validation and {data['test_images']:,} test images for the results below, all from a
`cifar-10-batches-py` folder in the official format. That is {data['train_images'] / FULL_TRAIN_SET:.1%} of the
{FULL_TRAIN_SET:,} training images of the full set: read the accuracy as what this model reaches on that
much of CIFAR-10, not as a CIFAR-10 result (the keras.io example reports about 56% top-1
after 20 epochs on the full set)."""
        unit, sample = "image", "np.zeros((2, 32, 32, 3), np.uint8)  # your RGB images: 32x32, values 0-255"
        command_input = "--image photo.jpg"
        trained_by = ""
    return f"""# {name}

{describe(model)}.

{trained_on}

## Results

| | |
|---|---|
| test top-1 | **{100 * summary['test_top1']:.2f}%** on {summary['test_images']:,} test {unit}s |
| test top-5 | {100 * summary['test_top5']:.2f}% |
| best validation top-1 | {100 * summary['best_val_top1']:.2f}% (epoch {summary['best_epoch']} of {summary['epochs_completed']}; its weights are `model.keras`) |
| train top-1 at that epoch | {100 * best['top1']:.2f}% (against the unmixed labels, with augmentation on) |
| parameters | {summary['params']:,} |
| multiply-accumulates per {unit} | {summary['macs'] / 1e6:.2f} M |
| keras.io-convention GFLOPs | {summary['keras_io_gflops']:.4f} |
| training time | {_training_time(summary, unit)} |

## Use it

From the repository's root, with its requirements installed:

```python
import numpy as np
import tokenlearner

model = tokenlearner.load_model("checkpoints/{name}")
images = {sample}
probabilities, maps = tokenlearner.predict_with_maps(model, images)
```

`probabilities` is (2, {model.num_classes}), one row of class probabilities per {unit};
`maps` {maps_use}.
`python -m tokenlearner predict checkpoints/{name} {command_input}{overlay}`
does the same for {"an animated GIF or a folder of frames" if model.is_video else "a photo of any size"}.

## Learned-token maps

{maps_section}

## Training
{trained_by}
The recipe (defaults: the keras.io example's):

| field | this model | keras.io |
|---|---|---|
{recipe_rows}

Seed {recipe.seed}. `model.keras` stores the weights of the best epoch in float16, which halves
the file; the model loads them into float32 variables and computes in float32, and the
stored weights were checked to give the test top-1 above to within 0.25 points. Every epoch's metrics are in `metrics.jsonl`, the maps of 8 fixed
validation {unit}s after each epoch in `maps/`.

## Model config

```json
{json.dumps(model.to_dict(), indent=2)}
```

## Versions

{versions}.
"""


def _training_time(summary: dict, unit: str) -> str:
    minutes = f"{summary['train_seconds'] / 60:.1f} min"
    # A run of a single step has no step after the compiling one to time.
    speed = summary["train_images_per_s"]
    return f"{minutes} at {speed:.0f} training {unit}s/s" if speed else minutes


def picture_indices(labels: np.ndarray, predicted: np.ndarray, count: int = PICTURE_IMAGES) -> list[int]:
    """The first `count` test images of different classes that the model classifies right."""
    chosen, classes = [], set()
    for index in np.flatnonzero(predicted == labels):
        if int(labels[index]) not in classes:
            chosen.append(int(index))
            classes.add(int(labels[index]))
        if len(chosen) == count:
            break
    return chosen


def draw_maps(maps: np.ndarray, captions: list[str], tile: int = 64, gap: int = 4) -> Image.Image:
    """Rows of token maps, (B, S, h, w), each row under its caption and ending with the
    dominant-token view; no image pixels."""
    count, tokens = maps.shape[:2]
    palette = token_colours(tokens)
    caption_height = 14
    row_height = caption_height + tile
    sheet = Image.new("RGB", ((tokens + 1) * (tile + gap) - gap, count * (row_height + gap) - gap), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (image_maps, caption) in enumerate(zip(maps, captions)):
        top = row * (row_height + gap)
        draw.text((0, top), caption, fill=(0, 0, 0))
        tiles = [Image.fromarray(colorize(normalise(m))).resize((tile, tile), Image.Resampling.BILINEAR)
                 for m in image_maps]
        tiles.append(Image.fromarray(palette[np.argmax(image_maps, axis=0)]).resize((tile, tile),
                                                                                  Image.Resampling.NEAREST))
        for column, picture in enumerate(tiles):
            sheet.paste(picture, (column * (tile + gap), top + caption_height))
    return sheet


def draw_clip_maps(clip: np.ndarray, maps: np.ndarray, config: ModelConfig, caption: str) -> Image.Image:
    """A clip's maps, (slices, S, h, w), under the caption (`overlay.clip_sheet`)."""
    sheet = clip_sheet(clip, maps, config.tubelet_frames, config.covered_region())
    title = Image.new("RGB", (sheet.width, 14), "white")
    ImageDraw.Draw(title).text((0, 0), caption, fill=(0, 0, 0))
    return stack_rows([title, sheet], gap=2)


def write_half_precision_copy(source: Path, destination: Path) -> None:
    """Copy the `.keras` archive `source` with its float32 weights stored as float16. Keras
    loads them into the float32 variables the config declares, so the copy loads with
    plain `keras.saving.load_model` and computes in float32, at half the size."""
    import h5py

    def halve(name, item, target):
        if isinstance(item, h5py.Dataset):
            values = item[()]
            target.create_dataset(name, data=values.astype(np.float16) if values.dtype == np.float32 else values)
        else:
            target.require_group(name).attrs.update(dict(item.attrs))

    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w") as copy:
        for entry in original.infolist():
            content = original.read(entry.filename)
            if entry.filename == WEIGHTS_ENTRY:
                halved = io.BytesIO()
                with h5py.File(io.BytesIO(content), "r") as weights, h5py.File(halved, "w") as target:
                    target.attrs.update(dict(weights.attrs))
                    weights.visititems(lambda name, item: halve(name, item, target))
                content = halved.getvalue()
            copy.writestr(entry, content)


def check_shippable(run_dir: str | os.PathLike, destination: str | os.PathLike) -> RunDirectory:
    """The run `run_dir`, if it is a finished run and `destination` is free; a RunError
    otherwise. Reads only small files, so a command can refuse before TensorFlow loads."""
    source = RunDirectory(run_dir)
    source.require_existing()
    if source.status().get("state") != "finished":
        raise RunError(f"{source.path} has not finished (status: {source.status().get('state')}): ship a finished run")
    if (source.summary() or {}).get("test_top1") is None or "train" not in source.record():
        raise RunError(f"{source.path} has no training record and test results: only a run trained by "
                       "`train` or `experiment` can be shipped")
    if Path(destination).exists():
        raise RunError(f"{destination} already exists: remove it first or choose another name")
    return source


def ship(run_dir: str | os.PathLike, destination: str | os.PathLike,
         load_data: Callable[[], Cifar10 | MovingShapes]) -> Path:
    """Copy the finished run `run_dir` to the new folder `destination` (without per-step
    files, weights stored in float16), check that the stored weights still give the test
    accuracy of its metrics.json, draw its maps picture on the test images (or clips) of
    `load_data()` and write its card. The folder appears whole or not at all."""
    from tokenlearner.model import predict_with_maps
    from tokenlearner.steps import Steps
    from tokenlearner.datasets import test_set

    source, destination = check_shippable(run_dir, destination), Path(destination)
    source.load_model()  # a RunError if its model is damaged
    data = load_data()
    test_images, test_labels = test_set(data)
    summary = source.summary()
    if len(test_labels) != summary["test_images"]:
        raise RunError(f"{source.path} was tested on {summary['test_images']} images, the data given has "
                       f"{len(test_labels)}: ship it with the CIFAR-10 folder it was trained on")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for name in COPIED:
            path = source.path / name
            if name == "model.keras":
                write_half_precision_copy(path, staging / name)
            else:
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, staging / name)
        model, config = RunDirectory(staging).load_model()
        stored = Steps(model, None, config.num_classes).evaluate(test_images, test_labels)
        if abs(stored["top1"] - summary["test_top1"]) > SHIPPING_TOLERANCE:
            raise RunError(f"the float16 weights give test top-1 {stored['top1']:.4f}, the run reports "
                           f"{summary['test_top1']:.4f}: more than {SHIPPING_TOLERANCE} apart")
        if config.tokenlearner != "none":
            probabilities, all_maps = predict_with_maps(model, test_images)
            predicted = probabilities.argmax(axis=-1)
            indices = picture_indices(test_labels, predicted, 1 if config.is_video else PICTURE_IMAGES)
            first = all_maps[config.layer_names("token_learner")[0]]
            captions = [f"test #{i}: {data.class_names[test_labels[i]]} "
                        f"({100 * probabilities[i, predicted[i]]:.0f}%)" for i in indices]
            if config.is_video:  # drawn shapes, not CIFAR-10: the frames can be shown under their maps
                draw_clip_maps(test_images[indices[0]], first[indices[0]], config, captions[0]).save(staging / PICTURE)
            else:
                draw_maps(first[indices], captions).save(staging / PICTURE)
        (staging / CARD).write_text(render_card(staging, destination.name))
        size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        if size > MAX_BYTES:
            raise RunError(f"{source.path} makes a {size / 2**20:.1f} MB checkpoint, over the 8 MB limit")
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
