"""Streamlit controls shared by the app's pages, and how app.py runs them. Only app.py
and the pages import this module."""

from __future__ import annotations

import re
import runpy
import threading
from pathlib import Path
from typing import NamedTuple

import streamlit as st

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.limits import Limits
from tokenlearner.presets import DEFAULT_PRESET, PRESETS
from tokenlearner.runs import RunError, find_checkpoints


APP_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"
_through_app = threading.local()  # each session's script runs in its own thread


def run_page(page) -> None:
    """Run the page `st.navigation` chose (app.py's last line), marked as run through app.py."""
    _through_app.running = True
    try:
        page.run()
    finally:
        _through_app.running = False


def page_setup() -> None:
    """Every page's first line. Until some script in a server process has called
    `st.navigation`, Streamlit runs a file of `pages/` by itself (its older multipage
    mode): the first visitor of a fresh server who follows a link to /train would get
    Streamlit's own navigation, the narrow layout and none of app.py's settings (demo
    mode's hidden error details among them). Such a page runs app.py instead, which runs
    the page the link names, query parameters and all, and stops there."""
    if getattr(_through_app, "running", False):
        return
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()


def main_picture():
    """The container of a page's main picture: the browser test checks that it is in view
    on a laptop's screen (its CSS class is `st-key-main_picture`)."""
    return st.container(key="main_picture")


MARKDOWN_SPECIALS = re.compile(r"[\\`*_\[\]<>#|~:$]")


def as_text(text: str) -> str:
    """`text` for Streamlit's Markdown, shown as typed: what a visitor typed or uploaded,
    and what a job printed, must not turn into links, images, formatting or colours."""
    return MARKDOWN_SPECIALS.sub(r"\\\g<0>", text)


def linked_run(runs: list, parameter: str, instead: str):
    """The run of `runs` (RunInfo) that the page's link names in `parameter`
    (?run=checkpoints/v1-8-tokens), or None; a link naming no listed run is reported
    (saying what is shown `instead`), never followed."""
    if parameter not in st.query_params:
        return None
    named = next((run for run in runs if run.name == st.query_params[parameter]), None)
    if named is None:
        st.warning(f"The link names no model here ({as_text(st.query_params[parameter][:100])}); "
                   f"{instead}.")
    return named


TOKENLEARNER_LABELS = {"none": "none", "v1": "v1.0", "v11": "v1.1"}
MAX_APP_DEPTH = 12
MAX_APP_TOKENS = 16


class Preset(NamedTuple):
    model: ModelConfig
    recipe: TrainConfig


def presets(on_clips: bool = False) -> dict[str, Preset]:
    """Every named config for images (the rows of the keras.io tables) or, `on_clips`,
    for clips, with the keras.io recipe, then the config and recipe of every shipped
    checkpoint trained on the same kind of data."""
    choices = {name: Preset(config, TrainConfig()) for name, config in PRESETS.items() if config.is_video == on_clips}
    checkpoints, _ = find_checkpoints()
    for info in checkpoints:
        if info.on_clips != on_clips:
            continue
        try:
            choices[f"checkpoint {info.directory.path.name}"] = Preset(info.config, info.directory.train_config())
        except RunError:
            continue  # the zoo reports a damaged checkpoint; the picker just leaves it out
    return choices


def forget_controls(key: str, keep: tuple[str, ...] = ()) -> None:
    """Reset the controls of `key` (its model knobs and recipe) but those named in `keep`,
    and the knobs of the page's link, which would otherwise bring them back."""
    for name in [name for name in st.session_state if name.startswith(f"{key}_") and name not in keep]:
        del st.session_state[name]
    for parameter in URL_FIELDS:
        st.query_params.pop(parameter, None)


def preset_picker(key: str, on_clips: bool = False) -> Preset:
    """A selector of the presets for images or, `on_clips`, for clips; choosing one resets
    the controls of the same `key` (the model knobs and the recipe) to it."""
    choices = presets(on_clips)
    preset_key = f"{key}_preset"
    if st.session_state.get(preset_key) not in choices:  # chosen for the other kind of data
        st.session_state.pop(preset_key, None)
    default = DEFAULT_PRESET if not on_clips else next((name for name in choices if name.startswith("checkpoint ")),
                                                           CLIP_PRESET)  # a trained recipe
    name = st.selectbox("start from", list(choices), key=starting_at(preset_key, default), on_change=forget_controls,
                        args=(key, (preset_key, f"{key}_data", f"{key}_name")))
    return choices[name]


CLIP_PRESET = "video-shapes"
CLIP_FRAMES = (2, 4, 8, 16)


def clip_controls(key: str, base: ModelConfig) -> ModelConfig:
    """Widgets for a video model's frames and tubelet frames (those that divide the frames)."""
    frames = st.select_slider("frames per clip", CLIP_FRAMES,
                              key=starting_at(f"{key}_frames", base.frames if base.frames in CLIP_FRAMES else 8))
    spans = [span for span in (1, 2, 4) if frames % span == 0]
    tubelet_key = starting_at(f"{key}_tubelet", base.tubelet_frames if base.tubelet_frames in spans else 1)
    if st.session_state[tubelet_key] not in spans:  # more than the fewer frames now chosen
        st.session_state[tubelet_key] = 1
    tubelet = st.radio("frames per patch (tubelet)", spans, horizontal=True, key=tubelet_key)
    return base.replace(frames=frames, tubelet_frames=tubelet)


# The knobs a link carries: query parameter -> (config field, parse).
URL_FIELDS = {
    "depth": ("depth", int),
    "tokenlearner": ("tokenlearner", str),
    "tokens": ("num_tokens", int),
    "placement": ("placement", int),
    "fuser": ("fuser", lambda text: text == "1"),
    "pooling": ("pooling", str),
}


def config_from_url(base: ModelConfig) -> ModelConfig:
    """`base` with the knobs the page's URL sets; an invalid link is reported and ignored."""
    changes = {}
    try:
        for parameter, (field, parse) in URL_FIELDS.items():
            if parameter in st.query_params:
                changes[field] = parse(st.query_params[parameter])
        return base.replace(**changes)
    except ValueError as error:
        st.warning(f"The link's model settings are not valid ({error}); showing the defaults instead.")
        return base


def config_to_url(config: ModelConfig) -> None:
    values = {parameter: getattr(config, field) for parameter, (field, _) in URL_FIELDS.items()}
    st.query_params.update({name: str(int(v)) if isinstance(v, bool) else str(v) for name, v in values.items()})


def model_controls(key: str, base: ModelConfig, linked: bool = False) -> ModelConfig:
    """Widgets for the explorer's knobs (depth, TokenLearner, tokens, placement, TokenFuser,
    pooling); `key` keeps several sets apart on one page. The ranges only allow valid
    configs: placement is clamped whenever depth or TokenFuser changes. With `linked`, the
    knobs start from the page's URL and are written back to it, so a link reproduces them."""
    if linked:
        if f"{key}_depth" not in st.session_state:
            base = config_from_url(base)
        config = _model_controls(key, base)
        config_to_url(config)
        return config
    return _model_controls(key, base)


def starting_at(key: str, value) -> str:
    """`key`, for a widget that starts at `value` unless it has a state of its own. The
    value goes through the session state, not the widget's default: after a reset
    (`forget_controls`) a browser keeps showing a widget's old value over a new default,
    while a value set in the session state reaches it."""
    st.session_state.setdefault(key, value)
    return key


def _model_controls(key: str, base: ModelConfig) -> ModelConfig:
    depth = st.slider("depth (blocks)", 1, MAX_APP_DEPTH,
                      key=starting_at(f"{key}_depth", min(base.depth, MAX_APP_DEPTH)))
    version = st.selectbox("TokenLearner", list(TOKENLEARNER_LABELS), format_func=TOKENLEARNER_LABELS.get,
                           key=starting_at(f"{key}_tokenlearner", base.tokenlearner))
    if version == "none":
        return base.replace(depth=depth, tokenlearner="none", fuser=False, pooling="mean",
                            placement=min(base.placement, depth))
    tokens = st.slider("tokens", 1, MAX_APP_TOKENS,
                       key=starting_at(f"{key}_tokens", min(base.num_tokens, MAX_APP_TOKENS)))
    fuser = st.checkbox("TokenFuser", key=starting_at(f"{key}_fuser", base.fuser))
    last = depth - 1 if fuser else depth
    placement_key = starting_at(f"{key}_placement", base.placement)
    if last == 0:
        st.caption("placement 0: with TokenFuser and one block, TokenLearner comes before it")
        placement = 0
    else:  # clamped whenever depth or TokenFuser leave fewer blocks
        st.session_state[placement_key] = min(st.session_state[placement_key], last)
        placement = st.slider("placement (blocks before TokenLearner)", 0, last, key=placement_key)
    pooling = "mean"
    if version == "v1":
        pooling = st.radio("pooling", ["mean", "sum"], horizontal=True, key=starting_at(f"{key}_pooling", base.pooling))
    return base.replace(depth=depth, tokenlearner=version, num_tokens=tokens, fuser=fuser,
                        placement=placement, pooling=pooling)


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def load_run_model(model_path: str, modified: float):
    """The model of a run directory; `modified` (model.keras's mtime) makes a newer best
    checkpoint load afresh. Cached models are shared: never change them."""
    from tokenlearner.runs import RunDirectory

    return RunDirectory(Path(model_path).parent).load_model()[0]


@st.cache_data(max_entries=4, show_spinner="Drawing the token maps...")
def drawing_maps(model_path: str, modified: float):
    """The drawing (`images.example_drawing`) as the model sees it, and the model's maps
    of it ({layer: (S, h, w)})."""
    from tokenlearner.images import example_drawing, to_model_input
    from tokenlearner.model import predict_with_maps

    image = to_model_input(example_drawing())
    _, maps = predict_with_maps(load_run_model(model_path, modified), image[None])
    return image, {name: value[0] for name, value in maps.items()}


@st.cache_data(max_entries=16, show_spinner="Drawing the clips...")
def drawn_clips(record: dict, part: str, indices: tuple[int, ...]):
    """Clips `indices` of `part` of the moving shapes a run's data `record` describes, and their labels."""
    from tokenlearner.moving_shapes import draw_clips

    return draw_clips(record, part, list(indices))


@st.cache_resource(max_entries=1, show_spinner="Reading CIFAR-10...")
def _read_cifar10(directory: str, versions: tuple):
    """The folder's data, or the message of the `DataError` reading it raised: Streamlit's
    cache keeps no exceptions, and without the message a page that shows a damaged
    folder's warning would read every batch again on each rerun."""
    from tokenlearner.data import DataError, load_cifar10

    try:  # the pages show test images and a run's few fixed training images: the rest stays on disk
        return load_cifar10(directory, train_images=False)
    except DataError as error:
        return str(error)


def cifar10(directory: str):
    """The CIFAR-10 folder `directory`, read once for each version of its files (a
    `DataError` names a damaged batch). Shared between sessions: never change it."""
    from tokenlearner.data import META, TEST_BATCH, TRAIN_BATCHES, DataError

    folder = Path(directory)
    versions = tuple((name, path.stat().st_size, path.stat().st_mtime)
                     for name in (*TRAIN_BATCHES, TEST_BATCH, META) if (path := folder / name).is_file())
    data = _read_cifar10(str(folder), versions)
    if isinstance(data, str):
        raise DataError(data)
    return data


def load_test_set(directory: str):
    """(images, labels, class names) of the test batch in `directory`."""
    data = cifar10(directory)
    return data.test_images, data.test_labels, data.class_names


@st.cache_data(max_entries=4, show_spinner="Classifying the test images...")
def test_predictions(model_path: str, modified: float, directory: str):
    """The model's class for each test image, of the first `Limits.max_eval_images` in a demo."""
    from tokenlearner.model import predict_with_maps

    images, _, _ = load_test_set(directory)
    probabilities, _ = predict_with_maps(load_run_model(model_path, modified),
                                         images[: Limits.current().max_eval_images or None])
    return probabilities.argmax(axis=1)


def chosen_data_dir() -> str | None:
    """The CIFAR-10 folder this session chose, where the instance lets visitors choose one."""
    return st.session_state.get("data_dir") if Limits.current().allow_data_folder_choice else None


def find_cifar10() -> tuple[str | None, str | None]:
    """(the CIFAR-10 folder, None) once every batch in it reads (explicit setting,
    $TOKENLEARNER_DATA_DIR or the Keras cache), else (None, why not)."""
    from tokenlearner.data import DataError, find_data_dir

    try:
        directory = str(find_data_dir(chosen_data_dir()))
        cifar10(directory)  # the pages then read it from the cache
        return directory, None
    except DataError as error:
        return None, str(error)


def data_directory(key: str) -> str | None:
    """`find_cifar10`'s folder; where none is found or a batch is damaged, say so, offer a
    folder field and the download, and return None."""
    directory, problem = find_cifar10()
    if directory is not None:
        return directory
    if not Limits.current().allow_data_folder_choice:  # a demo's visitor learns nothing of the server's folders
        st.info("CIFAR-10 is not available on this instance just now; your own images still work.")
        return None
    st.warning(problem)
    typed = st.text_input("CIFAR-10 folder (cifar-10-batches-py)", key=f"{key}_data_dir_input")
    if typed and st.button("Use this folder", key=f"{key}_data_dir_use"):
        st.session_state["data_dir"] = typed
        st.rerun()
    _download_controls(key)
    return None


def _download_controls(key: str) -> None:
    """A button that downloads CIFAR-10 through the engine (in its own process, one for the
    machine), and the download's progress while one runs, whoever started it."""
    from tokenlearner.data import download_running
    from tokenlearner.jobs import JobError, start_download

    if download_running() or "data_download" in st.session_state:
        _download_progress()
        return
    if st.button("Download CIFAR-10 (170 MB) into the Keras cache", key=f"{key}_data_download"):
        try:
            start_download()
        except JobError as error:
            st.error(str(error))
            return
        st.session_state["data_download"] = True
        st.rerun()


@st.fragment(run_every=1.0)
def _download_progress() -> None:
    from tokenlearner.data import DOWNLOAD_BYTES, download_archive, download_log, download_running

    if download_running():
        archive = download_archive()
        done = archive.stat().st_size / DOWNLOAD_BYTES if archive.exists() else 0.0
        st.progress(min(done, 1.0), text=f"downloading CIFAR-10: {100 * done:.0f}% (then unpacking)")
        return
    st.session_state.pop("data_download", None)
    log = download_log()
    output = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    if output and output[-1].startswith("CIFAR-10 is in"):
        st.rerun()
    st.error(as_text(output[-1] if output else "the download ended without saying why"))


@st.cache_data(max_entries=8)
def training_images(directory: str, indices: tuple[int, ...], labels: tuple[int, ...]):
    """The fixed images a run's maps are of, or None when the folder is not the CIFAR-10
    copy the run was trained on (see `gallery.is_training_copy`)."""
    from tokenlearner.data import read_train_images
    from tokenlearner.gallery import is_training_copy

    if not is_training_copy(cifar10(directory).train_labels, list(indices), list(labels)):
        return None
    return read_train_images(directory, list(indices))


def run_fixed_images(run, directory: str | None):
    """The fixed validation images of `run` (a RunDirectory), whose maps it records each
    epoch: from the CIFAR-10 folder `directory`, or drawn again for a run on moving shapes
    (clips, or first frames); None where they cannot be had."""
    chosen = run.map_images()
    if "val_clip_indices" in chosen:
        try:
            return drawn_clips(run.record()["data"], "val", tuple(chosen["val_clip_indices"]))[0]
        except ValueError:  # the CIFAR-10 folder the clips were drawn on is gone or damaged (a DataError)
            return None
    if directory is None:
        return None
    return training_images(directory, tuple(chosen["train_batch_indices"]), tuple(chosen["labels"]))
