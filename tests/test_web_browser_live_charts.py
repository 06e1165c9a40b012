"""Live Experiment and Compare charts in a real browser (Debian's Chromium driven by Playwright,
against ``ckpt-index serve``, on SQLite and PostgreSQL): checkpoints upserted while the page is
open reach the chart and the table without a reload, keeping the chosen metric and axis; and
while the index is unchanged the page fetches nothing but the 304 answers of /api/version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from helpers.browser import require_browser, serving
from helpers.checkpoints import write_checkpoint
from helpers.files import age
from helpers.index_rows import sync

require_browser()

pytestmark = pytest.mark.slow

#: Long enough for several polls (live.js polls every 2 s).
QUIET_MS = 5_000


def ckpt(root: Path, exp: str, epoch: int, hmean: float) -> Path:
    """A checkpoint of ``exp`` at ``epoch`` as a training run leaves it (the callback's sidecar);
    ``hmean`` differs from the constant ``val/hmean`` of the seed sidecar, so the chart shows
    which metric it drew."""
    path = root / exp / "checkpoints" / f"epoch-{epoch:02d}_step-{epoch * 10:06d}.ckpt"
    changes = {
        "exp_name": exp,
        "training.epoch": epoch,
        "training.global_step": epoch * 10,
        "metrics.hmean": hmean,
    }
    return write_checkpoint(path, **changes)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    ckpt(root, "live-a", 0, 0.50)
    ckpt(root, "live-a", 1, 0.60)
    ckpt(root, "live-b", 0, 0.40)
    ckpt(root, "live-b", 1, 0.45)
    age(root)
    return root


@pytest.fixture
def server(tmp_path: Path, tree: Path, db_url: str) -> Iterator[str]:
    sync(tree, db_url)
    with serving(db_url, tmp_path) as address:
        yield address


def first_poll(page: Any) -> None:
    """Wait until live.js has read the version once (later changes are then noticed)."""
    page.locator("html[data-live-version]").wait_for(state="attached")


def test_the_experiment_page_takes_new_checkpoints_in_place(
    page: Any, server: str, tree: Path, db_url: str, watched
) -> None:
    page.goto(server + "experiments/live-a?metric=hmean")  # not the monitored val/hmean
    page.locator('#chart[data-points="2"]').wait_for()
    page.locator("#x-select").select_option("global_step")
    page.locator('#chart[data-x="global_step"]').wait_for()
    page.evaluate("window.notReloaded = true")
    first_poll(page)

    new = [ckpt(tree, "live-a", 2, 0.55), ckpt(tree, "live-a", 3, 0.90)]
    ckpt(tree, "live-b", 2, 0.99)  # another experiment's: not on this page
    sync(tree, db_url)

    page.locator('#chart[data-points="4"]').wait_for(timeout=10_000)
    assert page.evaluate("window.notReloaded") is True
    chart = page.locator("#chart")
    assert chart.get_attribute("data-x") == "global_step"  # the chosen axis and metric kept
    assert chart.get_attribute("data-metric") == "hmean"
    assert page.locator("#x-select").input_value() == "global_step"
    assert page.locator("#metric-select").input_value() == "hmean"
    drawn = page.evaluate("window.ckptExperimentPlot.data")
    assert drawn[0] == [0, 10, 20, 30]
    assert drawn[1] == pytest.approx([0.50, 0.60, 0.55, 0.90])
    assert drawn[2] == [None, None, None, pytest.approx(0.90)]  # the best mark moved

    rows = page.locator("#experiment-checkpoints tbody tr")
    paths = rows.evaluate_all("rs => rs.map(r => r.dataset.path)")
    assert paths[2:] == [str(p) for p in new] and len(paths) == 4
    best = page.locator("#experiment-checkpoints tbody tr.best")
    assert best.count() == 1 and best.get_attribute("data-path") == str(new[1])
    assert "★ best" in best.inner_text()
    assert rows.nth(3).locator("td").nth(3).inner_text() == "0.9"
    assert page.locator("#best-link").inner_text() == str(new[1])
    assert page.locator("#experiment-summary").inner_text().startswith("4 checkpoints")
    assert watched == {"dialogs": [], "errors": []}  # no CSP violation


def test_the_compare_chart_grows_with_its_experiments(
    page: Any, server: str, tree: Path, db_url: str, watched
) -> None:
    compared = [tree / "live-a/checkpoints/epoch-01_step-000010.ckpt"]
    compared.append(tree / "live-b/checkpoints/epoch-00_step-000000.ckpt")
    query = urlencode([("path", str(p)) for p in compared] + [("metric", "hmean")])
    page.goto(server + "compare?" + query)
    page.locator('#compare-chart[data-ready="1"]').wait_for()
    assert page.evaluate("window.ckptComparePlot.data") == [
        [0, 1],
        pytest.approx([0.50, 0.60]),
        pytest.approx([0.40, 0.45]),
    ]
    page.evaluate("window.notReloaded = true")
    first_poll(page)

    ckpt(tree, "live-a", 2, 0.70)
    ckpt(tree, "live-b", 2, 0.50)
    ckpt(tree, "live-b", 3, 0.65)
    sync(tree, db_url)

    page.locator('#compare-chart[data-points="4"]').wait_for(timeout=10_000)
    assert page.evaluate("window.notReloaded") is True
    drawn = page.evaluate("window.ckptComparePlot.data")
    assert drawn[0] == [0, 1, 2, 3]
    assert drawn[1] == [pytest.approx(0.50), pytest.approx(0.60), pytest.approx(0.70), None]
    assert drawn[2] == pytest.approx([0.40, 0.45, 0.50, 0.65])
    chart = page.locator("#compare-chart")
    assert chart.get_attribute("data-metric") == "hmean"  # the chosen metric kept
    assert chart.get_attribute("data-series") == "2"
    assert chart.get_attribute("data-marks") == "2"  # the compared checkpoints stay the same
    assert page.locator("#curve-marks li").count() == 2
    assert page.locator("#curve-metric").input_value() == "hmean"
    assert watched == {"dialogs": [], "errors": []}


@pytest.mark.parametrize("where", ["experiment", "compare"])
def test_nothing_is_fetched_again_while_the_index_is_unchanged(
    page: Any, server: str, tree: Path, where: str
) -> None:
    paths = [tree / "live-a/checkpoints/epoch-01_step-000010.ckpt"]
    paths.append(tree / "live-b/checkpoints/epoch-01_step-000010.ckpt")
    url = {
        "experiment": "experiments/live-a",
        "compare": "compare?" + urlencode([("path", str(p)) for p in paths]),
    }[where]
    page.goto(server + url)
    first_poll(page)
    # The page's own first fetch of its chart data may end after the first poll (slow machines).
    chart = {"experiment": "#chart", "compare": "#compare-chart"}[where]
    page.locator(f"{chart}[data-points]").wait_for(state="attached")
    seen: list[tuple[str, int]] = []
    page.on("response", lambda reply: seen.append((reply.url, reply.status)))
    page.wait_for_timeout(QUIET_MS)

    polls = [status for address, status in seen if address.endswith("/api/version")]
    assert len(polls) >= 2 and set(polls) == {304}, seen
    assert [address for address, _ in seen if not address.endswith("/api/version")] == []
