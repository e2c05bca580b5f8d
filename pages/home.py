import streamlit as st

from tokenlearner.data import DataError, find_data_dir
from tokenlearner.flops import count
from tokenlearner.gallery import showcase
from tokenlearner.overlay import overlay_grid
from tokenlearner.presets import PRESETS, PUBLISHED
from tokenlearner.runs import find_runs
from tokenlearner.ui import chosen_data_dir, run_fixed_images

st.title("TokenLearner Explorer")
st.markdown(
    """
A Vision Transformer attends over every patch of the image, and attention's cost grows
with the square of the number of patches. **TokenLearner** (Ryoo et al., NeurIPS 2021)
learns a few spatial maps from the patches, and each map pools the whole image into one
token: the blocks after it attend over, say, 4 learned tokens instead of 64 patches.

This explorer rebuilds the mini ViT of the keras.io example "Learning to tokenize in
Vision Transformers" (Gosthipaty & Paul) on CIFAR-10, and lets you change where
TokenLearner sits, how many tokens it learns and how deep the network is.
"""
)
runs, problems = find_runs()
shown = showcase(runs)
if shown is not None:
    epoch = shown.summary["best_epoch"]
    _, maps = shown.directory.maps(epoch)
    try:
        images = run_fixed_images(shown.directory, str(find_data_dir(chosen_data_dir())))
    except DataError:
        images = None
    caption = (f"What the {shown.config.num_tokens} tokens of {shown.name} "
               f"({100 * shown.summary['test_top1']:.1f}% test top-1) pool: ")
    if images is not None:
        learned = maps[shown.config.layer_names("token_learner")[0]]
        st.image(overlay_grid(images[0], learned[0], shown.config.covered_region(), scale=4), width="stretch")
        st.caption(caption + "a validation image, then each token's map over it (bright: pooled into that "
                   "token). The Attention page does this for any image.")
    elif (shown.directory.path / "maps.png").is_file():
        st.image(str(shown.directory.path / "maps.png"))
        st.caption(caption + "each row is one test image, each tile one token's map over the 8x8 patches. "
                   "With CIFAR-10 on this machine they are drawn over the images.")
st.subheader("The keras.io configurations")
rows = []
for name, config in PRESETS.items():
    report, published = count(config), PUBLISHED[name]
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
    st.dataframe([
        {
            "run": run.name,
            "TokenLearner": run.config.tokenlearner,
            "tokens": run.config.num_tokens if run.config.tokenlearner != "none" else None,
            "depth": run.config.depth,
            "test top-1 (%)": round(100 * run.summary["test_top1"], 2),
            "test top-5 (%)": round(100 * run.summary["test_top5"], 2),
            "test images": run.summary.get("test_images"),
            "params": run.summary["params"],
            "MACs (M)": round(run.summary["macs"] / 1e6, 2),
            "keras.io GFLOPs": round(run.summary["keras_io_gflops"], 5),
        }
        for run in finished
    ], hide_index=True)
