"""The Compare page's chart: the compared checkpoints' experiments, one metric's curve each.

``/api/compare/curves?path=A&path=B[&metric=M]`` reads the experiment of each compared checkpoint
(each once, in the order first named) with :func:`~ckpt_index.web.experiment.read_experiment`,
offers the metrics every one of them carries, and marks where each compared checkpoint sits. The
chart (``static/compare.js``) draws from this answer; nothing here is spliced into the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from ckpt_index.query.diff import NotIndexedError
from ckpt_index.query.spec import find_checkpoint
from ckpt_index.web.compare import CompareState
from ckpt_index.web.experiment import (
    DEFAULT_METRIC,
    FIELD_METRICS,
    Experiment,
    ExperimentNotFound,
    metric_value,
    read_experiment,
    set_metric,
)


@dataclass
class Curves:
    """The compared paths, the metrics their experiments share, the one drawn, one series per
    experiment and one mark per compared checkpoint."""

    checkpoints: list[str]
    metrics: list[str] = field(default_factory=list)
    metric: str | None = None
    series: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "checkpoints": self.checkpoints,
            "metrics": self.metrics,
            "metric": self.metric,
            "series": self.series,
            "marks": self.marks,
        }


def _default_metric(records: list[dict[str, Any]], shared: list[str]) -> str | None:
    """The first compared checkpoint's monitored metric that all share, else hmean, else the
    first shared name."""
    for record in records:
        if record.get("monitor") in shared:
            return str(record["monitor"])
    if DEFAULT_METRIC in shared:
        return DEFAULT_METRIC
    return shared[0] if shared else None


def read_curves(conn: Connection, state: CompareState, metric: str | None = None) -> Curves:
    """The curves of the checkpoints ``state`` names; ``metric`` is used when every experiment
    carries it. Raises :class:`NotIndexedError` for paths the index has no row for."""
    records, missing = [], []
    for path in state.paths:
        record = find_checkpoint(conn, path)
        if record is None:
            missing.append(path)
        else:
            records.append(record)
    if missing:
        raise NotIndexedError(missing)
    experiments: dict[str, Experiment] = {}
    for record in records:
        name = record.get("exp_name")
        if not name or name in experiments:
            continue
        try:
            experiments[name] = read_experiment(conn, name)
        except ExperimentNotFound:  # written away between the two reads
            continue
    # A checkpoint without an experiment carries its own metrics only.
    carried = [set(exp.metrics) for exp in experiments.values()]
    carried += [
        {m for m in (*record["metrics"], *FIELD_METRICS) if metric_value(record, m) is not None}
        for record in records
        if not record.get("exp_name")
    ]
    shared = sorted(set.intersection(*carried)) if carried else []
    curves = Curves(checkpoints=[r["checkpoint_path"] for r in records], metrics=shared)
    curves.metric = metric if metric in shared else _default_metric(records, shared)
    if curves.metric is None:
        return curves
    for name, exp in experiments.items():
        set_metric(exp, curves.metric)
        curves.series.append({"exp_name": name, "best_path": exp.best_path, **exp.curve})
    for record in records:
        curves.marks.append(
            {
                "path": record["checkpoint_path"],
                "exp_name": record.get("exp_name"),
                "epoch": record.get("epoch"),
                "global_step": record.get("global_step"),
                "value": metric_value(record, curves.metric),
            }
        )
    return curves


__all__ = ["Curves", "read_curves"]
