import streamlit as st

from tokenlearner.flops import count
from tokenlearner.presets import PRESETS, PUBLISHED
from tokenlearner.runs import find_runs

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
runs, problems = find_runs()
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
