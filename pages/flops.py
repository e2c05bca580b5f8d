import streamlit as st

from tokenlearner.charts import macs_breakdown_figure, macs_sweep_figure
from tokenlearner.flops import count
from tokenlearner.ui import model_controls, preset_picker

st.title("FLOPs")
st.caption("Exact, analytic counts per image at inference: nothing is trained or loaded here.")
compared = st.radio("configurations to compare", [1, 2, 3], horizontal=True, key="flops_compared")
reports = {}
for index, column in enumerate(st.columns(compared)):
    with column:
        config = model_controls(f"flops_{index}", preset_picker(f"flops_{index}").model, linked=index == 0)
        report = reports[f"config {index + 1}"] = count(config)
        st.metric("MACs", f"{report.macs / 1e6:.2f} M")
        st.metric("keras.io-convention GFLOPs", f"{report.keras_io_gflops:.5f}")
        st.metric("parameters", f"{report.params:,}")
        if index == 0:
            first = config

st.subheader("Where the work is")
st.plotly_chart(macs_breakdown_figure(reports))

st.subheader("How config 1's cost moves")
left, right = st.columns(2)
with left:
    st.plotly_chart(macs_sweep_figure(first, "num_tokens"))
with right:
    st.plotly_chart(macs_sweep_figure(first, "placement"))
with st.expander("config 1, layer by layer"):
    st.dataframe([
        {"layer": row.name, "category": row.category, "MACs": row.macs, "keras.io float ops": row.keras_io_flops}
        for row in reports["config 1"].layers
    ], hide_index=True)
