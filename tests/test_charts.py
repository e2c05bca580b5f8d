"""The app's Plotly figures, built from the analytic counts."""

import pytest

from tokenlearner.charts import macs_breakdown_figure, macs_sweep_figure
from tokenlearner.config import ModelConfig
from tokenlearner.flops import count


def test_breakdown_figure_stacks_every_category_with_work():
    reports = {"4 tokens": count(ModelConfig()), "fuser": count(ModelConfig(fuser=True))}
    figure = macs_breakdown_figure(reports)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert {trace.name for trace in bars} >= {"MLP", "TokenLearner", "TokenFuser", "attention matmuls (QK^T, AV)"}
    for column, report in enumerate(reports.values()):
        assert sum(trace.y[column] for trace in bars) == pytest.approx(report.macs / 1e6)


@pytest.mark.parametrize("parameter, points", [("num_tokens", 64), ("placement", 5)])
def test_sweep_figure_covers_the_valid_range(parameter, points):
    figure = macs_sweep_figure(ModelConfig(), parameter)
    full = figure.data[0]
    assert len(full.x) == points
    assert full.y[list(full.x).index(4 if parameter == "num_tokens" else 3)] == pytest.approx(78.06592)


@pytest.mark.parametrize("frames, tubelet, texts", [
    (1, 1, ["64", "64", "64→4", "4", "4→64", "10 classes"]),
    (8, 2, ["256", "256", "256→16", "16", "16→256", "10 classes"]),  # 4 slices, 4 tokens each
])
def test_the_model_diagram_counts_a_clips_tokens_over_all_its_slices(frames, tubelet, texts):
    from tokenlearner.charts import model_diagram_figure

    config = ModelConfig(frames=frames, tubelet_frames=tubelet, depth=2, placement=1, fuser=True)
    bars = model_diagram_figure(config).data[0]
    assert list(bars.text) == texts
    assert bars.x[0] == ("4x8x8 patches" if frames > 1 else "8x8 patches")
    assert ("MACs per clip" if frames > 1 else "MACs per image") in model_diagram_figure(config).layout.title.text
