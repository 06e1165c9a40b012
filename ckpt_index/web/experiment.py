"""The Experiment page: one experiment's checkpoints, its parameters and its metric curves.

An experiment is named by its exact ``exp_name`` (``/experiments/{name}``, URL-encoded). Its
checkpoints are read with :func:`~ckpt_index.query.spec.run_query` (the name goes to a bound
``LIKE`` whose glob characters are then checked by exact comparison here), so ``/api/experiments/X``
answers the records ``query --exp X --format json`` prints for a name without glob characters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import Connection

from ckpt_index.query.spec import QuerySpec, run_query

#: A name longer than this names no experiment (a bound on the request's work).
MAX_NAME = 1024
#: The metric a curve shows when the checkpoints name no monitored metric.
DEFAULT_METRIC = "hmean"
#: The fields plotted like metrics (a checkpoint's ``hmean`` etc. are columns, not metrics).
FIELD_METRICS = ("hmean", "precision", "recall", "validation_loss")


class ExperimentNotFound(LookupError):
    """No checkpoint of the index carries this experiment name (a 404 answer)."""


@dataclass
class Experiment:
    """What the page shows: records in epoch order, parameters, the chosen metric's curve."""

    name: str
    checkpoints: list[dict[str, Any]]
    shared: dict[str, Any] = field(default_factory=dict)
    varying: dict[str, list[Any]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    metric: str | None = None
    mode: str = "max"
    best_path: str | None = None
    #: ``{"epoch": [...], "global_step": [...], "value": [...], "path": [...]}`` sorted by epoch.
    curve: dict[str, list[Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoints": self.checkpoints,
            "params": {"shared": self.shared, "varying": self.varying},
            "metrics": self.metrics,
            "metric": self.metric,
            "mode": self.mode,
            "best_path": self.best_path,
            "curve": self.curve,
        }


def experiment_link(name: str, base: str = "/experiments/") -> str:
    """The URL of an experiment's page (every character but unreserved ones encoded)."""
    return base + quote(name, safe="")


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """A record's finite value of ``metric`` (a metric, or a field plotted like one), else None."""
    value = record["metrics"].get(metric)
    if value is None and metric in FIELD_METRICS:
        value = record.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_experiment(conn: Connection, name: str, metric: str | None = None) -> Experiment:
    """The experiment ``name`` (exact); raises :class:`ExperimentNotFound`."""
    if not name or len(name) > MAX_NAME or "\x00" in name:
        raise ExperimentNotFound(name)
    spec = QuerySpec(exp=name, sort=("epoch:asc", "global_step:asc"))
    records = [r for r in run_query(conn, spec, params=True) if r["exp_name"] == name]
    if not records:
        raise ExperimentNotFound(name)
    exp = Experiment(name=name, checkpoints=records)
    # Parameters: shared when every checkpoint has the same value, else varying (values seen).
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r.get("params") or {}))
    missing = object()
    for pname in names:
        values = [(r.get("params") or {}).get(pname, missing) for r in records]
        distinct: list[Any] = []
        for v in values:
            if v is not missing and v not in distinct:
                distinct.append(v)
        if len(distinct) == 1 and missing not in values:
            exp.shared[pname] = distinct[0]
        else:
            exp.varying[pname] = distinct
    seen: dict[str, None] = {}
    for f in FIELD_METRICS:
        if any(r.get(f) is not None for r in records):
            seen[f] = None
    for r in records:
        seen.update(dict.fromkeys(r["metrics"]))
    exp.metrics = sorted(seen)
    monitors = [r["monitor"] for r in records if r.get("monitor")]
    if metric is None or metric not in seen:
        metric = monitors[0] if monitors and monitors[0] in seen else None
        if metric is None:
            fallback = exp.metrics[0] if exp.metrics else None
            metric = DEFAULT_METRIC if DEFAULT_METRIC in seen else fallback
    set_metric(exp, metric)
    return exp


def set_metric(exp: Experiment, metric: str | None) -> None:
    """Point ``exp`` at ``metric``: its mode (the checkpoints' own when they monitor it, else
    ``min`` for a loss), its curve in epoch order and its best checkpoint."""
    records = exp.checkpoints
    exp.metric = metric
    modes = [r["mode"] for r in records if r.get("mode") and r.get("monitor") == metric]
    exp.mode = modes[0] if modes else ("min" if "loss" in (metric or "") else "max")
    curve: dict[str, list[Any]] = {"epoch": [], "global_step": [], "value": [], "path": []}
    best: tuple[float, str] | None = None
    if metric is not None:
        for r in records:
            value = metric_value(r, metric)
            if value is None or r.get("epoch") is None:
                continue
            curve["epoch"].append(r["epoch"])
            curve["global_step"].append(r.get("global_step"))
            curve["value"].append(value)
            curve["path"].append(r["checkpoint_path"])
            key = -value if exp.mode == "max" else value
            if best is None or key < best[0]:
                best = (key, r["checkpoint_path"])
    exp.curve = curve
    exp.best_path = best[1] if best else None


def experiment_routes(reader: Any, templates: Any) -> list[Any]:
    """``/experiments/{name}`` (the page) and ``/api/experiments/{name}`` over ``reader``."""
    import json

    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ckpt_index.index.engine import IndexError_
    from ckpt_index.web.checkpoint import checkpoint_link

    def name_of(request: Request) -> str:
        """The name from the raw path, decoded once (a name may hold ``%2F`` or ``/``)."""
        raw = request.scope.get("raw_path")
        if isinstance(raw, bytes):
            text = raw.decode("latin-1").split("?", 1)[0]
            for prefix in ("/api/experiments/", "/experiments/"):
                if text.startswith(prefix):
                    return unquote(text[len(prefix) :], errors="replace")
        return str(request.path_params["name"])

    def answer(request: Request) -> tuple[Experiment | None, str | None, int]:
        name = name_of(request)
        metric = request.query_params.get("metric") or None
        try:
            return reader.read(lambda conn: read_experiment(conn, name, metric)), None, 200
        except ExperimentNotFound:
            return None, f"no experiment named {name!r} in the index", 404
        except IndexError_ as exc:
            return None, str(exc), 503

    def page(request: Request) -> Response:
        exp, error, status = answer(request)
        chart = None
        if exp is not None:
            # Data for experiment.js, in a JSON block (not executed); "<" escaped so that no
            # value can close the element.
            chart = (
                json.dumps(
                    {
                        "metric": exp.metric,
                        "mode": exp.mode,
                        "best_path": exp.best_path,
                        **exp.curve,
                    }
                )
                .replace("<", "\\u003c")
                .replace(">", "\\u003e")
                .replace("&", "\\u0026")
            )
        context = {
            "active": "experiments",
            "exp": exp,
            "error": error,
            "chart": chart,
            "checkpoint_link": checkpoint_link,
            "experiment_link": experiment_link,
            "name": name_of(request),
        }
        return templates.TemplateResponse(request, "experiment.html", context, status_code=status)

    def api(request: Request) -> Response:
        exp, error, status = answer(request)
        if exp is None:
            return JSONResponse({"error": error}, status_code=status)
        return JSONResponse(exp.as_json())

    return [
        Route("/experiments/{name:path}", page),
        Route("/api/experiments/{name:path}", api),
    ]


__all__ = [
    "Experiment",
    "ExperimentNotFound",
    "experiment_link",
    "experiment_routes",
    "metric_value",
    "read_experiment",
    "set_metric",
]
