"""``ckpt-index serve``'s Compare and Health pages and the live fingerprint, through Starlette's
TestClient on SQLite and PostgreSQL: /api/compare answers what ``diff --format json`` prints, the
page highlights exactly the differing rows and escapes what comes from files, a bad count is a
400; /health reports what the index knows of invalid, unreadable and orphaned files; /api/version
changes when a row is upserted and only then."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.files import age
from helpers.index_rows import sync
from helpers.sidecars import seed_document
from starlette.testclient import TestClient

from ckpt_index.tools.demo import make_demo_tree
from ckpt_index.web import create_app
from ckpt_index.web.health import VERSION_TTL_S

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The demo tree (it has one invalid sidecar), an experiment named with markup, a truncated
    checkpoint under a valid sidecar and a sidecar whose checkpoint is gone."""
    root = tmp_path / "outputs"
    make_demo_tree(root)
    write_checkpoint(
        root / "hostile" / "checkpoints" / "epoch-01_step-000010.ckpt",
        exp_name=HOSTILE,
        **{"metrics.hmean": 0.5},
    )
    cut = write_checkpoint(
        root / "broken" / "checkpoints" / "epoch-02_step-000020.ckpt", seed_document()
    )
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    write_checkpoint(
        root / "gone" / "checkpoints" / "epoch-03_step-000030.ckpt",
        seed_document(),
        ckpt_file=False,
    )
    age(root)  # out of the racy window: a second sync with nothing changed writes nothing
    return root


@pytest.fixture
def client(tree: Path, db_url: str):
    sync(tree, db_url)
    with TestClient(create_app(db_url)) as test_client:
        yield test_client


def paths_of(client: TestClient, **params: Any) -> list[str]:
    reply = client.get("/api/checkpoints?" + urlencode({"per_page": 500, **params}))
    assert reply.status_code == 200, reply.text
    return [r["checkpoint_path"] for r in reply.json()["checkpoints"]]


def compare_url(base: str, paths: list[str], **extra: str) -> str:
    return base + "?" + urlencode([("path", p) for p in paths] + list(extra.items()))


def page_rows(text: str) -> dict[str, bool]:
    """Each compared row of the page: name -> whether it carries the ``differs`` class."""
    found = re.findall(r'<tr data-name="([^"]*)"( class="differs")?>', text)
    return {html.unescape(name): bool(differs) for name, differs in found}


@pytest.mark.parametrize("count", [2, 3])
def test_api_compare_is_diffs_json(client: TestClient, invoke_db, count: int) -> None:
    paths = paths_of(client, exp="ocr_*", sort="hmean:desc")[:count]
    for flag, extra in (([], {}), (["--all"], {"all": "1"})):
        result = invoke_db("diff", *paths, *flag, "--format", "json")
        assert result.exit_code == 0, result.output
        expected = json.loads(result.stdout)
        reply = client.get(compare_url("/api/compare", paths, **extra))
        assert reply.status_code == 200, reply.text
        assert reply.json() == expected
        assert expected["checkpoints"] == paths and len(expected["rows"]) > 3


def test_page_highlights_the_differing_rows_only(client: TestClient) -> None:
    paths = paths_of(client, exp="ocr_*", sort="hmean:desc")[:2]
    every = client.get(compare_url("/api/compare", paths, all="1")).json()["rows"]
    differing = {r["name"] for r in client.get(compare_url("/api/compare", paths)).json()["rows"]}
    assert differing and len(differing) < len(every)

    page = client.get(compare_url("/compare", paths, all="1"))
    assert page.status_code == 200
    rows = page_rows(page.text)
    assert list(rows) == [r["name"] for r in every]
    assert {name for name, differs in rows.items() if differs} == differing
    # One column per checkpoint, headed by its path.
    headers = re.findall(r'<th scope="col" class="path" data-path="([^"]*)"', page.text)
    assert [html.unescape(h) for h in headers] == paths
    # By default only the differing rows, all highlighted.
    only = page_rows(client.get(compare_url("/compare", paths)).text)
    assert set(only) == differing and all(only.values())


def test_values_from_files_are_escaped(client: TestClient) -> None:
    hostile = paths_of(client, exp=HOSTILE)
    assert len(hostile) == 1
    other = paths_of(client, exp="ocr_*")[0]
    page = client.get(compare_url("/compare", [hostile[0], other]))
    assert page.status_code == 200
    assert HOSTILE not in page.text and "<img" not in page.text
    assert html.escape(HOSTILE, quote=False) in page.text
    assert page_rows(page.text)["exp_name"] is True


@pytest.mark.parametrize("count", [0, 1, 7])
def test_a_bad_count_is_a_clear_400(client: TestClient, count: int) -> None:
    paths = paths_of(client)[:count]
    assert len(paths) == count
    page = client.get(compare_url("/compare", paths))
    assert page.status_code == 400
    assert f"compare takes 2 to 6 different checkpoints (path=...&amp;path=...); {count} given" in (
        page.text
    )
    api = client.get(compare_url("/api/compare", paths))
    assert api.status_code == 400 and "2 to 6" in api.json()["error"]
    # The same path twice is one checkpoint.
    if count == 1:
        assert client.get(compare_url("/compare", paths * 2)).status_code == 400


def test_a_path_not_indexed_is_a_404(client: TestClient) -> None:
    known = paths_of(client)[0]
    reply = client.get(compare_url("/api/compare", [known, "/nowhere/" + HOSTILE]))
    assert reply.status_code == 404 and "not in the index" in reply.json()["error"]
    page = client.get(compare_url("/compare", [known, "/nowhere/" + HOSTILE]))
    assert page.status_code == 404 and "<img" not in page.text


def test_health_reports_invalid_unreadable_and_orphaned(client: TestClient, tree: Path) -> None:
    report = client.get("/api/health").json()
    invalid = {item["path"]: item["reason"] for item in report["invalid"]}
    demo_invalid = [p for p in invalid if p.startswith(str(tree / "ocr_"))]
    assert len(demo_invalid) == 1 and "hmean" in invalid[demo_invalid[0]]
    assert demo_invalid[0].endswith(".metadata.yaml")

    cut = str(tree / "broken" / "checkpoints" / "epoch-02_step-000020.ckpt")
    unreadable = {item["path"]: item["reason"] for item in report["unreadable"]}
    assert list(unreadable) == [cut] and unreadable[cut]

    gone = str(tree / "gone" / "checkpoints" / "epoch-03_step-000030.metadata.yaml")
    assert gone in [item["path"] for item in report["orphaned"]]
    assert report["counts"]["unreadable"] == 1 and report["counts"]["invalid"] == len(invalid)
    stats = report["stats"]
    assert stats["unreadable"] == 1 and stats["invalid"] == report["counts"]["invalid"]
    assert stats["orphaned_sidecars"] == report["counts"]["orphaned"] >= 1

    page = client.get("/health")
    assert page.status_code == 200
    for section, path in (("invalid", demo_invalid[0]), ("unreadable", cut), ("orphaned", gone)):
        block = re.search(rf'id="health-{section}".*?</section>', page.text, re.S)
        assert block and f'data-path="{html.escape(path)}"' in block.group(0), section
    assert html.escape(unreadable[cut]) in page.text
    assert f'<dd data-stat="checkpoints">{stats["checkpoints"]}</dd>' in page.text


def test_health_escapes_reasons_from_files(client: TestClient, tree: Path, db_url: str) -> None:
    bad = tree / "worse" / "checkpoints" / "epoch-01_step-000001.ckpt"
    write_checkpoint(bad, f"exp_name: [\n{HOSTILE}")  # not YAML: the reason quotes it
    sync(tree, db_url)
    page = client.get("/health")
    assert str(bad.with_suffix(".metadata.yaml")) in [
        item["path"] for item in client.get("/api/health").json()["invalid"]
    ]
    assert "<img" not in page.text


def test_version_changes_when_a_row_is_upserted_and_not_otherwise(
    client: TestClient, tree: Path, db_url: str
) -> None:
    first = client.get("/api/version")
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert client.get("/api/version").json() == first.json()
    unchanged = client.get("/api/version", headers={"if-none-match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    sync(tree, db_url)  # nothing changed on disk: no row written
    assert client.get("/api/version", headers={"if-none-match": etag}).status_code == 304

    write_checkpoint(tree / "new" / "checkpoints" / "epoch-00_step-000001.ckpt")
    age(tree / "new")
    sync(tree, db_url)
    # Read again at once on SQLite (its file changed), within VERSION_TTL_S on PostgreSQL.
    deadline = time.monotonic() + 3 * VERSION_TTL_S
    changed = client.get("/api/version", headers={"if-none-match": etag})
    while changed.status_code == 304 and time.monotonic() < deadline:
        time.sleep(0.1)
        changed = client.get("/api/version", headers={"if-none-match": etag})
    if db_url.startswith("sqlite"):
        assert time.monotonic() < deadline - 2 * VERSION_TTL_S
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["checkpoints"] == first.json()["checkpoints"] + 1
    assert (
        client.get("/api/version", headers={"if-none-match": changed.headers["etag"]}).status_code
        == 304
    )


def test_compare_health_and_version_conform_to_the_openapi_document(
    client: TestClient, db_url: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(db_url))
    for route in ("/api/health", "/api/version"):
        case = schema[route]["GET"].Case()
        assert case.call_and_validate().status_code == 200
    seen: set[int] = set()
    paths = paths_of(client)[:3]

    @given(case=schema["/api/compare"]["GET"].as_strategy())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call_and_validate(
            excluded_checks=[schemathesis.checks.positive_data_acceptance]
        )
        seen.add(response.status_code)

    check()
    assert seen <= {200, 400, 404} and seen & {400, 404}
    # And a real comparison conforms.
    case = schema["/api/compare"]["GET"].Case(query={"path": paths, "all": True})
    assert case.call_and_validate().status_code == 200
