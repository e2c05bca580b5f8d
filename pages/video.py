import time

import streamlit as st

from tokenlearner.charts import top5_figure
from tokenlearner.flops import count, without_tokenlearner
from tokenlearner.images import ImageError, read_clip
from tokenlearner.overlay import COLORMAPS, clip_sheet, dominant_token_image, enlarge, overlay_grid
from tokenlearner.runs import RunError, find_runs
from tokenlearner.ui import as_text, drawn_clips, load_run_model, main_picture, page_setup, run_fixed_images

TRAIN_COMMAND = ("python -m tokenlearner train --out runs/video --data moving-shapes --clips 6000,1000,1000 "
                 "--preset video-shapes --epochs 8 --batch-size 64 --learning-rate 3e-4 --warmup-epochs 1 "
                 "--schedule cosine")

page_setup()
st.title("Video")
runs, problems = find_runs()
for problem in problems:
    st.warning(problem)
videos = [run for run in runs if run.config.is_video and run.has_model]
if not videos:
    st.info("No video model yet. Train one on drawn clips of moving shapes: on the Train page, or with this "
            "command (docs/video.md):")
    st.code(TRAIN_COMMAND, language="bash")
    st.stop()

sidebar = st.sidebar
choice = sidebar.selectbox("model", videos, format_func=lambda run: f"{run.name} ({run.state})", key="video_run")
config, record = choice.config, choice.directory.record().get("data", {})
learners = config.layer_names("token_learner")
try:
    model = load_run_model(str(choice.directory.model_file), choice.directory.model_file.stat().st_mtime)
except RunError as error:
    st.error(f"{error}. Choose another model, or train this one again.")
    st.stop()
class_names = choice.directory.class_names()

drawn = record.get("kind") == "moving_shapes"
sources = (["its test clips"] if drawn else []) + ["my own GIF"]
source = sidebar.radio("clip", sources, key="video_source")
clip, label = None, None
if source == "my own GIF":
    upload = st.file_uploader(f"an animated GIF ({config.frames} frames are taken, evenly spaced)", type=["gif"],
                              key="video_upload")
    if upload is not None:
        try:
            clip = read_clip(upload.getvalue(), config.frames, config.input_size)
        except ImageError as error:
            st.error(str(error))
else:
    index = sidebar.number_input("test clip", 0, record["test_clips"] - 1, 0, key="video_clip")
    try:
        clips, labels = drawn_clips(record, "test", (int(index),))
        clip, label = clips[0], int(labels[0])
    except ValueError as error:  # a CIFAR-10 folder the run drew on that is gone (a DataError)
        st.error(str(error))

sidebar.divider()
opacity = sidebar.slider("map opacity", 0.0, 1.0, 0.55, key="video_opacity")
colormap = sidebar.selectbox("colour map", list(COLORMAPS), key="video_colormap")

if clip is not None:
    from tokenlearner.model import predict_with_maps

    probabilities, maps = predict_with_maps(model, clip[None])
    top = int(probabilities[0].argmax())
    verdict = "" if label is None else (" ✓" if top == label else f" ✗ ({class_names[label]})")
    with main_picture():
        st.markdown(f"{as_text(choice.name)}: **{class_names[top]}** ({100 * probabilities[0][top]:.0f}%){verdict}")
        frame = st.slider("frame", 1, config.frames, 1, key="video_frame")
        play = st.button("Play the clip", key="video_play")
        picture = st.empty()

        def draw(shown: int) -> None:
            image = clip[shown - 1]
            if not learners:
                picture.image(enlarge(image), caption=f"frame {shown} of {config.frames}", width=260)
                return
            slice_maps = maps[learners[0]][0][(shown - 1) // config.tubelet_frames]  # (S, h, w)
            row, dominant = picture.container().columns([5, 1])
            row.image(overlay_grid(image, slice_maps, config.covered_region(), opacity=opacity, colormap=colormap),
                      caption=f"frame {shown} of {config.frames}, then each of its {config.num_tokens} tokens' "
                              "maps (bright: pooled into that token)", width="stretch")
            dominant.image(dominant_token_image(image, slice_maps, config.covered_region()),
                           caption="patches by their strongest token", width=170)

        for shown in (range(1, config.frames + 1) if play else [frame]):
            draw(shown)
            if play:
                time.sleep(0.35)
    if not learners:
        st.info("This model has no TokenLearner, so it has no token maps.")
    elif config.tubelet_frames > 1:
        st.caption(f"Each patch spans {config.tubelet_frames} frames (a tubelet): frames "
                   f"{config.tubelet_frames} at a time share their tokens' maps.")
    st.plotly_chart(top5_figure(probabilities[0], class_names), key="video_top5")

epochs = choice.directory.map_epochs()
fixed = run_fixed_images(choice.directory, None) if len(epochs) > 1 and learners else None
if fixed is not None:  # the run's fixed validation clips, drawn again
    st.subheader("How the maps formed during training")
    epoch = st.select_slider("after epoch", epochs, value=epochs[-1], key="video_epoch")
    play_epochs = st.button("Play from epoch 0", key="video_play_epochs")
    sheet = st.empty()
    for shown_epoch in (epochs if play_epochs else [epoch]):
        epoch_maps = choice.directory.maps(shown_epoch)[1][learners[0]]
        sheet.image(clip_sheet(fixed[0], epoch_maps[0], config.tubelet_frames, config.covered_region()),
                    caption=f"a fixed validation clip after epoch {shown_epoch}: a row per "
                            f"{config.tubelet_frames}-frame slice, its first frame, each token's map and the "
                            "dominant-token view", width="stretch")
        if play_epochs:
            time.sleep(0.4)

st.subheader("What learning tokens per frame saves")
learned, every_patch = count(config), count(without_tokenlearner(config))
patches = config.temporal_slices * config.num_patches
rows = [{"model": "this model" + (f": TokenLearner, {config.num_tokens} tokens per frame"
                                  if config.tokenlearner != "none" else ""),
         "tokens each block attends over": ", ".join(map(str, config.tokens_per_block())),
         "MACs per clip (M)": round(learned.macs / 1e6, 1)}]
if config.tokenlearner != "none":
    rows.append({"model": f"the same without TokenLearner: every block over all {patches} patches",
                 "tokens each block attends over": ", ".join(map(str, without_tokenlearner(config).tokens_per_block())),
                 "MACs per clip (M)": round(every_patch.macs / 1e6, 1)})
st.dataframe(rows, hide_index=True)
if config.tokenlearner != "none":
    st.caption(f"Per-frame TokenLearner needs {learned.macs / every_patch.macs:.0%} of the MACs of attending over "
               f"every patch of all {config.frames} frames.")
