"""A real Hydra multirun of the example trainer with the callbacks, then parameter queries.

``python examples/train.py -m model.lr=0.1,0.01 data.batch_size=8,16`` trains four tiny runs on
the CPU (once per module); the callback writes sidecars with the runs' hyperparameters and index
rows. Then ``--group-by params.model.lr --best-by hmean`` gives the best checkpoint of each
learning rate and ``--varying`` exactly the parameters the sweep varied, both checked against the
sidecars themselves; and the same tree without sidecars, synced from the fallbacks (checkpoint
hparams, ``.hydra/config.yaml``, ``overrides.yaml``), gives the same parameters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning.pytorch")
pytest.importorskip("hydra")

from click.testing import CliRunner  # noqa: E402
from sqlalchemy import text  # noqa: E402

from ckpt_index.cli import cli  # noqa: E402
from ckpt_index.hyperparams import decode_value, flatten  # noqa: E402
from ckpt_index.index.engine import open_engine  # noqa: E402
from ckpt_index.sidecar.files import read_sidecar, sidecar_path_for  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train.py"
LRS = (0.1, 0.01)
BATCH_SIZES = (8, 16)
#: What the sweep varies: the two overrides, and the module's own ``lr`` hparam (TinyNet's
#: constructor argument, saved by save_hyperparameters(): the module's hparams are recorded
#: beside the Hydra config, flat, as Lightning logs them).
VARIED = {"model.lr", "data.batch_size", "lr"}
#: Overrides given to every job: set by an override (so marked), but the same in every run.
COMMON = ("trainer.max_epochs=2", "data.train_size=64", "data.val_size=64")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Any]:
    """One multirun for the module: its sweep dir, index and checkpoints' sidecars."""
    root = tmp_path_factory.mktemp("multirun")
    db = root / "index.db"
    sweep_dir = root / "sweep"
    env = {**os.environ, "CKPT_INDEX_DB": str(db), "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "-m",
            f"model.lr={','.join(map(str, LRS))}",
            f"data.batch_size={','.join(map(str, BATCH_SIZES))}",
            *COMMON,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ckpts = sorted(p for p in sweep_dir.glob("*/checkpoints/*.ckpt") if not p.is_symlink())
    metas = {str(p): read_sidecar(sidecar_path_for(p)) for p in ckpts}
    return {"root": root, "db": db, "dir": sweep_dir, "ckpts": ckpts, "metas": metas}


def cli_run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def stored_params(db: Path) -> dict[str, dict[str, tuple]]:
    """{checkpoint_path: {name: (value, overridden, source)}} from the index (raw SQL)."""
    engine = open_engine(str(db), readonly=True)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.checkpoint_path, p.name, p.value_type, p.numeric_value, "
                    "p.text_value, p.overridden, p.source FROM checkpoints AS c "
                    "JOIN checkpoint_params AS p ON p.checkpoint_id = c.id"
                )
            ).all()
    finally:
        engine.dispose()
    out: dict[str, dict[str, tuple]] = {}
    for path, name, value_type, numeric, text_value, overridden, source in rows:
        value = decode_value(value_type, numeric, text_value)
        out.setdefault(path, {})[name] = (value, bool(overridden), source)
    return out


def hmeans(db: Path) -> dict[str, float]:
    engine = open_engine(str(db), readonly=True)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT checkpoint_path, hmean FROM checkpoints")).all())
    finally:
        engine.dispose()


def lr_of(meta: Any) -> float:
    return meta.hyperparameters["model"]["lr"]


# -- What the callback wrote -----------------------------------------------------------------------


def test_sidecars_and_rows_record_each_runs_hyperparameters(sweep):
    metas = sweep["metas"]
    runs = {p.parent.parent.name for p in sweep["ckpts"]}
    assert len(runs) == len(LRS) * len(BATCH_SIZES)
    combos = set()
    for path, meta in metas.items():
        hyper = meta.hyperparameters
        lr, batch_size = hyper["model"]["lr"], hyper["data"]["batch_size"]
        combos.add((lr, batch_size))
        assert hyper["lr"] == lr  # the module's own hparam
        assert meta.hydra_overrides == [f"model.lr={lr}", f"data.batch_size={batch_size}", *COMMON]
        run_dir = Path(path).parent.parent
        assert meta.hydra_config_path == str(run_dir / ".hydra" / "config.yaml")
        # Interpolations are kept as the config's text, not resolved.
        assert hyper["trainer"]["default_root_dir"] == "${hydra:runtime.output_dir}"
    assert combos == {(lr, b) for lr in LRS for b in BATCH_SIZES}

    stored = stored_params(sweep["db"])
    assert set(stored) == set(metas)
    for path, meta in metas.items():
        params = stored[path]
        assert params["model.lr"] == (lr_of(meta), True, "sidecar")
        assert params["data.batch_size"] == (
            meta.hyperparameters["data"]["batch_size"],
            True,
            "sidecar",
        )
        assert params["lr"] == (lr_of(meta), False, "sidecar")
        overridden = {name for name, (_, marked, _) in params.items() if marked}
        assert overridden == {
            "model.lr",
            "data.batch_size",
            "trainer.max_epochs",
            "data.train_size",
            "data.val_size",
        }
        # Every name of the sidecar's hyperparameters, flattened, is stored with its value.
        flat, warnings = flatten(meta.hyperparameters, "sidecar")
        assert warnings == []
        assert {n: decode_value(*p[1:4]) for n, p in flat.items()} == {
            n: v for n, (v, _, _) in params.items()
        }


# -- Queries on parameters -------------------------------------------------------------------------


def test_group_by_lr_best_by_hmean(sweep):
    db = str(sweep["db"])
    out = cli_run(
        "query",
        "--group-by",
        "params.model.lr",
        "--best-by",
        "hmean",
        "--format",
        "json",
        "--db",
        db,
    )
    rows = json.loads(out)
    scores = hmeans(sweep["db"])
    metas = sweep["metas"]
    # The expectation from the sidecars: per learning rate, the checkpoints with the top hmean.
    best: dict[float, set[str]] = {}
    for lr in LRS:
        of_lr = {p: m.metrics.hmean for p, m in metas.items() if lr_of(m) == lr}
        top = max(of_lr.values())
        best[lr] = {p for p, h in of_lr.items() if h == top}
    assert len(rows) == len(LRS)
    got = {}
    for row in rows:
        path = row["checkpoint_path"]
        got[lr_of(metas[path])] = path
        assert row["hmean"] == pytest.approx(scores[path])
    assert set(got) == set(LRS)
    for lr, path in got.items():
        assert path in best[lr], (lr, path, best[lr])


def test_varying_shows_exactly_what_the_sweep_varied(sweep):
    # The expectation from the sidecars: names whose flattened values differ among checkpoints.
    values: dict[str, set[str]] = {}
    names_per_ckpt = []
    for meta in sweep["metas"].values():
        flat, _ = flatten(meta.hyperparameters, "sidecar")
        names_per_ckpt.append(set(flat))
        for name, param in flat.items():
            values.setdefault(name, set()).add(json.dumps(param[1:4]))
    assert all(names == names_per_ckpt[0] for names in names_per_ckpt)
    differing = {name for name, seen in values.items() if len(seen) > 1}
    assert differing == VARIED

    out = cli_run("query", "--varying", "--format", "csv", "--db", str(sweep["db"]))
    header = next(csv.reader(io.StringIO(out)))
    assert {c.removeprefix("params.") for c in header if c.startswith("params.")} == VARIED


# -- The same runs without sidecars: parameters from the fallbacks ------------------------------


@pytest.fixture(scope="module")
def fallback(sweep, tmp_path_factory) -> dict[str, Any]:
    """A copy of the sweep without its sidecars, synced (``--full``) into a new index."""
    root = tmp_path_factory.mktemp("fallback")
    copy = root / "sweep"
    shutil.copytree(sweep["dir"], copy, symlinks=True)
    for sidecar in copy.glob("*/checkpoints/*.metadata.yaml"):
        sidecar.unlink()
    db = root / "index.db"
    cli_run("sync", str(copy), "--full", "--db", str(db))
    stored = stored_params(db)
    # Checkpoints by run and file name: the same in the sweep and in its copy.
    by_name = {str(Path(p).relative_to(copy)): params for p, params in stored.items()}
    return {"dir": copy, "db": db, "params": by_name}


def _relative(sweep: dict[str, Any], path: str) -> str:
    return str(Path(path).relative_to(sweep["dir"]))


def test_fallbacks_recover_the_swept_parameters(sweep, fallback):
    recovered = fallback["params"]
    assert set(recovered) == {_relative(sweep, p) for p in sweep["metas"]}
    sidecar_params = stored_params(sweep["db"])
    for path, meta in sweep["metas"].items():
        params = recovered[_relative(sweep, path)]
        for name in ("model.lr", "data.batch_size"):
            value, overridden, source = params[name]
            assert (value, overridden) == sidecar_params[path][name][:2], name
            assert source != "sidecar"
        assert params["model.lr"][0] == lr_of(meta)
        assert params["lr"][0] == lr_of(meta)
        overridden = {n for n, (_, marked, _) in params.items() if marked}
        assert overridden == {n for n, (_, marked, _) in sidecar_params[path].items() if marked}


def test_fallbacks_recover_every_parameter(sweep, fallback):
    """Every name and value the callback recorded is also what the fallbacks give."""
    sidecar_params = stored_params(sweep["db"])
    for path in sweep["metas"]:
        recovered = fallback["params"][_relative(sweep, path)]
        assert {n: v for n, (v, _, _) in recovered.items()} == {
            n: v for n, (v, _, _) in sidecar_params[path].items()
        }
