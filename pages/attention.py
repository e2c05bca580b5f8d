import io
import time

import streamlit as st

from tokenlearner.charts import top5_figure
from tokenlearner.gallery import PICKS, pick_images, showcase
from tokenlearner.images import ImageError, read_image, to_model_input
from tokenlearner.overlay import COLORMAPS, dominant_token_image, enlarge, overlay_grid, stack_rows
from tokenlearner.runs import RunError, find_runs
from tokenlearner.ui import (as_text, data_directory, find_cifar10, linked_run, load_run_model, load_test_set,
                             main_picture, page_setup, run_fixed_images, test_predictions)

page_setup()
st.title("Attention")
runs, problems = find_runs()
clips = {run.name for run in runs if run.on_clips}
if clips:
    st.caption("Models trained on clips of moving shapes are left out here; video models are on the Video page.")
runs = [run for run in runs if run.has_model and run.name not in clips]
for problem in problems:
    st.warning(problem)
if not runs:
    st.info("No trained model yet: train one on the Train page (or with `python -m tokenlearner train`).")
    st.stop()

# Links name the models (?run=checkpoints/v1-8-tokens&compare=checkpoints/v11-8-tokens): only listed runs are taken.
# else the most accurate model with maps, as on Home
default = linked_run(runs, "run", "showing the best one") or showcase(runs)
sidebar = st.sidebar
choice = sidebar.selectbox("model", runs, index=runs.index(default) if default else 0,
                           format_func=lambda run: f"{run.name} ({run.state})", key="attention_run")
others = [None] + [run for run in runs if run is not choice]
linked_other = linked_run(others[1:], "compare", "showing one model")
other = sidebar.selectbox("side by side with", others, index=others.index(linked_other) if linked_other else 0,
                          format_func=lambda run: "no other model" if run is None else f"{run.name} ({run.state})",
                          key="attention_compare")
st.query_params["run"] = choice.name
if other is None:
    st.query_params.pop("compare", None)
else:
    st.query_params["compare"] = other.name
shown_runs = [choice] if other is None else [choice, other]
models = []
for run in shown_runs:
    try:
        models.append(load_run_model(str(run.directory.model_file), run.directory.model_file.stat().st_mtime))
    except RunError as error:
        st.error(f"{error}. Choose another model, or train this one again.")
        st.stop()

directory, _ = find_cifar10()
source = sidebar.radio("images", ["CIFAR-10 test images", "my own image"], index=0 if directory else 1,
                       key="attention_source")
if directory is None:
    with sidebar:
        data_directory("attention")  # why not, a folder field and the download
images, captions, labels = None, [], None
class_names = choice.directory.class_names()
if source == "my own image":
    upload_column, preview_column = st.columns([4, 1])
    upload = upload_column.file_uploader("a PNG or JPEG (centre-cropped and resized to 32x32)",
                                         type=["png", "jpg", "jpeg"], key="attention_upload")
    if upload is not None:
        try:
            original = read_image(upload.getvalue())
        except ImageError as error:
            st.error(str(error))
        else:
            preview_column.image(original, caption="your image", width=110)
            images, captions = to_model_input(original)[None], [as_text(upload.name)]
elif directory is None:
    st.info("No CIFAR-10 test images here (the sidebar says why); your own image works.")
else:
    test_images, test_labels, names = load_test_set(directory)
    how = sidebar.radio("pick", PICKS, horizontal=True, key="attention_pick")
    count = sidebar.slider("how many", 1, 8, 4, key="attention_count")
    class_index = 0
    if how == "by class":
        class_index = sidebar.selectbox("class", range(len(names)), format_func=lambda i: names[i],
                                        key="attention_class")
    seed = sidebar.number_input("draw", 0, 10_000, 0, key="attention_seed")
    predicted = test_predictions(str(choice.directory.model_file), choice.directory.model_file.stat().st_mtime,
                                 directory) if how == "misclassified" else None
    pickable = test_labels if predicted is None else test_labels[: len(predicted)]  # a demo classifies fewer
    picked = pick_images(pickable, how, count, seed, class_index, predicted)
    if len(picked) == 0:
        st.info("No test image matches.")
    else:
        images, labels = test_images[picked], test_labels[picked]
        captions = [f"test image {i}: {names[test_labels[i]]}" for i in picked]

sidebar.divider()
opacity = sidebar.slider("map opacity", 0.0, 1.0, 0.55, key="attention_opacity")
colormap = sidebar.selectbox("colour map", list(COLORMAPS), key="attention_colormap")
learners = [run.config.layer_names("token_learner") for run in shown_runs]
most_tokens = max((run.config.num_tokens for run, names in zip(shown_runs, learners) if names), default=0)
highlight = sidebar.selectbox("highlight one token in the dominant-token view", [None, *range(most_tokens)],
                              format_func=lambda token: "every token" if token is None else f"token {token + 1}",
                              key="attention_token") if most_tokens else None
fusers = any(run.config.layer_names("token_fuser") for run in shown_runs)
show_gates = fusers and sidebar.checkbox("show TokenFuser gate maps too", key="attention_gates")
if all(run.config.tokenlearner == "none" for run in shown_runs):
    st.info("This model has no TokenLearner, so it has no token maps; its predictions are shown below.")

if images is not None:
    from tokenlearner.model import predict_with_maps

    outputs = [predict_with_maps(model, images) for model in models]
    sheets = []
    for index, caption in enumerate(captions):
        with main_picture() if index == 0 else st.container():
            if other is not None:
                st.markdown(f"**{caption}**")
            for column, run, (probabilities, maps) in zip(st.columns(len(shown_runs)), shown_runs, outputs,
                                                          strict=True):
                config, top = run.config, int(probabilities[index].argmax())
                verdict = "" if labels is None else (" ✓" if top == labels[index] else " ✗")
                column.markdown(("" if other is not None else f"**{caption}** · ") + f"{as_text(run.name)}: "
                                f"**{class_names[top]}** ({100 * probabilities[index][top]:.0f}%){verdict}")
                gates = config.layer_names("token_fuser")
                named_rows = {name: overlay_grid(images[index], layer[index], config.covered_region(),
                                                 opacity=opacity, colormap=colormap)
                              for name, layer in maps.items() if show_gates or name not in gates}
                for name, row in named_rows.items():  # named where TokenFuser's gates are shown too
                    column.image(row, caption=name if len(named_rows) > 1 else None, width="stretch")
                rows = list(named_rows.values())
                bars, dominant = column.columns([3, 2] if other else [3, 1]) if rows else (column, None)
                bars.plotly_chart(top5_figure(probabilities[index], class_names),
                                  key=f"attention_top5_{run.name}_{index}")
                if rows:
                    first = maps[config.layer_names("token_learner")[0]][index]
                    token = highlight if highlight is not None and highlight < len(first) else None
                    dominant.image(dominant_token_image(images[index], first, config.covered_region(),
                                                        highlight=token),
                                   caption="patches by their strongest token", width=170)
                    sheets += rows
                else:
                    column.image(enlarge(images[index]), caption="the image the model was given", width=160)
    st.caption("Each row: the image as the model sees it (32x32), then each token's map over the region its "
               "patches cover (bright: pooled into that token).")
    if sheets:
        buffer = io.BytesIO()
        stack_rows(sheets).save(buffer, format="PNG")
        st.download_button("Download the maps (PNG)", buffer.getvalue(), "token-maps.png", "image/png")

config = choice.config
epochs = choice.directory.map_epochs()
if len(epochs) > 1 and config.tokenlearner != "none":  # without TokenLearner the epochs hold no maps
    st.subheader("How the maps formed during training")
    epoch = st.select_slider("after epoch", epochs, value=epochs[-1], key="attention_epoch")
    play = st.button("Play from epoch 0", key="attention_play")
    originals = run_fixed_images(choice.directory, directory) if directory is not None else None
    if directory is None:
        st.info("The maps are of a few CIFAR-10 training images: with CIFAR-10 here (see the sidebar) they show.")
    elif originals is None:
        st.warning("This run's fixed images are not in the CIFAR-10 folder found now: it was trained on "
                   "another copy. Point the data folder at that copy to see how its maps formed.")
    if originals is not None:
        frame = st.empty()
        shown_indices = choice.directory.map_images()["train_batch_indices"][: min(4, len(originals))]

        def draw(shown_epoch: int) -> None:
            _, epoch_maps = choice.directory.maps(shown_epoch)
            if not epoch_maps:
                return
            first = epoch_maps[config.layer_names("token_learner")[0]]
            rows = [overlay_grid(originals[position], first[position], config.covered_region(), opacity=opacity,
                                 colormap=colormap) for position in range(min(4, len(originals)))]
            frame.image(stack_rows(rows), caption=f"fixed validation images {shown_indices}, after epoch {shown_epoch}",
                        width="stretch")

        for shown_epoch in (epochs if play else [epoch]):
            draw(shown_epoch)
            if play:
                time.sleep(0.4)
