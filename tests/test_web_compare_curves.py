"""``/api/compare/curves`` (the Compare page's chart data) through Starlette's TestClient on SQLite
and PostgreSQL: one series per distinct experiment of the compared checkpoints, equal to that
experiment's own curve; the metrics every one of them carries; the monitored metric by default and
an unknown one ignored; a mark per compared checkpoint; the page escapes names from files and
embeds no data; errors and the OpenAPI document as for ``/api/compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.index_rows import sync
from starlette.testclient import TestClient

from ckpt_index.tools.demo import make_demo_tree
from ckpt_index.web import create_app
from ckpt_index.web.experiment import experiment_link

HOSTILE_METRIC = "<img src=x onerror=alert(2)>"


@pytest.fixture
def client(tmp_path: Path, db_url: str):
    """The demo tree and a 3-epoch experiment whose only extra metric is named with markup."""
    root = tmp_path / "outputs"
    make_demo_tree(root)
    for epoch, value in enumerate((0.2, 0.4, 0.7)):
        write_checkpoint(
            root / "odd" / "checkpoints" / f"epoch-{epoch:02d}_step-{10 * (epoch + 1):06d}.ckpt",
            exp_name="odd-run",
            **{
                "training.epoch": epoch,
                "training.global_step": 10 * (epoch + 1),
                "metrics.hmean": value,
                f"metrics.additional_metrics.{HOSTILE_METRIC}": value,
            },
        )
    sync(root, db_url)
    with TestClient(create_app(db_url)) as test_client:
        yield test_client


def rows_of(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    reply = client.get("/api/checkpoints?" + urlencode({"per_page": 500, **params}))
    assert reply.status_code == 200, reply.text
    return list(reply.json()["checkpoints"])


def curves(client: TestClient, paths: list[str], **extra: str) -> Any:
    reply = client.get(
        "/api/compare/curves?" + urlencode([("path", p) for p in paths] + list(extra.items()))
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_one_series_per_experiment_equal_to_its_own_curve(client: TestClient) -> None:
    best = rows_of(client, exp="ocr_*", sort="hmean:desc")
    first = best[0]
    other = next(r for r in best if r["exp_name"] != first["exp_name"])
    same = next(r for r in best[1:] if r["exp_name"] == first["exp_name"])
    chosen = [first, other, same]
    answer = curves(client, [r["checkpoint_path"] for r in chosen])
    assert answer["checkpoints"] == [r["checkpoint_path"] for r in chosen]
    assert answer["metric"] == first["monitor"] == "val/hmean"  # the monitored one by default
    assert [s["exp_name"] for s in answer["series"]] == [first["exp_name"], other["exp_name"]]
    for series in answer["series"]:
        own = client.get(
            experiment_link(series["exp_name"], "/api/experiments/") + "?metric=val/hmean"
        ).json()
        assert {k: series[k] for k in own["curve"]} == own["curve"]
        assert series["best_path"] == own["best_path"]
        # The metrics offered are carried by every compared experiment.
        assert set(answer["metrics"]) <= set(own["metrics"])
    assert [m["path"] for m in answer["marks"]] == answer["checkpoints"]
    for mark, record in zip(answer["marks"], chosen, strict=True):
        assert mark["epoch"] == record["epoch"] and mark["exp_name"] == record["exp_name"]
        assert mark["value"] == record["metrics"]["val/hmean"]
    # Another shared metric is drawn when asked; an unknown one falls back to the default.
    assert curves(client, answer["checkpoints"], metric="val/loss")["metric"] == "val/loss"
    assert curves(client, answer["checkpoints"], metric="nope")["metric"] == "val/hmean"


def test_only_shared_metrics_are_offered(client: TestClient) -> None:
    odd = rows_of(client, exp="odd-run")
    demo = rows_of(client, exp="ocr_*", sort="hmean:desc")[0]
    alone = curves(client, [odd[0]["checkpoint_path"], odd[1]["checkpoint_path"]])
    assert HOSTILE_METRIC in alone["metrics"] and len(alone["series"]) == 1
    assert len(alone["series"][0]["epoch"]) == 3
    mixed = curves(client, [odd[0]["checkpoint_path"], demo["checkpoint_path"]])
    assert HOSTILE_METRIC not in mixed["metrics"] and "hmean" in mixed["metrics"]
    assert mixed["metric"] == "val/hmean"  # both monitor it (the seed sidecar, the demo's)
    # A metric one of them lacks is not drawn: the default is.
    pair = [odd[0]["checkpoint_path"], demo["checkpoint_path"]]
    assert curves(client, pair, metric=HOSTILE_METRIC)["metric"] == "val/hmean"


def test_page_escapes_the_chosen_metric_and_embeds_no_data(client: TestClient) -> None:
    odd = [r["checkpoint_path"] for r in rows_of(client, exp="odd-run")][:2]
    query = urlencode([("path", p) for p in odd] + [("metric", HOSTILE_METRIC)])
    page = client.get("/compare?" + query)
    assert page.status_code == 200
    assert HOSTILE_METRIC not in page.text and "&lt;img src=x onerror=alert(2)&gt;" in page.text
    assert 'id="compare-chart"' in page.text and 'data-src="/api/compare/curves?path=' in page.text
    assert "<script>" not in page.text and 'src="/static/compare.js"' in page.text
    assert client.get("/static/compare.js").status_code == 200


def test_errors_are_those_of_compare(client: TestClient) -> None:
    known = rows_of(client)[0]["checkpoint_path"]
    one = client.get("/api/compare/curves?" + urlencode({"path": known}))
    assert one.status_code == 400 and "2 to 6" in one.json()["error"]
    gone = client.get(
        "/api/compare/curves?" + urlencode([("path", known), ("path", "/nowhere.ckpt")])
    )
    assert gone.status_code == 404 and "not in the index" in gone.json()["error"]


def test_curves_conform_to_the_openapi_document(client: TestClient, db_url: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(db_url))
    operation = schema["/api/compare/curves"]["GET"]
    seen: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call_and_validate(
            excluded_checks=[schemathesis.checks.positive_data_acceptance]
        )
        seen.add(response.status_code)

    check()
    assert seen <= {200, 400, 404} and seen & {400, 404}
    paths = [r["checkpoint_path"] for r in rows_of(client, exp="ocr_*")][:3]
    case = operation.Case(query={"path": paths, "metric": "val/loss"})
    assert case.call_and_validate().status_code == 200


def test_no_shared_metric_draws_nothing(client: TestClient) -> None:
    """The demo's checkpoints with an invalid or no sidecar have no experiment and no metric."""
    rows = rows_of(client, include_unreadable="1")
    lone = [r for r in rows if not r["exp_name"] and not r["metrics"] and r["hmean"] is None]
    assert lone
    best = rows_of(client, exp="ocr_*", sort="hmean:desc")[0]
    answer = curves(client, [lone[0]["checkpoint_path"], best["checkpoint_path"]], metric="hmean")
    assert answer["metrics"] == [] and answer["metric"] is None
    assert answer["series"] == [] and answer["marks"] == []
