"""The OpenAPI 3.1 document of the JSON routes (served at ``/openapi.json``).

A checkpoint has the fields of ``ckpt-index query --format json``: :data:`OUTPUT_FIELDS` (their
types taken from the ``checkpoints`` table), then ``metrics`` and ``params``. With ``columns``
only the named fields (and the named metrics under ``metrics``) are present, so no field is
required.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Float, Integer

from ckpt_index.index.records import OUTPUT_FIELDS
from ckpt_index.index.tables import checkpoints
from ckpt_index.vocabulary import GROUPABLE, PHASES
from ckpt_index.web.checkpoints import (
    FACETS,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    MAX_PAGE,
    MAX_PER_PAGE,
    PER_PAGE,
)


def _field_schema(name: str) -> dict[str, Any]:
    if name == "aliases":
        return {"type": "array", "items": {"type": "string"}}
    if name == "metrics":
        return {"type": "object", "additionalProperties": {"type": "number"}}
    if name == "params":  # hyperparameters by dotted name: any JSON value
        return {"type": "object"}
    column_type = checkpoints.c[name].type
    if isinstance(column_type, Boolean):
        kind = "boolean"
    elif isinstance(column_type, Integer):  # BigInteger too
        kind = "integer"
    elif isinstance(column_type, Float):
        kind = "number"
    else:
        kind = "string"
    return {"type": [kind, "null"]}


def _parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_STRING = {"type": "string"}
_EPOCH = {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX}
_QUERY_PARAMETERS = [
    _parameter("best_by", _STRING, "Only the best checkpoint by METRIC[:max|min]."),
    _parameter("group_by", {"type": "string", "enum": list(GROUPABLE)}, "With best_by: per group."),
    _parameter("encoder", _STRING, "Only this encoder."),
    _parameter("architecture", _STRING, "Only this architecture."),
    _parameter("exp", _STRING, "Experiment name glob."),
    _parameter("phase", {"type": "string", "enum": list(PHASES)}, "Only this training_phase."),
    _parameter("min_epoch", _EPOCH, "Only epoch >= N."),
    _parameter("max_epoch", _EPOCH, "Only epoch <= N."),
    _parameter("where", _STRING, "Filter expression, the language of `query --where`."),
    _parameter(
        "sort",
        {"type": "array", "items": {"type": "string"}},
        "Sort keys FIELD[:asc|desc] (repeat the parameter).",
    ),
    _parameter("include_orphans", {"type": "boolean"}, "Also rows whose checkpoint is gone."),
    _parameter("include_unreadable", {"type": "boolean"}, "Also unreadable checkpoints."),
    _parameter("location", _STRING, "Only rows indexed at this location."),
    _parameter("columns", _STRING, "Fields and metrics to return, comma-separated."),
    _parameter(
        "page",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
        "Page number.",
    ),
    _parameter(
        "per_page",
        {"type": "integer", "minimum": 1, "maximum": INT64_MAX, "default": PER_PAGE},
        f"Rows per page (at most {MAX_PER_PAGE}).",
    ),
    _parameter("facets", {"type": "boolean", "default": True}, "Count the facets too."),
]


def openapi_document(version: str) -> dict[str, Any]:
    """The document, built from the record fields and the page's parameters."""
    checkpoint = {
        "type": "object",
        "properties": {name: _field_schema(name) for name in (*OUTPUT_FIELDS, "metrics", "params")},
    }
    facet_values = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "value": {"type": ["string", "null"]},
                "count": {"type": "integer", "minimum": 0},
            },
            "required": ["value", "count"],
        },
    }
    page = {
        "type": "object",
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1},
            "offset": {"type": "integer", "minimum": 0},
            "checkpoints": {"type": "array", "items": {"$ref": "#/components/schemas/Checkpoint"}},
            "facets": {
                "type": "object",
                "properties": dict.fromkeys(FACETS, facet_values),
            },
        },
        "required": ["total", "page", "per_page", "offset", "checkpoints", "facets"],
    }
    error = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ckpt-index",
            "version": version,
            "description": "Read-only JSON over a ckpt-index checkpoint index.",
        },
        "paths": {
            "/api/checkpoints": {
                "get": {
                    "operationId": "listCheckpoints",
                    "summary": "Checkpoints, as `ckpt-index query --format json`, one page.",
                    "parameters": _QUERY_PARAMETERS,
                    "responses": {
                        "200": _json("One page of checkpoints and the facet counts.", "Page"),
                        "400": _json("A usage error (the message of `query`).", "Error"),
                        "503": _json("The index cannot be read.", "Error"),
                    },
                }
            },
            **_extra_paths(),
            **_page_paths(),
        },
        "components": {
            "schemas": {
                "Checkpoint": checkpoint,
                "Page": page,
                "Error": error,
                **_extra_schemas(),
                **_page_schemas(),
            }
        },
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _extra_paths() -> dict[str, Any]:
    """/api/compare, /api/compare/curves, /api/health and /api/version (Compare, Health, live)."""
    unreadable = _json("The index cannot be read.", "Error")
    # The checkpoints a Compare page names: /api/compare and /api/compare/curves take the same.
    compared = _parameter(
        "path",
        {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 6},
        "An indexed checkpoint path, exactly (repeat: 2 to 6 of them).",
    )
    return {
        "/api/compare": {
            "get": {
                "operationId": "compareCheckpoints",
                "summary": "Checkpoints side by side, as `ckpt-index diff --format json`.",
                "parameters": [
                    compared,
                    _parameter("all", {"type": "boolean"}, "Every row, not only differing ones."),
                ],
                "responses": {
                    "200": _json("The compared paths and rows.", "Compare"),
                    "400": _json("Fewer than 2 or more than 6 checkpoints.", "Error"),
                    "404": _json("A path the index has no checkpoint for.", "Error"),
                    "503": unreadable,
                },
            }
        },
        "/api/compare/curves": {
            "get": {
                "operationId": "compareCurves",
                "summary": "The compared checkpoints' experiments: one metric's curve each, the "
                "metrics they share, and where each compared checkpoint sits.",
                "parameters": [
                    compared,
                    _parameter(
                        "metric",
                        {"type": "string"},
                        "The metric drawn (default: the monitored one, else hmean).",
                    ),
                ],
                "responses": {
                    "200": _json("The curves and marks.", "CompareCurves"),
                    "400": _json("Fewer than 2 or more than 6 checkpoints.", "Error"),
                    "404": _json("A path the index has no checkpoint for.", "Error"),
                    "503": unreadable,
                },
            }
        },
        "/api/health": {
            "get": {
                "operationId": "indexHealth",
                "summary": "Invalid, unreadable, orphaned and stale files, and index statistics.",
                "responses": {"200": _json("The report.", "Health"), "503": unreadable},
            }
        },
        "/api/version": {
            "get": {
                "operationId": "indexVersion",
                "summary": "A fingerprint of the index that changes when a row is written.",
                "responses": {
                    "200": _json("The fingerprint (also the ETag).", "Version"),
                    "304": {"description": "Unchanged since the If-None-Match ETag."},
                    "503": unreadable,
                },
            }
        },
    }


def _extra_schemas() -> dict[str, Any]:
    from ckpt_index.web.health import SECTIONS

    item = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "checkpoint_path": {"type": "string"},
            "reason": {"type": ["string", "null"]},
        },
        "required": ["path", "checkpoint_path", "reason"],
    }
    sections = [key for key, _, _ in SECTIONS]
    return {
        "Compare": {
            "type": "object",
            "properties": {
                "checkpoints": {"type": "array", "items": {"type": "string"}},
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "values": {"type": "array"},
                            "missing": {"type": "array", "items": {"type": "integer"}},
                        },
                        "required": ["name", "values"],
                    },
                },
            },
            "required": ["checkpoints", "rows"],
        },
        "CompareCurves": _curves_schema(),
        "Health": {
            "type": "object",
            "properties": {
                "counts": {
                    "type": "object",
                    "properties": dict.fromkeys(sections, {"type": "integer", "minimum": 0}),
                },
                **dict.fromkeys(sections, {"type": "array", "items": item}),
                "stats": {"type": "object"},
            },
            "required": ["counts", *sections, "stats"],
        },
        "Version": {
            "type": "object",
            "properties": {
                "version": {"type": "string"},
                "checkpoints": {"type": "integer", "minimum": 0},
                "max_id": {"type": ["integer", "null"]},
                "indexed_at": {"type": ["string", "null"]},
            },
            "required": ["version", "checkpoints", "max_id", "indexed_at"],
        },
    }


def _curves_schema() -> dict[str, Any]:
    numbers = {"type": "array", "items": {"type": "number"}}
    integers = {"type": "array", "items": {"type": "integer"}}
    nullable_integer = {"type": ["integer", "null"]}
    strings = {"type": "array", "items": {"type": "string"}}
    return {
        "type": "object",
        "properties": {
            "checkpoints": strings,
            "metrics": strings,
            "metric": {"type": ["string", "null"]},
            "series": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "exp_name": {"type": "string"},
                        "best_path": {"type": ["string", "null"]},
                        "epoch": integers,
                        "global_step": {"type": "array", "items": nullable_integer},
                        "value": numbers,
                        "path": strings,
                    },
                    "required": ["exp_name", "epoch", "global_step", "value", "path"],
                },
            },
            "marks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "exp_name": {"type": ["string", "null"]},
                        "epoch": nullable_integer,
                        "global_step": nullable_integer,
                        "value": {"type": ["number", "null"]},
                    },
                    "required": ["path", "exp_name", "epoch", "global_step", "value"],
                },
            },
        },
        "required": ["checkpoints", "metrics", "metric", "series", "marks"],
    }


def _page_paths() -> dict[str, Any]:
    """/api/experiments/{name} and /api/checkpoint (the Experiment and Checkpoint pages)."""
    unreadable = _json("The index cannot be read.", "Error")
    return {
        "/api/experiments/{name}": {
            "get": {
                "operationId": "experiment",
                "summary": "One experiment: its checkpoints (as `query --exp NAME --format "
                "json`, by epoch), shared and varying parameters, and a metric's curve.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "The experiment name, exactly (URL-encoded).",
                    },
                    _parameter(
                        "metric",
                        {"type": "string"},
                        "The curve's metric (default: the monitored one, else hmean).",
                    ),
                ],
                "responses": {
                    "200": _json("The experiment.", "Experiment"),
                    "404": _json("No checkpoint carries this name.", "Error"),
                    "503": unreadable,
                },
            }
        },
        "/api/checkpoint": {
            "get": {
                "operationId": "checkpoint",
                "summary": "One checkpoint: its record, parameter sources, inferred fields and "
                "the indexed sidecar.",
                "parameters": [
                    {
                        "name": "path",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "An indexed checkpoint path, exactly.",
                    }
                ],
                "responses": {
                    "200": _json("The checkpoint.", "CheckpointDetail"),
                    "400": _json("No path given.", "Error"),
                    "404": _json("The index has no checkpoint with this path.", "Error"),
                    "503": unreadable,
                },
            }
        },
    }


def _page_schemas() -> dict[str, Any]:
    record = {"$ref": "#/components/schemas/Checkpoint"}
    nullable_string = {"type": ["string", "null"]}
    return {
        "Experiment": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "checkpoints": {"type": "array", "items": record},
                "params": {
                    "type": "object",
                    "properties": {"shared": {"type": "object"}, "varying": {"type": "object"}},
                    "required": ["shared", "varying"],
                },
                "metrics": {"type": "array", "items": {"type": "string"}},
                "metric": nullable_string,
                "mode": {"type": "string", "enum": ["min", "max"]},
                "best_path": nullable_string,
                "curve": {
                    "type": "object",
                    "properties": {
                        "epoch": {"type": "array", "items": {"type": "integer"}},
                        "global_step": {"type": "array", "items": {"type": ["integer", "null"]}},
                        "value": {"type": "array", "items": {"type": "number"}},
                        "path": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "required": ["name", "checkpoints", "params", "metrics", "metric", "best_path"],
        },
        "CheckpointDetail": {
            "allOf": [
                record,
                {
                    "type": "object",
                    "properties": {
                        "param_sources": {"type": "object"},
                        "inferred_fields": {},
                        "ckpt_mtime_ns": {"type": ["integer", "null"]},
                        "sidecar_text": nullable_string,
                        "metadata": {"type": ["object", "null"]},
                    },
                    "required": ["param_sources", "inferred_fields", "sidecar_text"],
                },
            ]
        },
    }
