"""The Experiment and Checkpoint pages in a real browser: Debian's Chromium driven by Playwright
against ``ckpt-index serve`` over the demo tree, on SQLite and PostgreSQL. The chart is drawn by
the vendored uPlot (one point per epoch), the pages log no console error (a CSP violation is
one), and the Checkpoint page shows the parameters and a working copy button.

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

import pytest
from helpers.browser import require_browser, serving
from helpers.checkpoints import write_checkpoint
from helpers.index_rows import sync
from playwright.sync_api import expect

from ckpt_index.tools.demo import make_demo_tree
from ckpt_index.web.checkpoint import checkpoint_link
from ckpt_index.web.experiment import experiment_link

HOSTILE = "<img src=x onerror=alert(1)>/../%2F?#&"

require_browser()

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[str]:
    """The demo tree plus a 4-epoch experiment named with markup, served by `ckpt-index serve`."""
    root = tmp_path / "outputs"
    make_demo_tree(root)
    for epoch, hmean in enumerate((0.3, 0.6, 0.5, 0.55)):
        write_checkpoint(
            root
            / "hostile"
            / "checkpoints"
            / f"epoch-{epoch:02d}_step-{10 * (epoch + 1):06d}.ckpt",
            exp_name=HOSTILE,
            **{
                "training.epoch": epoch,
                "training.global_step": 10 * (epoch + 1),
                "metrics.hmean": hmean,
                "metrics.additional_metrics.val/hmean": hmean,
            },
        )
    sync(root, db_url)
    with serving(db_url, tmp_path) as address:
        yield address.rstrip("/")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url) as reply:
        return json.load(reply)


def chart_points(page: Any) -> int:
    expect(page.locator("#chart")).not_to_have_attribute("data-points", "0")
    return int(page.locator("#chart").get_attribute("data-points"))


def test_experiment_chart_draws_a_point_per_epoch(page: Any, server: str, watched) -> None:
    names = {
        r["exp_name"] for r in get_json(server + "/api/checkpoints?per_page=500")["checkpoints"]
    }
    name = sorted(n for n in names if n and n != HOSTILE)[0]
    body = get_json(server + experiment_link(name, "/api/experiments/"))
    epochs = [r["epoch"] for r in body["checkpoints"] if r["epoch"] is not None]
    page.goto(server + experiment_link(name))
    assert chart_points(page) == len(epochs) >= 2
    # The uPlot instance holds the epochs on x and the monitored metric on y.
    data = page.evaluate("window.ckptExperimentPlot.data")
    assert data[0] == sorted(epochs)
    assert data[1] == body["curve"]["value"]
    assert page.locator("#chart canvas").count() == 1
    assert page.locator("#experiment-checkpoints tr.best").count() == 1
    # global_step on x: the same points.
    page.locator("#x-select").select_option("global_step")
    assert page.locator("#chart").get_attribute("data-x") == "global_step"
    assert chart_points(page) == len(epochs)
    # Another metric, chosen from the list, is put in the URL.
    page.locator("#metric-select").select_option("val/loss")
    page.wait_for_url(re.compile(r"metric=val%2Floss"))
    assert page.locator("#chart").get_attribute("data-metric") == "val/loss"
    assert watched == {"dialogs": [], "errors": []}


def test_hostile_experiment_page_draws_and_runs_nothing(page: Any, server: str, watched) -> None:
    page.goto(server + "/checkpoints?per_page=200")
    page.locator("a.experiment-link", has_text="<img src=x").first.click()
    page.wait_for_url(re.compile(r"/experiments/"))
    assert page.locator("#exp-name").inner_text() == HOSTILE
    assert chart_points(page) == 4
    assert page.evaluate("window.ckptExperimentPlot.data[1]") == [0.3, 0.6, 0.5, 0.55]
    best = page.locator("#experiment-checkpoints tr.best").get_attribute("data-path")
    assert best is not None and best.endswith("epoch-01_step-000020.ckpt")
    assert watched == {"dialogs": [], "errors": []}


def test_checkpoint_page_shows_params_and_copies_the_path(
    page: Any, server: str, watched, context: Any
) -> None:
    first = get_json(server + "/api/checkpoints?per_page=1&sort=epoch:desc")["checkpoints"][0]
    path = first["checkpoint_path"]
    page.goto(server + "/checkpoints?per_page=200")
    page.locator(f'tr[data-path="{path}"] a.checkpoint-link').click()
    page.wait_for_url(re.compile(r"/checkpoint\?path="))
    assert page.locator("#ckpt-path").inner_text() == path
    shown = page.locator("#params tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert shown and shown == list(first["params"])
    assert page.locator("#sidecar").count() == 1
    button = page.locator("#copy-path")
    assert button.is_visible() and button.get_attribute("data-ready") == "1"
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    button.click()
    expect(page.locator("#copy-status")).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == path
    assert page.url.startswith(server + checkpoint_link(path)[:11])
    assert watched == {"dialogs": [], "errors": []}
