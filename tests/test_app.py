"""The Streamlit app, driven by streamlit.testing.v1.AppTest: every page renders without
an exception, and moving a slider changes the MACs shown."""

import pytest
from streamlit.testing.v1 import AppTest

from tokenlearner.charts import macs_breakdown_figure, macs_sweep_figure
from tokenlearner.config import ModelConfig
from tokenlearner.flops import count

PAGES = ["pages/home.py", "pages/flops.py"]


def app() -> AppTest:
    return AppTest.from_file("../app.py", default_timeout=60)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page):
    test = app().run()
    test.switch_page(page).run()
    assert not test.exception, test.exception


def metric(test: AppTest, label: str) -> str:
    return next(m.value for m in test.metric if m.label == label)


def test_flops_page_follows_the_sliders():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    assert metric(test, "MACs") == "78.07 M"  # the keras.io example, 4 tokens
    test.slider(key="flops_0_tokens").set_value(8).run()
    assert metric(test, "MACs") == "79.84 M"
    test.slider(key="flops_0_depth").set_value(8).run()
    assert metric(test, "MACs") == f"{count(ModelConfig(num_tokens=8, depth=8)).macs / 1e6:.2f} M"
    assert not test.exception


def test_placement_stays_valid_when_depth_shrinks():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    test.slider(key="flops_0_placement").set_value(4).run()
    test.slider(key="flops_0_depth").set_value(2).run()
    assert not test.exception
    assert test.slider(key="flops_0_placement").value == 2
    test.checkbox(key="flops_0_fuser").check().run()
    assert test.slider(key="flops_0_placement").value == 1
    test.slider(key="flops_0_depth").set_value(1).run()
    assert not test.exception


def test_three_configs_side_by_side():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    test.radio(key="flops_compared").set_value(3).run()
    test.selectbox(key="flops_2_preset").set_value("keras-io-depth-8").run()
    assert not test.exception
    assert [m.value for m in test.metric if m.label == "MACs"] == ["78.07 M", "78.07 M", "202.21 M"]


def test_choosing_a_preset_resets_its_controls():
    test = app().run()
    test.switch_page("pages/flops.py").run()
    test.slider(key="flops_0_tokens").set_value(12).run()
    test.selectbox(key="flops_0_preset").set_value("keras-io-8-tokens").run()
    assert test.slider(key="flops_0_tokens").value == 8
    assert metric(test, "MACs") == "79.84 M"


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
