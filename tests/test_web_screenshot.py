"""The README's screenshots, taken by the test suite: ``ckpt-index demo`` synced into SQLite,
served by ``ckpt-index serve``, shot by Debian's Chromium at a fixed 1200x700 viewport (the
Checkpoints page sorted by hmean with metric and parameter columns; the Compare page of the three
best experiments with their curves overlaid). Each must be a real PNG of that size that is not
blank; with ``CKPT_INDEX_UPDATE_SCREENSHOTS=1`` they are written to ``docs/images/`` (how the
committed files are made, each channel rounded to a multiple of 8 to keep them small), and the
committed files are checked to be such PNGs too, under 150 KB.

Nothing is downloaded: without ``/usr/bin/chromium`` the tests are skipped, except when
``CI=true``, where a missing browser fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from helpers.browser import png_encode, png_pixels, require_browser, serving
from playwright.sync_api import expect

require_browser()

pytestmark = pytest.mark.slow

VIEWPORT = {"width": 1200, "height": 700}
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
MAX_BYTES = 150_000
UPDATE = os.environ.get("CKPT_INDEX_UPDATE_SCREENSHOTS") == "1"
CHECKPOINTS_QUERY = {
    "sort": "hmean:desc",
    "per_page": "25",
    "columns": "architecture,encoder,epoch,hmean,metrics.val/loss,"
    "params.model.optimizer.lr,params.data.batch_size",
}


def ckpt_index(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_index", *args], cwd=cwd, capture_output=True, text=True
    )
    # The demo holds one invalid sidecar on purpose: sync reports it and exits 1.
    assert done.returncode in (0, 1), done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ckpt-index demo demo_outputs`, synced and served, as the README's commands do."""
    here = tmp_path_factory.mktemp("screenshots")
    ckpt_index("demo", "demo_outputs", cwd=here)
    ckpt_index("sync", "demo_outputs", "--db", str(here / "ckpt_index.db"), cwd=here)
    with serving(str(here / "ckpt_index.db"), here) as address:
        yield address.rstrip("/")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url) as reply:
        return json.load(reply)


def check_png(data: bytes) -> None:
    """A PNG of the viewport's size that shows something: many colours, ink on most rows."""
    width, height, rows = png_pixels(data)
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    channels = len(rows[0]) // width
    colours: set[bytes] = set()
    inked = 0
    for row in rows[::4]:
        pixels = {row[i : i + channels] for i in range(0, len(row), channels * 3)}
        colours |= pixels
        inked += len(pixels) > 1
    assert len(colours) > 50, "a blank or nearly blank screenshot"
    assert inked > len(rows[::4]) // 2


def shoot(page: Any, name: str) -> bytes:
    data: bytes = page.screenshot(type="png", animations="disabled", caret="hide")
    check_png(data)
    if UPDATE:
        width, _, rows = png_pixels(data)
        small = png_encode(width, rows)
        check_png(small)
        assert len(small) < MAX_BYTES, f"{name}: {len(small)} bytes"
        IMAGES.mkdir(parents=True, exist_ok=True)
        (IMAGES / name).write_bytes(small)
    return data


def test_checkpoints_page_screenshot(page: Any, server: str, watched) -> None:
    page.set_viewport_size(VIEWPORT)
    page.goto(server + "/checkpoints?" + urlencode(CHECKPOINTS_QUERY))
    expect(page.locator("#checkpoints tbody tr").first).to_be_visible()
    assert page.locator('th[data-column="hmean"]').get_attribute("aria-sort") == "descending"
    shoot(page, "checkpoints.png")
    assert watched == {"dialogs": [], "errors": []}


def test_compare_page_screenshot(page: Any, server: str, watched) -> None:
    best = get_json(server + "/api/checkpoints?per_page=500&sort=hmean:desc")["checkpoints"]
    # The best checkpoint of each of the three best experiments.
    paths = list({r["exp_name"]: r["checkpoint_path"] for r in reversed(best)}.values())[::-1]
    paths = paths[:3]
    page.set_viewport_size(VIEWPORT)
    page.goto(server + "/compare?" + urlencode([("path", p) for p in paths]))
    chart = page.locator("#compare-chart")
    expect(chart).to_have_attribute("data-ready", "1")
    assert chart.get_attribute("data-series") == "3" and chart.get_attribute("data-marks") == "3"
    page.locator("#compare-curves").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, document.getElementById('compare-curves').offsetTop - 8)")
    shoot(page, "compare.png")
    assert watched == {"dialogs": [], "errors": []}


@pytest.mark.parametrize("name", ["checkpoints.png", "compare.png"])
def test_committed_screenshots_are_small_real_pngs(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    assert len(data) < MAX_BYTES, f"{name}: {len(data)} bytes"
    check_png(data)
