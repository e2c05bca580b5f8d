import streamlit as st

from tokenlearner.charts import macs_breakdown_figure, macs_per_layer_figure, macs_sweep_figure
from tokenlearner.flops import count
from tokenlearner.ui import main_picture, model_controls, page_setup, preset_picker

page_setup()
st.title("FLOPs")
st.caption("Exact, analytic counts per image at inference: nothing is trained or loaded here.")
with st.sidebar:
    compared = st.radio("configurations to compare", [1, 2, 3], horizontal=True, key="flops_compared")
    configs = []
    for index in range(compared):
        st.subheader(f"config {index + 1}")
        configs.append(model_controls(f"flops_{index}", preset_picker(f"flops_{index}").model, linked=index == 0))
reports = {f"config {index + 1}": count(config) for index, config in enumerate(configs)}

with main_picture():
    for column, (label, report) in zip(st.columns(compared), reports.items(), strict=True):
        column.metric("MACs", f"{report.macs / 1e6:.2f} M", help=f"{label}: multiply-accumulates per image")
        column.caption(f"{label}: {report.keras_io_gflops:.5f} keras.io-convention GFLOPs, "
                       f"{report.params:,} parameters")
    st.plotly_chart(macs_per_layer_figure(reports), key="flops_per_layer")

st.subheader("Where the work is")
st.plotly_chart(macs_breakdown_figure(reports), key="flops_breakdown")

st.subheader("How config 1's cost moves")
left, right = st.columns(2)
left.plotly_chart(macs_sweep_figure(configs[0], "num_tokens"), key="flops_sweep_tokens")
right.plotly_chart(macs_sweep_figure(configs[0], "placement"), key="flops_sweep_placement")
with st.expander("config 1, layer by layer"):
    st.dataframe([
        {"layer": row.name, "category": row.category, "MACs": row.macs, "keras.io float ops": row.keras_io_flops}
        for row in reports["config 1"].layers
    ], hide_index=True)
