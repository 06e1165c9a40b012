"""The Experiment and Checkpoint pages through Starlette's TestClient, on SQLite and PostgreSQL:
their JSON answers what ``query`` and ``show`` answer, hostile experiment names are URL-encoded
and escaped (and never reach SQL as text), unknown names and paths are 404, the CSP stays on, and
the vendored chart library is served from the package."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.index_rows import sync
from markupsafe import escape
from starlette.testclient import TestClient

from ckpt_index.tools.demo import make_demo_tree
from ckpt_index.web import create_app
from ckpt_index.web.app import SECURITY_HEADERS
from ckpt_index.web.checkpoint import checkpoint_link
from ckpt_index.web.experiment import experiment_link

HOSTILE = "<img src=x onerror=alert(1)>/../'; DROP TABLE checkpoints; --%2F?#&"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    make_demo_tree(root)
    for epoch, hmean in ((0, 0.4), (1, 0.7), (2, 0.6)):
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
    return root


@pytest.fixture
def client(tree: Path, db_url: str):
    sync(tree, db_url)
    with TestClient(create_app(db_url)) as test_client:
        yield test_client


def cli_json(invoke_db, *args: str) -> Any:
    result = invoke_db(*args, "--format", "json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def demo_experiment(client: TestClient) -> str:
    names = {
        r["exp_name"] for r in client.get("/api/checkpoints?per_page=200").json()["checkpoints"]
    }
    return sorted(n for n in names if n and n != HOSTILE)[0]


def test_experiment_json_is_what_query_answers(client: TestClient, invoke_db) -> None:
    name = demo_experiment(client)
    got = client.get(experiment_link(name, "/api/experiments/"))
    assert got.status_code == 200, got.text
    body = got.json()
    want = cli_json(
        invoke_db, "query", "--exp", name, "--sort", "epoch:asc", "--sort", "global_step:asc"
    )
    assert body["checkpoints"] == want and len(want) >= 2
    # Shared params hold one value in every checkpoint; every param is shared or varying.
    every = {k for r in want for k in r["params"]}
    assert set(body["params"]["shared"]) | set(body["params"]["varying"]) == every
    for pname, value in body["params"]["shared"].items():
        assert all(r["params"][pname] == value for r in want)
    # The curve: the monitored metric by default, one point per checkpoint, epochs ascending.
    monitor = want[0]["monitor"]
    assert body["metric"] == monitor
    assert body["curve"]["value"] == [r["metrics"][monitor] for r in want]
    assert body["curve"]["epoch"] == [r["epoch"] for r in want]
    best = max(want, key=lambda r: r["metrics"][monitor])
    assert body["best_path"] == best["checkpoint_path"]


def test_metric_is_chosen_in_the_url(client: TestClient) -> None:
    name = demo_experiment(client)
    body = client.get(experiment_link(name, "/api/experiments/") + "?metric=val/loss").json()
    assert body["metric"] == "val/loss" and body["mode"] == "min"
    best = min(body["checkpoints"], key=lambda r: r["metrics"]["val/loss"])
    assert body["best_path"] == best["checkpoint_path"]
    page = client.get(experiment_link(name) + "?metric=val/loss").text
    assert '<option value="val/loss" selected>' in page


def test_hostile_experiment_name_is_encoded_escaped_and_exact(client: TestClient) -> None:
    link = experiment_link(HOSTILE)
    assert "<" not in link and "#" not in link and "?" not in link
    api = client.get(experiment_link(HOSTILE, "/api/experiments/"))
    assert api.status_code == 200, api.text
    body = api.json()
    assert body["name"] == HOSTILE and len(body["checkpoints"]) == 3
    assert body["curve"]["epoch"] == [0, 1, 2] and body["curve"]["value"] == [0.4, 0.7, 0.6]
    assert body["best_path"].endswith("epoch-01_step-000020.ckpt")
    page = client.get(link)
    assert page.status_code == 200
    assert "<img src=x" not in page.text
    assert str(escape(HOSTILE)) in page.text
    # The chart's data block cannot be closed by a value.
    block = re.search(
        r'<script type="application/json" id="experiment-data">(.*?)</script>', page.text, re.S
    )
    assert block is not None and "<" not in block.group(1)
    assert json.loads(block.group(1))["value"] == [0.4, 0.7, 0.6]
    # The glob characters of a name are no wildcard: a prefix names nothing.
    assert client.get(experiment_link(HOSTILE[:5], "/api/experiments/")).status_code == 404
    assert client.get(experiment_link("*", "/api/experiments/")).status_code == 404


def test_unknown_experiment_and_path_are_404(client: TestClient) -> None:
    for url in (
        "/experiments/no-such-experiment",
        "/api/experiments/no-such-experiment",
        checkpoint_link("/no/such.ckpt"),
        checkpoint_link("/no/such.ckpt", "/api/checkpoint"),
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert (
            response.headers["content-security-policy"]
            == SECURITY_HEADERS["content-security-policy"]
        )
    assert client.get("/checkpoint").status_code == 400


def test_checkpoint_json_is_what_show_answers(client: TestClient, invoke_db) -> None:
    name = demo_experiment(client)
    record = client.get(experiment_link(name, "/api/experiments/")).json()["checkpoints"][-1]
    path = record["checkpoint_path"]
    got = client.get(checkpoint_link(path, "/api/checkpoint"))
    assert got.status_code == 200, got.text
    body = got.json()
    for key, value in record.items():
        assert body[key] == value, key
    assert set(body["param_sources"]) == set(body["params"])
    assert {s["source"] for s in body["param_sources"].values()} <= {"sidecar", "hydra", "hparams"}
    assert body["metadata"] is not None
    assert json.loads(body["sidecar_text"]) == body["metadata"]
    page = client.get(checkpoint_link(path))
    assert page.status_code == 200
    text = page.text
    assert 'id="copy-path"' in text and "/static/checkpoint.js" in text
    for pname in body["params"]:
        assert f'<tr data-name="{html.escape(pname)}">' in text
    assert html.escape(experiment_link(name)) in text


def test_checkpoints_page_links_rows_and_experiments(client: TestClient) -> None:
    text = client.get("/checkpoints?per_page=200").text
    assert html.escape(experiment_link(HOSTILE)) in text
    links = re.findall(r'<a class="checkpoint-link" href="([^"]*)"', text)
    assert links
    first = client.get(html.unescape(links[0]))
    assert first.status_code == 200 and 'id="copy-path"' in first.text


def test_every_page_keeps_the_csp_and_vendor_files_are_served(client: TestClient) -> None:
    name = demo_experiment(client)
    for url in (experiment_link(name), experiment_link(HOSTILE)):
        response = client.get(url)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert not re.search(r"<script(?![^>]*(src=|type=\"application/json\"))", response.text)
    for asset, kind in (
        ("vendor/uPlot.iife.min.js", "text/javascript"),
        ("vendor/uPlot.min.css", "text/css"),
        ("vendor/uPlot.LICENSE.txt", "text/plain"),
        ("experiment.js", "text/javascript"),
        ("checkpoint.js", "text/javascript"),
    ):
        response = client.get("/static/" + asset)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    assert "MIT" in client.get("/static/vendor/uPlot.LICENSE.txt").text
    for url in ("/static/vendor/../app.py", "/static/vendor/", "/static/vendor/x.js"):
        assert client.get(url).status_code == 404, url


def test_openapi_lists_the_experiment_and_checkpoint_json(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    experiment = document["paths"]["/api/experiments/{name}"]["get"]
    assert {p["name"] for p in experiment["parameters"]} == {"name", "metric"}
    assert set(experiment["responses"]) == {"200", "404", "503"}
    name = demo_experiment(client)
    body = client.get(experiment_link(name, "/api/experiments/")).json()
    schema = document["components"]["schemas"]["Experiment"]
    assert set(schema["required"]) <= set(body) and set(body) <= set(schema["properties"])
    detail = document["components"]["schemas"]["CheckpointDetail"]["allOf"][1]
    record = client.get(
        checkpoint_link(body["checkpoints"][0]["checkpoint_path"], "/api/checkpoint")
    ).json()
    assert set(detail["required"]) <= set(record)
