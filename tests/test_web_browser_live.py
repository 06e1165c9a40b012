"""``ckpt-index serve``'s Compare page and live updates in a real browser: Debian's Chromium driven
by Playwright, against the server started by the CLI over the demo tree, on SQLite and PostgreSQL.

Nothing is downloaded: Playwright launches ``/usr/bin/chromium``. Without it the tests are skipped,
except in CI (``CI=true``), where a missing browser fails them.
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
from helpers.files import age
from helpers.index_rows import sync

from ckpt_index.tools.demo import make_demo_tree

require_browser()

pytestmark = pytest.mark.slow

#: The highlight of a differing row (live.css).
HIGHLIGHT = "rgb(255, 244, 194)"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    make_demo_tree(root)
    age(root)
    return root


@pytest.fixture
def server(tmp_path: Path, tree: Path, db_url: str) -> Iterator[str]:
    """The demo tree indexed and served by `ckpt-index serve` on a free port; yields its address."""
    sync(tree, db_url)
    with serving(db_url, tmp_path) as address:
        yield address


def get_json(address: str, path: str) -> Any:
    with urllib.request.urlopen(address + path) as reply:
        return json.load(reply)


def test_compare_shows_two_columns_with_the_differences_highlighted(
    page: Any, server: str, watched
) -> None:
    page.goto(server + "checkpoints?exp=ocr_*&sort=hmean:desc")
    rows = page.locator("#checkpoints tbody tr")
    first, second = rows.nth(0).get_attribute("data-path"), rows.nth(1).get_attribute("data-path")
    rows.nth(0).locator('input[name="path"]').check()
    rows.nth(1).locator('input[name="path"]').check()
    page.locator("#compare-button").click()
    page.wait_for_url(re.compile(r"/compare\?path="))

    headers = page.locator("#compare thead th.path")
    assert headers.evaluate_all("hs => hs.map(h => h.dataset.path)") == [first, second]
    assert headers.all_inner_texts() == [first, second]
    expected = get_json(server, page.url.replace(server + "compare", "api/compare"))
    names = page.locator("#compare tbody tr").evaluate_all("rs => rs.map(r => r.dataset.name)")
    assert names == [row["name"] for row in expected["rows"]] and "epoch" in names
    for row in expected["rows"][:5]:
        cells = page.locator(f'#compare tbody tr[data-name="{row["name"]}"] td')
        assert cells.count() == 2
        assert cells.nth(0).evaluate("c => getComputedStyle(c).backgroundColor") == HIGHLIGHT

    page.locator("#compare-toggle").click()  # every row: the equal ones are not highlighted
    page.wait_for_url(re.compile(r"all=1"))
    same = page.locator("#compare tbody tr:not(.differs)")
    assert same.count() > 0
    background = same.first.locator("td").first.evaluate("c => getComputedStyle(c).backgroundColor")
    assert background != HIGHLIGHT
    assert watched == {"dialogs": [], "errors": []}


def test_a_row_upserted_while_the_page_is_open_appears(
    page: Any, server: str, tree: Path, db_url: str, watched
) -> None:
    page.goto(server + "checkpoints?exp=live-*&sort=epoch:desc")
    assert page.locator("#checkpoints").count() == 0
    assert page.locator("#summary").inner_text().startswith("0 checkpoints")
    page.evaluate("window.notReloaded = true")
    page.locator("#where").fill("epoch >= 0")  # typed, not submitted: kept across the refresh
    page.locator("html[data-live-version]").wait_for(state="attached")  # the first poll
    shown = page.evaluate("document.documentElement.dataset.liveVersion")

    new = tree / "live" / "checkpoints" / "epoch-04_step-000040.ckpt"
    write_checkpoint(new, exp_name="live-run", **{"metrics.hmean": 0.7, "training.epoch": 4})
    sync(tree, db_url)

    page.locator(f'#checkpoints tbody tr[data-path="{new}"]').wait_for(timeout=10_000)
    assert page.evaluate("document.documentElement.dataset.liveVersion") != shown
    assert page.locator("#summary").inner_text().startswith("1 checkpoint")
    assert page.evaluate("window.notReloaded") is True  # the data came in, the page stayed
    assert page.locator("#where").input_value() == "epoch >= 0"

    # A second one while a row is ticked: it appears and the tick stays.
    page.locator('#checkpoints input[name="path"]').check()
    other = tree / "live" / "checkpoints" / "epoch-05_step-000050.ckpt"
    write_checkpoint(other, exp_name="live-run", **{"metrics.hmean": 0.8, "training.epoch": 5})
    sync(tree, db_url)
    page.locator(f'#checkpoints tbody tr[data-path="{other}"]').wait_for(timeout=10_000)
    ticked = page.locator('#checkpoints input[name="path"]:checked')
    assert ticked.evaluate_all("bs => bs.map(b => b.value)") == [str(new)]
    assert page.evaluate("window.notReloaded") is True
    assert watched == {"dialogs": [], "errors": []}
