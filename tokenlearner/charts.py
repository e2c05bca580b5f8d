"""Plotly figures for the app, built from library results (no TensorFlow needed)."""

from __future__ import annotations

import plotly.graph_objects as go

from tokenlearner.config import ModelConfig
from tokenlearner.flops import CATEGORIES, CostReport, count

CATEGORY_LABELS = {
    "patch_embedding": "patch embedding",
    "attention_projections": "attention projections",
    "attention_matmuls": "attention matmuls (QK^T, AV)",
    "mlp": "MLP",
    "tokenlearner": "TokenLearner",
    "tokenfuser": "TokenFuser",
    "head": "classifier",
}


def macs_breakdown_figure(reports: dict[str, CostReport]) -> go.Figure:
    """Stacked bars of MACs per category, one bar per labelled config, with each
    config's keras.io-convention figure (in mega-MACs-equivalent) marked beside it."""
    labels = list(reports)
    figure = go.Figure()
    for category in CATEGORIES:
        values = [reports[label].macs_by_category()[category] / 1e6 for label in labels]
        if any(values):
            figure.add_bar(name=CATEGORY_LABELS[category], x=labels, y=values)
    figure.add_scatter(
        name="keras.io convention (GFLOPs x 1000)",
        x=labels,
        y=[reports[label].keras_io_gflops * 1e3 for label in labels],
        mode="markers",
        marker={"symbol": "diamond", "size": 12, "color": "black"},
    )
    figure.update_layout(barmode="stack", yaxis_title="MACs per image (millions)", legend_title="where the work is")
    return figure


def macs_sweep_figure(config: ModelConfig, parameter: str) -> go.Figure:
    """Total MACs (full count) and the keras.io convention as `parameter`
    (`"num_tokens"` or `"placement"`) runs over its valid range, the rest of `config` fixed."""
    if parameter == "num_tokens":
        values = range(1, min(config.num_patches, 64) + 1)
    elif parameter == "placement":
        values = range(0, config.depth + (0 if config.fuser else 1))
    else:
        raise ValueError(f"parameter={parameter!r}: choose num_tokens or placement")
    learned = config if config.tokenlearner != "none" else config.replace(tokenlearner="v1")
    reports = [count(learned.replace(**{parameter: value})) for value in values]
    baseline = count(config.replace(tokenlearner="none", fuser=False, pooling="mean"))
    figure = go.Figure()
    figure.add_scatter(name="MACs (full count)", x=list(values), y=[r.macs / 1e6 for r in reports],
                       mode="lines+markers")
    figure.add_scatter(name="keras.io convention (GFLOPs x 1000)", x=list(values),
                       y=[r.keras_io_gflops * 1e3 for r in reports], mode="lines+markers")
    figure.add_hline(y=baseline.macs / 1e6, line_dash="dot",
                     annotation_text="no TokenLearner (full count)", annotation_position="top left")
    figure.update_layout(xaxis_title=parameter.replace("num_tokens", "number of tokens"),
                         yaxis_title="millions per image")
    return figure


def top5_figure(probabilities, class_names) -> go.Figure:
    """Horizontal bars of the five most probable classes, the most probable on top."""
    import numpy as np

    ranking = np.argsort(probabilities)[::-1][:5][::-1]
    figure = go.Figure(go.Bar(x=[100 * float(probabilities[i]) for i in ranking],
                              y=[class_names[i] for i in ranking], orientation="h"))
    figure.update_layout(xaxis_title="probability (%)", xaxis_range=[0, 100], height=220,
                         margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return figure


def training_curves_figure(epochs: list[dict], metric: str) -> go.Figure:
    """`metric` ("loss", "top1" or "top5") per epoch, training and validation."""
    figure = go.Figure()
    x = [epoch["epoch"] for epoch in epochs]
    figure.add_scatter(name="training", x=x, y=[epoch[metric] for epoch in epochs], mode="lines+markers")
    figure.add_scatter(name="validation", x=x, y=[epoch[f"val_{metric}"] for epoch in epochs], mode="lines+markers")
    figure.update_layout(xaxis_title="epoch", yaxis_title=metric, height=300, margin={"t": 30})
    return figure


def accuracy_cost_figure(rows: list[dict], front: list[str], log_x: bool = False) -> go.Figure:
    """Test top-1 against MACs, one point per run, the Pareto front joined by a line."""
    scored = [row for row in rows if row["test_top1"] is not None]
    figure = go.Figure()
    figure.add_scatter(name="runs", x=[row["macs_m"] for row in scored], y=[row["test_top1"] for row in scored],
                       text=[row["run"] for row in scored], mode="markers", marker={"size": 10})
    best = sorted((row for row in scored if row["run"] in front), key=lambda row: row["macs_m"])
    figure.add_scatter(name="Pareto front", x=[row["macs_m"] for row in best], y=[row["test_top1"] for row in best],
                       text=[row["run"] for row in best], mode="lines+markers",
                       marker={"size": 12, "symbol": "star"})
    figure.update_layout(xaxis_title="MACs per image (millions)", yaxis_title="test top-1 (%)",
                         xaxis_type="log" if log_x else "linear", height=420)
    return figure


def curves_overlay_figure(curves: dict[str, list[dict]], metric: str, log_y: bool = False) -> go.Figure:
    """Validation `metric` per epoch for several runs on one chart."""
    figure = go.Figure()
    for name, epochs in curves.items():
        figure.add_scatter(name=name, x=[epoch["epoch"] for epoch in epochs],
                           y=[epoch[f"val_{metric}"] for epoch in epochs], mode="lines")
    figure.update_layout(xaxis_title="epoch", yaxis_title=f"validation {metric}",
                         yaxis_type="log" if log_y else "linear", height=380)
    return figure
