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


def macs_per_layer_figure(reports: dict[str, CostReport]) -> go.Figure:
    """MACs of every model layer (patch embedding, each block, TokenLearner, TokenFuser,
    classifier) in model order, one bar per labelled config."""
    figure = go.Figure()
    for label, report in reports.items():
        layers = report.macs_by_layer()
        figure.add_bar(name=label, x=list(layers), y=[macs / 1e6 for macs in layers.values()],
                       hovertemplate="%{x}: %{y:.3f} M MACs<extra>" + label + "</extra>")
    figure.update_layout(barmode="group", yaxis_title="MACs per image (millions)", height=360,
                         margin={"t": 30, "b": 10}, legend={"orientation": "h", "y": 1.1},
                         showlegend=len(reports) > 1)
    return figure


STAGE_COLOURS = {"patch_embedding": "#8c8c8c", "block": "#4c78a8", "token_learner": "#f58518",
                 "token_fuser": "#54a24b", "classifier": "#8c8c8c"}


def model_diagram_figure(config: ModelConfig) -> go.Figure:
    """The model as a row of boxes, input to output: the patch embedding, each block (as
    tall as the number of tokens it attends over), each TokenLearner and TokenFuser where
    it sits, and the classifier, each with its MACs per image (or clip) below it. A clip's
    tokens are counted over all its temporal slices."""
    report = count(config)
    macs = report.macs_by_layer()
    patches = config.temporal_slices * config.num_patches
    slices = f"{config.temporal_slices}x" if config.is_video else ""
    boxes = [("patch_embedding", f"{slices}{config.grid_size}x{config.grid_size} patches", patches, f"{patches}")]
    for stage in config.stages():
        label = stage.name.replace("block_", "block ").replace("token_learner", "TokenLearner").replace(
            "token_fuser", "TokenFuser").replace("_", " ")
        if stage.kind == "block":
            boxes.append((stage.name, label, stage.tokens, f"{stage.tokens}"))
        elif stage.kind == "token_learner":
            learned = config.temporal_slices * config.num_tokens
            boxes.append((stage.name, label, learned, f"{stage.tokens}→{learned}"))
        else:
            boxes.append((stage.name, label, patches, f"{stage.tokens}→{patches}"))
    boxes.append(("classifier", "classifier", 1, f"{config.num_classes} classes"))
    heights = [max(tokens / patches, 0.06) for _, _, tokens, _ in boxes]
    labels = [label for _, label, _, _ in boxes]
    kinds = [next(kind for kind in STAGE_COLOURS if name.startswith(kind)) for name, *_ in boxes]
    figure = go.Figure(go.Bar(
        x=labels, y=heights, base=[-height / 2 for height in heights],
        marker={"color": [STAGE_COLOURS[kind] for kind in kinds]},
        text=[text for *_, text in boxes], textposition="outside", cliponaxis=False,
        customdata=[macs.get(name, 0) / 1e6 for name, *_ in boxes],
        hovertemplate="%{x}<br>tokens: %{text}<br>%{customdata:.3f} M MACs<extra></extra>",
    ))
    for label, (name, *_) in zip(labels, boxes, strict=True):
        figure.add_annotation(x=label, y=-0.62, text=f"{macs.get(name, 0) / 1e6:.2f} M", showarrow=False,
                              font={"size": 10, "color": "#555"})
    figure.update_layout(
        title={"text": "<span style='color:#4c78a8'>blocks</span> as tall as the tokens they attend over, "
                       "<span style='color:#f58518'>TokenLearner</span> (patches→tokens), "
                       "<span style='color:#54a24b'>TokenFuser</span> (tokens→patches); MACs per "
                       + ("clip" if config.is_video else "image") + " below",
               "font": {"size": 13}},
        yaxis={"visible": False, "range": [-0.72, 0.68]},
        xaxis={"tickangle": -30, "tickfont": {"size": 11}},
        height=340, margin={"t": 40, "b": 10, "l": 10, "r": 10}, bargap=0.25, showlegend=False,
    )
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


ACCURACY_NAMES = {"test_top1": "test top-1", "val_top1": "best validation top-1"}


def accuracy_cost_figure(rows: list[dict], front: list[str], log_x: bool = False, accuracy: str = "test_top1",
                         clickable: bool = True) -> go.Figure:
    """Accuracy (`accuracy`: test or best validation top-1) against MACs, one labelled
    point per run (hollow: stopped early by a search), the Pareto front joined by a line.
    The axes hug the points with a margin, so runs close in cost or accuracy stay apart;
    every point's text is its run's name (`clicked_run` reads it back)."""
    scored = [row for row in rows if row[accuracy] is not None]
    figure = go.Figure()
    best = sorted((row for row in scored if row["run"] in front), key=lambda row: row["macs_m"])
    figure.add_scatter(name="Pareto front", x=[row["macs_m"] for row in best], y=[row[accuracy] for row in best],
                       mode="lines", line={"dash": "dot"}, hoverinfo="skip")
    x_range = _padded_range([row["macs_m"] for row in scored], log=log_x)
    y_range = _padded_range([row[accuracy] for row in scored], minimum_span=2.0)
    symbols = ["star" if row["run"] in front else "circle-open" if row.get("state") == "stopped early" else "circle"
               for row in scored]
    figure.add_scatter(name="runs", x=[row["macs_m"] for row in scored], y=[row[accuracy] for row in scored],
                       text=[row["run"] for row in scored], mode="markers+text",
                       textposition=_label_positions([row["macs_m"] for row in scored],
                                                     [row[accuracy] for row in scored], x_range, y_range, log_x),
                       marker={"size": 12, "symbol": symbols},
                       hovertemplate="%{text}<br>%{x:.2f} M MACs<br>%{y:.2f}% " + ACCURACY_NAMES[accuracy]
                                     + ("<extra>click to open</extra>" if clickable else "<extra></extra>"))
    figure.update_layout(xaxis={"title": "MACs per image (millions)", "type": "log" if log_x else "linear",
                                "range": x_range},
                         yaxis={"title": f"{ACCURACY_NAMES[accuracy]} (%)", "range": y_range}, height=420,
                         margin={"t": 30, "b": 10}, legend={"orientation": "h", "y": 1.08})
    return figure


def _padded_range(values: list[float], log: bool = False, minimum_span: float = 0.0) -> list[float] | None:
    """An axis range around `values` with 12% to spare on each side (the labels sit above
    the points), at least `minimum_span` wide; in log10 units for a log axis."""
    import math

    if not values:
        return None
    if log:
        values = [math.log10(value) for value in values if value > 0]
        if not values:
            return None
    low, high = min(values), max(values)
    span = max(high - low, minimum_span, abs(high) * 0.02 if not log else 0.05, 1e-9)
    middle = (low + high) / 2
    return [middle - span * 0.62, middle + span * 0.62]


def _label_positions(xs: list[float], ys: list[float], x_range, y_range, log_x: bool) -> list[str]:
    """Where each point's label goes (above, below, right or left of it), so that labels
    of runs close in cost and accuracy do not print over each other."""
    import math

    if not xs:
        return []
    placed: list[tuple[float, float]] = []
    offsets = {"top center": (0.0, 0.05), "bottom center": (0.0, -0.05), "middle right": (0.16, 0.0),
               "middle left": (-0.16, 0.0)}
    positions = []
    for x, y in zip(xs, ys, strict=True):
        u = ((math.log10(x) if log_x else x) - x_range[0]) / (x_range[1] - x_range[0])
        v = (y - y_range[0]) / (y_range[1] - y_range[0])
        choice = next((position for position, (du, dv) in offsets.items()
                       if all(abs(u + du - pu) > 0.22 or abs(v + dv - pv) > 0.05 for pu, pv in placed)),
                      "top center")
        du, dv = offsets[choice]
        placed.append((u + du, v + dv))
        positions.append(choice)
    return positions


def clicked_run(figure: go.Figure, points: list[dict]) -> str | None:
    """The run whose point was clicked, from the points of a Plotly selection event
    (`st.plotly_chart(..., on_select="rerun")`) on `accuracy_cost_figure`; None when the
    selection holds no run's point."""
    for point in points:
        curve, index = point.get("curve_number"), point.get("point_index")
        if curve is None or index is None or not 0 <= curve < len(figure.data):
            continue
        names = figure.data[curve].text
        if figure.data[curve].name == "runs" and names is not None and 0 <= index < len(names):
            return names[index]
    return None


def curves_overlay_figure(curves: dict[str, list[dict]], metric: str, log_y: bool = False) -> go.Figure:
    """Validation `metric` per epoch for several runs on one chart."""
    figure = go.Figure()
    for name, epochs in curves.items():
        figure.add_scatter(name=name, x=[epoch["epoch"] for epoch in epochs],
                           y=[epoch[f"val_{metric}"] for epoch in epochs], mode="lines")
    figure.update_layout(xaxis_title="epoch", yaxis_title=f"validation {metric}",
                         yaxis_type="log" if log_y else "linear", height=380)
    return figure
