import io
import time

import streamlit as st

from tokenlearner.charts import top5_figure
from tokenlearner.gallery import pick_images, showcase
from tokenlearner.images import ImageError, read_image, to_model_input
from tokenlearner.overlay import COLORMAPS, dominant_token_image, enlarge, overlay_grid, stack_rows
from tokenlearner.runs import RunError, find_runs
from tokenlearner.ui import as_text, data_directory, load_run_model, load_test_set, run_fixed_images, test_predictions

st.title("Attention")
runs, problems = find_runs()
runs = [run for run in runs if run.has_model]
for problem in problems:
    st.warning(problem)
if not runs:
    st.info("No trained model yet: train one on the Train page (or with `python -m tokenlearner train`).")
    st.stop()

# A link may name the model (?run=checkpoints/v1-8-tokens): only a run in the list is taken.
linked = next((run for run in runs if run.name == st.query_params.get("run")), None)
if "run" in st.query_params and linked is None:
    st.warning(f"The link names no model here ({as_text(st.query_params['run'][:100])}); showing the best one.")
default = linked or showcase(runs)  # else the most accurate model with token maps, as on the home page
choice = st.selectbox("model", runs, index=runs.index(default) if default else 0,
                      format_func=lambda run: f"{run.name} ({run.state})", key="attention_run")
st.query_params["run"] = choice.name
config = choice.config
if config.tokenlearner == "none":
    st.info("This model has no TokenLearner, so it has no token maps; its predictions are shown below.")
model_path = str(choice.directory.model_file)
try:
    model = load_run_model(model_path, choice.directory.model_file.stat().st_mtime)
except RunError as error:
    st.error(f"{error}. Choose another model, or train this one again.")
    st.stop()

left, right = st.columns(2)
opacity = left.slider("map opacity", 0.0, 1.0, 0.55, key="attention_opacity")
colormap = right.selectbox("colour map", list(COLORMAPS), key="attention_colormap")

source = st.radio("images", ["CIFAR-10 test images", "my own image"], horizontal=True, key="attention_source")
images, captions = None, []
class_names = choice.directory.class_names()
if source == "my own image":
    upload = st.file_uploader("a PNG or JPEG (centre-cropped and resized to 32x32)", type=["png", "jpg", "jpeg"],
                              key="attention_upload")
    if upload is not None:
        try:
            original = read_image(upload.getvalue())
        except ImageError as error:
            st.error(str(error))
        else:
            images = to_model_input(original)[None]
            before, after = st.columns(2)
            before.image(original, caption="your image", width=240)
            after.image(images[0], caption="what the model sees, 32x32", width=240)
            captions = [as_text(upload.name)]
else:
    directory = data_directory("attention")
    if directory is not None:
        test_images, test_labels, names = load_test_set(directory)
        how = st.radio("pick", ["by class", "at random", "misclassified"], horizontal=True, key="attention_pick")
        columns = st.columns(3)
        count = columns[0].slider("how many", 1, 8, 4, key="attention_count")
        seed = columns[1].number_input("draw", 0, 10_000, 0, key="attention_seed")
        class_index = 0
        if how == "by class":
            class_index = columns[2].selectbox("class", range(len(names)), format_func=lambda i: names[i],
                                               key="attention_class")
        predicted = test_predictions(model_path, choice.directory.model_file.stat().st_mtime, directory) \
            if how == "misclassified" else None
        labels = test_labels if predicted is None else test_labels[: len(predicted)]  # a demo classifies fewer
        picked = pick_images(labels, how, count, seed, class_index, predicted)
        if len(picked) == 0:
            st.info("No test image matches.")
        else:
            images = test_images[picked]
            captions = [f"test image {i}: {names[test_labels[i]]}" for i in picked]

if images is not None:
    from tokenlearner.model import predict_with_maps

    probabilities, maps = predict_with_maps(model, images)
    gates = config.layer_names("token_fuser")
    show_gates = bool(gates) and st.checkbox("show TokenFuser gate maps too", key="attention_gates")
    shown = {name: value for name, value in maps.items() if show_gates or name not in gates}
    sheets = []
    for index, caption in enumerate(captions):
        st.subheader(caption)
        bars, pictures = st.columns([1, 3])
        bars.plotly_chart(top5_figure(probabilities[index], class_names), key=f"attention_top5_{index}")
        rows = [overlay_grid(images[index], layer[index], config.covered_region(), opacity=opacity,
                             colormap=colormap) for layer in shown.values()]
        for name, row in zip(shown, rows, strict=True):
            pictures.image(row, caption=f"{name}: the image, then each token's map", width="stretch")
        if shown:
            first = maps[config.layer_names("token_learner")[0]]
            pictures.image(dominant_token_image(images[index], first[index], config.covered_region()),
                           caption="each patch coloured by the token that weights it most", width=200)
            sheets += rows
        else:
            pictures.image(enlarge(images[index]), caption="the image the model was given", width=200)
    if sheets:
        buffer = io.BytesIO()
        stack_rows(sheets).save(buffer, format="PNG")
        st.download_button("Download the maps (PNG)", buffer.getvalue(), "token-maps.png", "image/png")

epochs = choice.directory.map_epochs()
if len(epochs) > 1 and config.tokenlearner != "none":  # without TokenLearner the epochs hold no maps
    st.subheader("How the maps formed during training")
    epoch = st.select_slider("after epoch", epochs, value=epochs[-1], key="attention_epoch")
    play = st.button("Play from epoch 0", key="attention_play")
    if source == "my own image":  # the test-image branch above has looked for the data already
        directory = data_directory("attention_epochs")
    originals = run_fixed_images(choice.directory, directory) if directory is not None else None
    if directory is not None and originals is None:
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
