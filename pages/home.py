import streamlit as st

from tokenlearner.compare import for_display
from tokenlearner.flops import count
from tokenlearner.gallery import showcase
from tokenlearner.overlay import overlay_grid
from tokenlearner.presets import PRESETS, PUBLISHED
from tokenlearner.runs import find_runs
from tokenlearner.ui import drawing_maps, find_cifar10, main_picture, page_setup, run_fixed_images

page_setup()

st.title("TokenLearner Explorer")
st.markdown(
    "A Vision Transformer attends over every patch of an image, at a cost that grows with the square of "
    "the number of patches. **TokenLearner** (Ryoo et al., NeurIPS 2021) learns a few spatial maps instead, "
    "and each map pools the whole image into one token: the blocks after it attend over, say, 8 learned "
    "tokens instead of 64 patches."
)
runs, problems = find_runs()
shown = showcase(runs)
if shown is not None:
    with main_picture():
        config, epoch = shown.config, shown.summary["best_epoch"]
        first = config.layer_names("token_learner")[0]
        directory, _ = find_cifar10()
        images = run_fixed_images(shown.directory, directory) if directory else None
        caption = (f"What the {config.num_tokens} tokens of {shown.name} "
                   f"({100 * shown.summary['test_top1']:.1f}% test top-1) pool: ")
        if images is not None:
            image, learned = images[0], shown.directory.maps(epoch)[1][first][0]
            caption += "a validation image, then each token's map over it (bright: pooled into that token)."
        else:  # no CIFAR-10 here, or another copy than the one it was trained on: a drawing, never bare maps
            model_file = shown.directory.model_file
            image, maps = drawing_maps(str(model_file), model_file.stat().st_mtime)
            learned = maps[first]
            caption += ("a drawing made for this page (no CIFAR-10 image to show here), then each token's map "
                        "over it (bright: pooled into that token).")
        st.image(overlay_grid(image, learned, config.covered_region(), scale=4), width="stretch")
        st.caption(caption + " The Attention page does this for any image, yours included.")
st.markdown(
    """
This explorer rebuilds the mini ViT of the keras.io example "Learning to tokenize in Vision Transformers"
(Gosthipaty & Paul) on CIFAR-10. **Train** changes where TokenLearner sits, how many tokens it learns and how
deep the network is; **Attention** shows what any model's tokens look at, two models side by side;
**Compare** sets runs against their cost; **FLOPs** counts the work layer by layer.
"""
)
st.subheader("The keras.io configurations")
rows = []
for name, published in PUBLISHED.items():
    report = count(PRESETS[name])
    rows.append(
        {
            "configuration": published.description,
            "published top-1 (%)": published.top1,
            "params": report.params,
            "MACs (M)": round(report.macs / 1e6, 2),
            "keras.io GFLOPs (ours)": round(report.keras_io_gflops, 5),
            "published GFLOPs": published.gflops,
        }
    )
st.dataframe(rows, hide_index=True)
st.caption(
    "The published GFLOPs leave out everything inside MultiHeadAttention (about 82% of the "
    "multiply-accumulates); the FLOPs page shows the full count layer by layer."
)

st.subheader("Model zoo")
for problem in problems:
    st.warning(problem)
finished = [run for run in runs if run.summary and run.summary.get("test_top1") is not None]
if not finished:
    st.info("No finished run yet: the Train page trains one in a few minutes.")
else:
    zoo = []
    for run in finished:
        cost = count(run.config)
        zoo.append({
            "run": run.name,
            "input": f"{run.config.frames}-frame clips" if run.config.is_video else "images",
            "TokenLearner": run.config.tokenlearner,
            "tokens": run.config.num_tokens if run.config.tokenlearner != "none" else None,
            "depth": run.config.depth,
            "test top-1 (%)": round(100 * run.summary["test_top1"], 2),
            "test top-5 (%)": round(100 * run.summary["test_top5"], 2),
            "test images": run.summary.get("test_images"),
            "params": cost.params,
            "MACs (M)": round(cost.macs / 1e6, 2),
            "keras.io GFLOPs": round(cost.keras_io_gflops, 5),
        })
    st.dataframe(for_display(zoo), hide_index=True)
