from collections import Counter

import streamlit as st

from tokenlearner.charts import accuracy_cost_figure, clicked_run, curves_overlay_figure
from tokenlearner.compare import (deletable, delete_run, epochs_csv, for_display, keras_io_table, pareto_front,
                                  runs_table, to_csv)
from tokenlearner.experiment import find_grids, grid_progress
from tokenlearner.limits import Limits
from tokenlearner.runs import PUBLISHED_GRIDS_DIR, find_grid_runs, find_runs
from tokenlearner.search import is_search, search_table
from tokenlearner.ui import as_text, main_picture, page_setup

page_setup()
st.title("Compare")


def grid_section(folder) -> None:
    try:
        rows = grid_progress(folder)
        samples = search_table(folder, rows) if is_search(folder) else None
    except (ValueError, KeyError, TypeError) as error:
        st.warning(f"{as_text(folder.name)}: its grid.json cannot be read ({as_text(str(error))})")
        return
    states = Counter(row["state"] for row in rows)
    st.markdown(f"**{as_text(folder.name)}**: " + ", ".join(
        f"{states[state]} {state}" for state in ("finished", "running", "waiting", "stopped early", "failed", "stopped",
                                                 "not started") if states[state]))
    if samples is not None:
        front = [row["run"] for row in samples if row["front"]]
        st.plotly_chart(accuracy_cost_figure(samples, front, accuracy="val_top1", clickable=False),
                        key=f"search_front_{folder.name}")
        st.caption("A search: best validation top-1 against MACs; stars and the dotted line: the front among the "
                   "samples that trained every epoch; hollow: stopped early by ASHA.")
        st.dataframe(for_display(samples), hide_index=True)
    else:
        st.dataframe([{"config": row["config"], "seed": row["seed"], "state": row["state"],
                       "epochs": f"{row['epochs_done']}/{row['epochs']}" if row["epochs"] else str(row["epochs_done"]),
                       "test top-1 (%)": None if row["test_top1"] is None else round(100 * row["test_top1"], 2)}
                      for row in rows], hide_index=True)
    curves = {f"{row['config']} seed {row['seed']}": row["directory"].epochs() for row in rows if row["epochs_done"]}
    if curves:
        st.plotly_chart(curves_overlay_figure(curves, "top1"), key=f"grid_curves_{folder.name}")


live_grid_section = st.fragment(run_every=2.0)(grid_section)  # redrawn while its runs train


def grids_section(grids) -> None:
    st.subheader("Grids")
    st.caption("Runs of `python -m tokenlearner experiment` under the runs folder, as they train "
               "(in process or on Ray): validation top-1 per epoch.")
    for folder in grids:
        try:
            busy = any(row["state"] in ("running", "waiting") for row in grid_progress(folder))
        except (ValueError, KeyError, TypeError):
            busy = False  # grid_section says what is wrong
        (live_grid_section if busy else grid_section)(folder)


runs, problems = find_runs()
clips = {run.name for run in runs if run.on_clips}  # other data: not on one accuracy axis with CIFAR-10's
if clips:
    st.caption(f"{len(clips)} run(s) trained on clips of moving shapes are left out; video models are on the "
               "Video page.")
runs = [run for run in runs if run.name not in clips]
grids = find_grids()
for problem in problems:
    st.warning(problem)
if not runs:
    if grids:
        grids_section(grids)
    else:
        st.info("No runs yet: train one on the Train page, or with `python -m tokenlearner train`.")
    st.stop()


@st.dialog("Delete a run")
def confirm_deletion(run) -> None:
    st.markdown(f"Delete **{as_text(run.name)}** and all its files for good? This cannot be undone.")
    if st.button("Delete for good", type="primary", key="compare_delete_confirmed"):
        try:
            delete_run(run)
        except ValueError as error:
            st.error(str(error))
        else:
            st.rerun()


rows = runs_table(runs)
with st.sidebar:
    threshold = st.slider("only runs with test top-1 of at least (%)", 0, 100, 0, key="compare_threshold")
    log_x = st.checkbox("log-scale MACs", key="compare_log_x")
    if Limits.current().allow_delete:
        st.divider()
        victim = st.selectbox("delete a run", deletable(runs), index=None, placeholder="choose a run",
                              format_func=lambda run: run.name, key="compare_delete")
        if st.button("Delete...", disabled=victim is None, key="compare_delete_button"):
            confirm_deletion(victim)
shown = [row for row in rows if threshold == 0 or (row["test_top1"] or 0) >= threshold]

with main_picture():
    figure = accuracy_cost_figure(shown, pareto_front(shown), log_x)
    event = st.plotly_chart(figure, key="compare_pareto", on_select="rerun", selection_mode="points")
    st.caption("Test top-1 against the full count of MACs per image; stars and the dotted line: the Pareto front. "
               "Click a run to open it on the Attention page.")
clicked = clicked_run(figure, event.selection.points)
if clicked is not None:
    if next(run for run in runs if run.name == clicked).has_model:
        st.switch_page("pages/attention.py", query_params={"run": clicked})
    st.info(f"{as_text(clicked)} has no saved weights yet, so the Attention page cannot show it.")

st.subheader("Every run")
st.dataframe(for_display(shown), hide_index=True)
left, right = st.columns(2)
left.download_button("Download this table (CSV)", to_csv(shown), "runs.csv", "text/csv")
right.download_button("Download every epoch of every run (CSV)", epochs_csv(runs), "epochs.csv", "text/csv")

st.subheader("Training curves")
names = [row["run"] for row in shown]
options, metric_column, scale_column = st.columns([3, 2, 1])
chosen = options.multiselect("runs", names, default=names[:3], key="compare_runs")
metric = metric_column.radio("metric", ["top1", "top5", "loss"], horizontal=True, key="compare_metric")
log_y = scale_column.checkbox("log-scale axis", key="compare_log_y")
by_name = {run.name: run for run in runs}
st.plotly_chart(curves_overlay_figure({name: by_name[name].directory.epochs() for name in chosen}, metric, log_y),
                key="compare_curves")

if grids:
    grids_section(grids)

st.subheader("The keras.io table, beside ours")
st.dataframe(keras_io_table(runs + find_grid_runs(), find_grid_runs(PUBLISHED_GRIDS_DIR)), hide_index=True)
st.caption("Published: full CIFAR-10, 20 epochs, the mean over the published runs. docs/results.md: this project's runs of the same grid "
           "on its tenth of CIFAR-10 (4,770 training and 817 test images). Ours: the runs listed above, on the "
           "CIFAR-10 folder each was trained on; runs of `python -m tokenlearner experiment keras_io_tables` "
           "under the runs folder count too.")
