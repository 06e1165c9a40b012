"""``ckpt-index serve`` in a real browser: Debian's Chromium driven by Playwright, against the
server started by the CLI over the demo tree, on SQLite and PostgreSQL.

Nothing is downloaded: Playwright launches ``/usr/bin/chromium`` (``apt-get install -y chromium``;
``.ci/run`` installs it). Without it the tests are skipped, except in CI (``CI=true``), where a
missing browser fails them.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import require_browser, serving
from helpers.checkpoints import write_checkpoint
from helpers.index_rows import sync

from ckpt_index.tools.demo import make_demo_tree

HOSTILE = "<img src=x onerror=alert(1)>"

require_browser()

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[str]:
    """The demo tree plus an experiment named with markup, indexed, served by `ckpt-index serve`
    on a free port; yields the address it prints."""
    root = tmp_path / "outputs"
    make_demo_tree(root)
    write_checkpoint(
        root / "hostile" / "checkpoints" / "epoch-01_step-000010.ckpt",
        exp_name=HOSTILE,
        **{"metrics.hmean": 0.5},
    )
    sync(root, db_url)
    with serving(db_url, tmp_path) as address:
        yield address


def api(address: str, query: str = "") -> dict[str, Any]:
    with urllib.request.urlopen(address + "api/checkpoints?per_page=500&" + query) as reply:
        return json.load(reply)


def rows(page: Any) -> list[str]:
    return page.locator("#checkpoints tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.path)"
    )


def test_sorting_by_hmean_puts_the_best_first(page: Any, server: str, watched) -> None:
    best = api(server, "best_by=hmean")["checkpoints"][0]
    page.goto(server)
    assert page.url.endswith("/checkpoints")
    page.locator('th[data-column="hmean"] a').click()
    page.wait_for_url(re.compile(r"sort=hmean%3Adesc"))
    assert page.locator('th[data-column="hmean"]').get_attribute("aria-sort") == "descending"
    assert rows(page)[0] == best["checkpoint_path"]
    first_hmean = page.locator('#checkpoints tbody tr >> nth=0 >> td[data-column="hmean"]')
    assert float(first_hmean.inner_text()) == pytest.approx(best["hmean"], abs=1e-4)
    page.locator('th[data-column="hmean"] a').click()  # again: ascending
    page.wait_for_url(re.compile(r"sort=hmean%3Aasc"))
    assert rows(page)[0] != best["checkpoint_path"]
    assert watched == {"dialogs": [], "errors": []}


def test_where_filters_and_a_bad_one_shows_the_caret(page: Any, server: str, watched) -> None:
    page.goto(server + "checkpoints")
    box = page.locator("#where")
    box.fill("encoder = 'resnet50' and epoch >= 5")
    box.press("Enter")
    page.wait_for_url(re.compile(r"where="))
    expected = api(server, "where=" + urllib.parse.quote("encoder = 'resnet50' and epoch >= 5"))
    assert sorted(rows(page)) == sorted(r["checkpoint_path"] for r in expected["checkpoints"])
    encoders = page.locator('#checkpoints td[data-column="encoder"]').all_inner_texts()
    assert encoders and set(encoders) == {"resnet50"}
    assert page.locator("#query-error").count() == 0

    page.locator("#where").fill("hmean >> 0.5")
    page.locator("#where").press("Enter")
    error = page.locator("#query-error")
    error.wait_for()
    lines = error.inner_text().splitlines()
    assert len(lines) == 3 and lines[1] == "  hmean >> 0.5"
    caret = lines[-1].index("^") - 2
    assert lines[-2][2:][caret] == ">" and "at position 7" in lines[0]
    assert page.locator("#where").input_value() == "hmean >> 0.5"
    # The page of a usage error answers 400 (the browser logs that, and nothing else).
    bad_request = "the server responded with a status of 400 (Bad Request)"
    assert watched["dialogs"] == [] and [bad_request in e for e in watched["errors"]] == [True]


def test_a_facet_click_narrows(page: Any, server: str, watched) -> None:
    page.goto(server + "checkpoints")
    link = page.locator('.facet[data-facet="architecture"] a[data-value="dbnet"]')
    count = int(link.locator(".count").inner_text())
    link.click()
    page.wait_for_url(re.compile(r"architecture=dbnet"))
    assert page.locator("#summary").inner_text().startswith(f"{count} checkpoint")
    archs = page.locator('#checkpoints td[data-column="architecture"]').all_inner_texts()
    assert archs and set(archs) == {"dbnet"}
    assert watched == {"dialogs": [], "errors": []}


def test_an_experiment_named_with_markup_is_text(page: Any, server: str, watched) -> None:
    page.goto(server + "checkpoints?per_page=500")
    cell = page.locator('#checkpoints td[data-column="exp_name"]', has_text=HOSTILE)
    assert cell.count() == 1 and cell.inner_text() == HOSTILE
    facet = page.locator('.facet[data-facet="experiment"] a', has_text=HOSTILE)
    assert facet.count() == 1
    assert page.locator("main img").count() == 0
    facet.click()  # its link filters on the name, quoted
    page.wait_for_url(re.compile(r"where="))
    assert rows(page) and page.locator("#where").input_value().startswith("exp_name = '<img")
    assert watched == {"dialogs": [], "errors": []}
