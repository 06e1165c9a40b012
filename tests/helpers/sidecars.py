"""The seed sidecars in ``tests/data``: every shape a real sidecar takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parents[1] / "data"
SEED_SIDECARS = sorted(DATA.glob("seed_*.metadata.yaml"))


def seed_document(name: str = "seed_callback") -> dict[str, Any]:
    """A fresh copy of one of the seed sidecars as a mapping."""
    return yaml.safe_load((DATA / f"{name}.metadata.yaml").read_text())
