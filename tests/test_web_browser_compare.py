"""The Compare page's overlaid curves in a real browser: Debian's Chromium driven by Playwright
against ``ckpt-index serve`` on SQLite and PostgreSQL. The chart draws one uPlot series per
distinct experiment of the compared checkpoints, with a point for each of its epochs and a ring on
each compared checkpoint; the metric chooser offers the metrics they share (the monitored one
first chosen) and puts the choice in the URL; experiment and metric names from files stay text.

Nothing is downloaded: without ``/usr/bin/chromium`` the tests are skipped, except when
``CI=true``, where a missing browser fails them.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from helpers.browser import require_browser, serving
from helpers.checkpoints import write_checkpoint
from helpers.index_rows import sync
from playwright.sync_api import expect

from ckpt_index.tools.demo import make_demo_tree
from ckpt_index.web.experiment import experiment_link

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_METRIC = "<img src=x onerror=alert(2)>"

require_browser()

pytestmark = pytest.mark.slow


def _experiment(root: Path, folder: str, name: str, values: tuple[float, ...]) -> None:
    for epoch, value in enumerate(values):
        write_checkpoint(
            root / folder / "checkpoints" / f"epoch-{epoch:02d}_step-{10 * (epoch + 1):06d}.ckpt",
            exp_name=name,
            **{
                "training.epoch": epoch,
                "training.global_step": 10 * (epoch + 1),
                "metrics.hmean": value,
                "metrics.additional_metrics.val/hmean": value,
                f"metrics.additional_metrics.{HOSTILE_METRIC}": 1 - value,
            },
        )


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[str]:
    """The demo tree plus two small experiments sharing a metric named with markup, one of them
    named with markup too, served by `ckpt-index serve`."""
    root = tmp_path / "outputs"
    make_demo_tree(root)
    _experiment(root, "hostile", HOSTILE, (0.3, 0.6, 0.5, 0.55))
    _experiment(root, "plain", "plain-run", (0.2, 0.4, 0.7))
    sync(root, db_url)
    with serving(db_url, tmp_path) as address:
        yield address.rstrip("/")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url) as reply:
        return json.load(reply)


def compare_url(server: str, paths: list[str], **extra: str) -> str:
    return server + "/compare?" + urlencode([("path", p) for p in paths] + list(extra.items()))


def drawn(page: Any) -> dict[str, Any]:
    """What the chart drew once compare.js has fetched the curves: uPlot's series labels and
    data, the rings counted by the draw hook, the chosen metric."""
    expect(page.locator("#compare-chart")).to_have_attribute("data-ready", "1")
    return page.evaluate(
        """() => {
          const plot = window.ckptComparePlot;
          const box = document.getElementById("compare-chart");
          return {
            labels: plot.series.slice(1).map((s) => s.label),
            data: plot.data,
            series: Number(box.dataset.series),
            marks: Number(box.dataset.marks),
            metric: box.dataset.metric,
            canvases: box.querySelectorAll("canvas").length,
          };
        }"""
    )


def points_of(chart: dict[str, Any], index: int) -> list[tuple[int, float]]:
    """Series ``index``'s (x, y) points (uPlot aligns every series on one x array)."""
    xs, ys = chart["data"][0], chart["data"][index + 1]
    return [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]


def test_compare_overlays_one_curve_per_experiment(page: Any, server: str, watched) -> None:
    rows = get_json(server + "/api/checkpoints?per_page=500&exp=ocr_*&sort=hmean:desc")
    best = rows["checkpoints"]
    first = best[0]
    other = next(r for r in best if r["exp_name"] != first["exp_name"])
    same = next(r for r in best[1:] if r["exp_name"] == first["exp_name"])
    paths = [first["checkpoint_path"], other["checkpoint_path"], same["checkpoint_path"]]
    page.goto(compare_url(server, paths))
    chart = drawn(page)
    # Two distinct experiments (the third checkpoint shares the first's): two series, each
    # labelled by its experiment, with a point at each of its epochs.
    names = [first["exp_name"], other["exp_name"]]
    assert chart["series"] == 2 and chart["labels"] == names
    metric = first["monitor"]
    assert chart["metric"] == metric == "val/hmean"
    for index, name in enumerate(names):
        curve = get_json(server + experiment_link(name, "/api/experiments/") + "?metric=" + metric)
        expected = list(zip(curve["curve"]["epoch"], curve["curve"]["value"], strict=True))
        assert len(expected) >= 2 and points_of(chart, index) == expected
    assert chart["marks"] == 3 and chart["canvases"] == 1
    assert page.locator("#curve-marks li").count() == 3
    # The chooser offers the shared metrics, the monitored one selected; a choice goes in the URL.
    options = page.locator("#curve-metric option").evaluate_all("os => os.map(o => o.value)")
    assert metric in options and "val/loss" in options
    assert page.locator("#curve-metric").input_value() == metric
    page.locator("#curve-metric").select_option("val/loss")
    page.wait_for_url(re.compile(r"metric=val%2Floss"))
    assert drawn(page)["metric"] == "val/loss"
    # The differences table is still there: three columns.
    assert page.locator("#compare thead th.path").count() == 3
    # global_step on x: the same number of points per series.
    before = [len(points_of(chart, i)) for i in range(2)]
    page.locator("#curve-x").select_option("global_step")
    expect(page.locator("#compare-chart")).to_have_attribute("data-x", "global_step")
    after = drawn(page)
    assert [len(points_of(after, i)) for i in range(2)] == before
    assert watched == {"dialogs": [], "errors": []}


def test_names_from_files_stay_text(page: Any, server: str, watched) -> None:
    hostile = get_json(server + "/api/checkpoints?" + urlencode({"exp": HOSTILE}))["checkpoints"]
    plain = get_json(server + "/api/checkpoints?exp=plain-run")["checkpoints"]
    paths = [hostile[0]["checkpoint_path"], plain[-1]["checkpoint_path"]]
    page.goto(compare_url(server, paths))
    chart = drawn(page)
    assert chart["labels"] == [HOSTILE, "plain-run"]
    # The legend shows the experiment's name as text.
    legend = page.locator(".u-legend .u-series .u-label").all_inner_texts()
    assert HOSTILE in legend
    # The metric named with markup is offered as text; choosing it draws it.
    options = page.locator("#curve-metric option").all_inner_texts()
    assert HOSTILE_METRIC in options
    page.locator("#curve-metric").select_option(HOSTILE_METRIC)
    page.wait_for_url(re.compile(r"metric=%3Cimg"))
    chart = drawn(page)
    assert chart["metric"] == HOSTILE_METRIC and chart["series"] == 2
    assert [y for _, y in points_of(chart, 0)] == pytest.approx([0.7, 0.4, 0.5, 0.45])
    assert page.locator("#curve-marks li").first.inner_text().startswith(HOSTILE)
    assert page.locator("img").count() == 0
    assert watched == {"dialogs": [], "errors": []}
