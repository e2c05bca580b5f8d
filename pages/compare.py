import streamlit as st

from tokenlearner.charts import accuracy_cost_figure, curves_overlay_figure
from tokenlearner.compare import deletable, delete_run, epochs_csv, keras_io_table, pareto_front, runs_table, to_csv
from tokenlearner.limits import Limits
from tokenlearner.runs import PUBLISHED_GRIDS_DIR, find_grid_runs, find_runs


st.title("Compare")
runs, problems = find_runs()
for problem in problems:
    st.warning(problem)
if not runs:
    st.info("No runs yet: train one on the Train page, or with `python -m tokenlearner train`.")
    st.stop()

rows = runs_table(runs)
threshold = st.slider("only runs with test top-1 of at least (%)", 0, 100, 0, key="compare_threshold")
shown = [row for row in rows if threshold == 0 or (row["test_top1"] or 0) >= threshold]
st.dataframe(shown, hide_index=True)
left, right = st.columns(2)
left.download_button("Download this table (CSV)", to_csv(shown), "runs.csv", "text/csv")
right.download_button("Download every epoch of every run (CSV)", epochs_csv(runs), "epochs.csv", "text/csv")

st.subheader("Accuracy against cost")
log_x = st.checkbox("log-scale MACs", key="compare_log_x")
st.plotly_chart(accuracy_cost_figure(shown, pareto_front(shown), log_x), key="compare_pareto")

st.subheader("Training curves")
names = [row["run"] for row in shown]
chosen = st.multiselect("runs", names, default=names[:3], key="compare_runs")
metric = st.radio("metric", ["top1", "top5", "loss"], horizontal=True, key="compare_metric")
log_y = st.checkbox("log-scale axis", key="compare_log_y")
by_name = {run.name: run for run in runs}
st.plotly_chart(curves_overlay_figure({name: by_name[name].directory.epochs() for name in chosen}, metric, log_y),
                key="compare_curves")

st.subheader("The keras.io table, beside ours")
st.dataframe(keras_io_table(runs + find_grid_runs(), find_grid_runs(PUBLISHED_GRIDS_DIR)), hide_index=True)
st.caption("Published: full CIFAR-10, 20 epochs, the mean over the published runs. docs/results.md: this project's runs of the same grid "
           "on its tenth of CIFAR-10 (4,770 training and 817 test images). Ours: the runs listed above, on the "
           "CIFAR-10 folder each was trained on; runs of `python -m tokenlearner experiment keras_io_tables` "
           "under the runs folder count too.")

if Limits.current().allow_delete:
    with st.expander("Delete a run"):
        victim = st.selectbox("run", deletable(runs), format_func=lambda run: run.name, key="compare_delete")
        confirmed = st.checkbox("yes, delete it and its files for good", key="compare_delete_confirm")
        if st.button("Delete", disabled=victim is None or not confirmed, key="compare_delete_button"):
            try:
                delete_run(victim)
            except ValueError as error:
                st.error(str(error))
            else:
                st.session_state.pop("compare_delete_confirm", None)
                st.rerun()
