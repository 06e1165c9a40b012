"""examples/train.py runs (Hydra + Lightning, CPU) and leaves sidecars, rows and a best
checkpoint."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning.pytorch")
pytest.importorskip("hydra")

from ckpt_index.sidecar.files import read_sidecar, sidecar_path_for  # noqa: E402
from ckpt_index.sources.naming import parse_run_dir  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"


def test_example_trains_and_indexes(tmp_path):
    db = tmp_path / "index.db"
    env = {
        **os.environ,
        "CKPT_INDEX_DB": str(db),
        "EXPERIMENT_TAG": "ci_smoke",
        "PYTHONWARNINGS": "ignore",
    }
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "trainer.max_epochs=3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    [run_dir] = (tmp_path / "outputs").iterdir()
    parsed = parse_run_dir(run_dir.name)
    assert (parsed.tag, parsed.architecture, parsed.encoder, parsed.phase) == (
        "ci_smoke",
        "tinynet",
        "mlp32",
        "training",
    )
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and any(
        p.name.startswith("best-hmean-") for p in ckpts
    )
    for ckpt in ckpts:
        meta = read_sidecar(sidecar_path_for(ckpt))
        assert meta.model.architecture == "tinynet" and meta.model.encoder.model_name == "mlp32"
        assert meta.hydra_config_path == str(run_dir / ".hydra" / "config.yaml")
        assert meta.metrics.hmean is not None
    with sqlite3.connect(db) as conn:
        indexed = dict(conn.execute("SELECT checkpoint_path, hmean FROM checkpoints").fetchall())
    # One checkpoint, one row: the best-* link is an alias of the file it points to.
    assert set(indexed) == {str(p) for p in ckpts if not p.is_symlink()}

    query = subprocess.run(
        [sys.executable, "-m", "ckpt_index", "query", "--best-by", "hmean", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert query.returncode == 0, query.stderr
    [best] = json.loads(query.stdout)
    assert best["hmean"] == max(indexed.values())
    assert best["checkpoint_path"] in indexed
    assert any(Path(a).name.startswith("best-hmean-") for a in best["aliases"])
    assert "best checkpoint: " in run.stdout
