import time

import streamlit as st

from tokenlearner.charts import model_diagram_figure, training_curves_figure
from tokenlearner.flops import count
from tokenlearner.jobs import (JobError, active_job, job_log, last_job, may_stop, recipe_beyond_controls,
                               recipe_from_controls, start_job, stop_job)
from tokenlearner.limits import Limits
from tokenlearner.datasets import DEFAULT_CLIPS, DataChoice
from tokenlearner.moving_shapes import MAX_CLIPS
from tokenlearner.overlay import clip_sheet, overlay_grid
from tokenlearner.runs import runs_root
from tokenlearner.ui import (as_text, clip_controls, data_directory, find_cifar10, forget_controls, main_picture,
                             model_controls, page_setup, preset_picker, run_fixed_images, starting_at)

page_setup()
st.title("Train")
root = runs_root()
STARTING = "Starting: loading TensorFlow and the data, then compiling the training step..."
DATA = {"cifar10": "CIFAR-10 images", "moving-shapes": "clips of moving shapes (video)"}


def live_job():
    """Progress, curves and the latest token maps of the current (or last) job."""
    running = active_job(root)
    run = running or last_job(root)
    if run is None:
        return
    if not run.path.exists():
        log = job_log(run)  # a deleted run takes its log along; a job that failed early leaves only its log
        if running is None and log:
            st.error(f"{as_text(run.path.name)} ended before it began training:")
            st.code(log[-600:], language=None)
        elif running is not None:
            st.info(STARTING)
        return
    status = run.status()
    state = status.get("state", "starting")
    st.subheader(f"{as_text(run.path.name)}: {state}")
    progress = run.progress()
    if state == "running" and progress:
        steps_done = (progress["epoch"] - 1) * progress["steps"] + progress["step"]
        done = steps_done / (progress["epochs"] * progress["steps"])
        st.progress(min(done, 1.0), text=f"epoch {progress['epoch']}/{progress['epochs']}, step {progress['step']}/"
                    f"{progress['steps']}, {progress['images_per_s']:.0f} images/s, ETA {progress['eta_s']:.0f} s")
        owner = st.session_state.get("train_job_owner")
        if may_stop(root, owner) and st.button("Stop", key="train_stop"):
            try:
                stop_job(root, owner)
            except JobError as error:
                st.error(str(error))
    elif state == "unknown" and running is not None:
        st.info(STARTING)
    elif state == "failed":
        st.error(as_text(status.get("error", "the job failed")))
        st.code(job_log(run)[-600:], language=None)
    elif state in ("finished", "stopped"):
        summary = run.summary() or {}
        if summary.get("test_top1") is not None:
            st.success(f"Finished: test top-1 {100 * summary['test_top1']:.1f}%, top-5 "
                       f"{100 * summary['test_top5']:.1f}%. It is on the Attention page now.")
        elif summary.get("best_epoch"):
            st.info(f"Stopped: the weights of epoch {summary['best_epoch']}, the best so far, are saved; the "
                    "Attention page shows them.")
        else:
            st.info("Stopped before the first epoch was evaluated: no weights were saved.")
    epochs = run.epochs()
    if epochs:
        columns = st.columns(3)
        for column, metric in zip(columns, ("loss", "top1", "top5"), strict=True):
            column.plotly_chart(training_curves_figure(epochs, metric), key=f"train_curve_{metric}")
    map_epochs = run.map_epochs()
    if map_epochs:
        _, maps = run.maps(map_epochs[-1])
        originals = run_fixed_images(run, data_dir)
        if maps and originals is not None:
            config = run.model_config()
            first = maps[config.layer_names("token_learner")[0]]
            if config.is_video:  # one clip, a row per temporal slice
                st.caption(f"token maps of a fixed validation clip after epoch {map_epochs[-1]}, a row per "
                           f"{config.tubelet_frames}-frame slice over its first frame")
                st.image(clip_sheet(originals[0], first[0], config.tubelet_frames, config.covered_region()),
                         width="stretch")
            else:
                st.caption(f"token maps of fixed validation images after epoch {map_epochs[-1]}")
                for position in range(min(3, len(first))):
                    st.image(overlay_grid(originals[position], first[position], config.covered_region(), scale=4),
                             width="stretch")


data_dir, _ = find_cifar10()
with st.sidebar:
    data_name = st.radio("train on", list(DATA), format_func=DATA.get, key="train_data", on_change=forget_controls,
                         args=("train", ("train_data", "train_name")))
    on_clips = data_name != "cifar10"
    preset = preset_picker("train", on_clips)
    config = model_controls("train", preset.model, linked=True)
    if on_clips:
        config = clip_controls("train", config)
    st.divider()
    limits, base = Limits.current(), preset.recipe
    epochs = st.slider("epochs", 1, limits.max_epochs,
                       key=starting_at("train_epochs", min(base.epochs, limits.max_epochs)))
    batch_size = st.select_slider("batch size", [32, 64, 128, 256, 512], key=starting_at("train_batch",
                                                                                         base.batch_size))
    learning_rate = st.select_slider("learning rate", [1e-4, 3e-4, 1e-3, 3e-3],
                                     key=starting_at("train_lr", base.learning_rate))
    seed = st.number_input("seed", 0, 1_000_000, key=starting_at("train_seed", base.seed))
    data, limit = DataChoice(), base.limit
    if on_clips:  # every clip is drawn from the seed, so the clips' count is the control, not a limit on them
        most = limits.max_train_images // config.frames if limits.max_train_images else MAX_CLIPS
        clips_key = starting_at("train_clips", min(DEFAULT_CLIPS[0], most))
        st.session_state[clips_key] = min(st.session_state[clips_key], most)  # fewer fit once the frames go up
        clips = st.number_input("training clips", 10, most, step=10, key=clips_key)
        data, limit = DataChoice(data_name, (int(clips), *DEFAULT_CLIPS[1:])), 0
        if limits.max_train_images:
            st.caption(f"This public demo trains at most {limits.max_epochs} epochs on {limits.max_train_images:,} "
                       f"images, a clip of {config.frames} frames counting as {config.frames}, and validates and "
                       f"tests on {max(1, limits.max_eval_images // config.frames):,} clips.")
    elif limits.max_train_images:
        limit = st.number_input("training images", 100, limits.max_train_images, step=100,
                                key=starting_at("train_limit", limits.max_train_images))
        st.caption(f"This public demo trains at most {limits.max_epochs} epochs on {limits.max_train_images:,} "
                   f"images, and validates and tests on {limits.max_eval_images:,}.")
    else:
        limit = st.number_input("training images (0: all)", 0, 50_000, step=100,
                                key=starting_at("train_limit", base.limit))
    recipe = recipe_from_controls(base, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                  seed=int(seed), limit=int(limit))
    carried = recipe_beyond_controls(recipe)
    if carried:
        st.caption("From the preset, too: " + ", ".join(f"{name} {value}" for name, value in carried.items()))
    st.session_state.setdefault("train_name", time.strftime("run-%Y%m%d-%H%M%S"))
    name = st.text_input("run name", key="train_name")
    needs_cifar = data.name != "moving-shapes"
    start = st.button("Start training", type="primary", disabled=needs_cifar and data_dir is None, key="train_start")
    if needs_cifar and data_dir is None:
        data_directory("train")  # training needs CIFAR-10: why not, a folder field and the download

if start:
    try:
        st.session_state["train_job_owner"] = start_job(config, recipe, root, name.strip(), data_dir,
                                                        data=data).owner
    except JobError as error:
        st.error(as_text(str(error)))
    else:
        st.rerun()


@st.fragment(run_every=1.0)
def running_job():
    """`live_job`, redrawn every second while the job runs; once it has ended, the whole page
    again, which stops the refresh (an idle page keeps neither the server nor a browser busy)."""
    if active_job(root) is None:
        st.rerun()
    live_job()


running = active_job(root)
with main_picture():
    if running is not None:  # its curves and latest maps take the diagram's place
        running_job()
    else:
        st.plotly_chart(model_diagram_figure(config), key="train_diagram")
        cost = count(config)
        unit = f"clip of {config.frames} frames" if config.is_video else "image"
        st.caption(f"The model the controls describe: {cost.params:,} parameters, {cost.macs / 1e6:.2f} M MACs, "
                   f"{cost.keras_io_gflops:.5f} keras.io GFLOPs per {unit}. Change it in the sidebar; Start "
                   "trains it.")
if running is None:
    live_job()  # the last job's outcome, if any
