"""A corpus of hostile and broken files, each synced by a real `ckpt-index sync` process.

For every case: the process exits 0, within a bounded time and a bounded peak memory (of the
process and every worker it started), the hostile file gets a status and a one-line reason, no
payload runs, and the ordinary files beside it are indexed. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt_index.sidecar.files import dump_document, sidecar_path_for
from ckpt_index.tools import demo
from ckpt_index.tools.demo import checkpoint_bytes

#: Generous: a shared CI machine; the point is "bounded", not "fast".
MAX_SECONDS = 90
#: Peak RSS of the sync process and of the largest worker (KiB, as getrusage reports).
MAX_RSS_KIB = 800 * 1024

Builder = Callable[[Path], tuple[Path, set[str], str]]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        CASES[name] = builder
        return builder

    return register


def zip_pickle(path: Path, data: bytes, compression: int = zipfile.ZIP_STORED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
    return path


def checkpoint_dict(**extra) -> dict:
    return {
        "epoch": 3,
        "global_step": 30,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {},
        **extra,
    }


def sidecar_document(*, epoch: int, hmean: float, checkpoint_path: str, exp_name: str) -> dict:
    import datetime
    import random

    return demo.sidecar_document(
        checkpoint_path=checkpoint_path,
        exp_name=exp_name,
        architecture="dbnet",
        encoder="resnet18",
        epoch=epoch,
        global_step=epoch * 10,
        phase="training",
        max_epochs=10,
        hmean=hmean,
        rng=random.Random(epoch),
        created_at=datetime.datetime(2025, 1, 1),
    )


def run_dir(root: Path, name: str) -> Path:
    ckpt_dir = root / name / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    return ckpt_dir


# Each builder makes one hostile file (or run) under root and returns the checkpoint path whose
# row must carry the outcome, the statuses it may have, and a fragment of its reason ("" when a
# row must merely be stored: a value is dropped or cleaned rather than the file rejected).


@case("deep tuple key (hashing recursed in C: SIGSEGV)")
def _deep_key(root: Path):
    depth = 1_000_000
    data = b"\x80\x02}" + b"K\x01" + b"\x85" * depth + b"Ns."  # {(((1,),),...): None}
    path = zip_pickle(run_dir(root, "deep") / "deep.ckpt", data, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 4096
    return path, {"unreadable"}, ""


@case("bzip2 EMPTY_LIST bomb")
def _list_bomb(root: Path):
    data = b"\x80\x02" + b"]" * (64 << 20) + b"."
    path = zip_pickle(run_dir(root, "bomb") / "bomb.ckpt", data, zipfile.ZIP_BZIP2)
    assert path.stat().st_size < 4096
    return path, {"unreadable"}, ""


@case("numpy _reconstruct with a huge shape")
def _numpy_shape(root: Path):
    numpy = pytest.importorskip("numpy")

    class Array:
        def __reduce__(self):
            shape = tuple([2**64 - 1] * 50_000)
            return (
                numpy._core.multiarray._reconstruct,
                (numpy.ndarray, (0,), b"b"),
                (1, shape, numpy.dtype("f8"), False, b""),
            )

    data = pickle.dumps(checkpoint_dict(hyper_parameters={"mean": Array()}), protocol=2)
    return zip_pickle(run_dir(root, "numpy") / "numpy.ckpt", data), {"inferred", "unreadable"}, ""


@case("20k state-dict keys that trigger the ResNet probe")
def _resnet_probe(root: Path):
    torch = pytest.importorskip("torch")
    weight = torch.zeros(1)
    state = {}
    for i in range(10_000):
        state[f"m{i}.conv1.weight"] = weight
        state[f"m{i}.layer1.0.conv1.weight"] = weight
    path = run_dir(root, "probe") / "probe.ckpt"
    torch.save({"epoch": 1, "global_step": 10, "state_dict": state}, path)
    return path, {"inferred"}, ""


@case("empty file with a 20-digit epoch in its name")
def _huge_name(root: Path):
    path = run_dir(root, "name") / "epoch=99999999999999999999-step=1.ckpt"
    path.write_bytes(b"")
    return path, {"unreadable"}, "empty"


@case("sidecar epoch of 2**64")
def _sidecar_epoch(root: Path):
    path = run_dir(root, "sidecar-epoch") / "epoch-01_step-000010.ckpt"
    document = sidecar_document(exp_name="e", epoch=1, hmean=0.5, checkpoint_path=str(path))
    path.write_bytes(checkpoint_bytes(document))
    document["training"]["epoch"] = 2**64
    sidecar_path_for(path).write_text(dump_document(document))
    return path, {"invalid"}, "epoch"


@case("pickle epoch of 2**64")
def _pickle_epoch(root: Path):
    data = pickle.dumps(checkpoint_dict(epoch=2**64, global_step=-(2**70)), protocol=2)
    return zip_pickle(run_dir(root, "pickle-epoch") / "p.ckpt", data), {"inferred"}, ""


@case("lone surrogate and NUL in hparams strings")
def _bad_strings(root: Path):
    hparams = {
        "exp_name": "run\udc80x",
        "architecture": "db\x00net",
        "encoder": {"model_name": "res\ud800"},
    }
    data = pickle.dumps(checkpoint_dict(hyper_parameters=hparams), protocol=2)
    return zip_pickle(run_dir(root, "strings") / "s.ckpt", data), {"inferred"}, ""


for _kind, _monitor in {"int": 5, "list": ["a", 1], "dict": {"x": 1}}.items():

    def _odd_monitor(root: Path, monitor=_monitor, kind=_kind):
        callbacks = {
            "ModelCheckpoint{'monitor': 'x'}": {
                "monitor": monitor,
                "mode": monitor,
                "current_score": 0.5,
            }
        }
        data = pickle.dumps(checkpoint_dict(callbacks=callbacks), protocol=2)
        return zip_pickle(run_dir(root, f"monitor-{kind}") / "m.ckpt", data), {"inferred"}, ""

    case(f"ModelCheckpoint monitor that is a{'n' if _kind == 'int' else ''} {_kind}")(_odd_monitor)


def hydra_run(root: Path, name: str, config: bytes | None) -> Path:
    ckpt_dir = run_dir(root, name)
    hydra = root / name / ".hydra"
    hydra.mkdir()
    if config is not None:
        (hydra / "config.yaml").write_bytes(config)
    data = pickle.dumps(checkpoint_dict(), protocol=2)
    return zip_pickle(ckpt_dir / "h.ckpt", data)


@case("Hydra config holding a date")
def _hydra_date(root: Path):
    path = hydra_run(root, "hydra-date", b"created: 2024-01-01\nmodel:\n  architecture: dbnet\n")
    return path, {"inferred"}, ""


@case("Hydra config nested 990 levels")
def _hydra_deep(root: Path):
    path = hydra_run(root, "hydra-deep", b"a: " + b"[" * 990 + b"]" * 990 + b"\n")
    return path, {"inferred"}, ""


@case("4 GiB sparse Hydra config")
def _hydra_sparse(root: Path):
    path = hydra_run(root, "hydra-sparse", None)
    with open(root / "hydra-sparse" / ".hydra" / "config.yaml", "wb") as f:
        f.write(b"model:\n  architecture: dbnet\n")
        f.truncate(4 << 30)
    return path, {"inferred"}, ""


def wandb_run(root: Path, name: str) -> tuple[Path, Path]:
    """A Lightning run with a W&B offline run folder beside its checkpoints."""
    ckpt_dir = run_dir(root, name)
    folder = root / name / "wandb" / "offline-run-20250101_000000-abcd1234"
    (folder / "files").mkdir(parents=True)
    data = pickle.dumps(checkpoint_dict(), protocol=2)
    return zip_pickle(ckpt_dir / "w.ckpt", data), folder


@case("20 GiB sparse W&B log")
def _wandb_sparse(root: Path):
    path, folder = wandb_run(root, "wandb-sparse")
    with open(folder / "run-abcd1234.wandb", "wb") as f:
        f.truncate(20 << 30)
    return path, {"inferred"}, ""


@case("FIFO as a W&B log")
def _wandb_fifo(root: Path):
    path, folder = wandb_run(root, "wandb-fifo")
    os.mkfifo(folder / "run-abcd1234.wandb")
    return path, {"inferred"}, ""


@case("FIFO named x.ckpt")
def _fifo_ckpt(root: Path):
    path = run_dir(root, "fifo") / "x.ckpt"
    os.mkfifo(path)
    return path, {"unreadable"}, "FIFO"


@case("truncated checkpoint under a valid sidecar")
def _truncated(root: Path):
    path = run_dir(root, "truncated") / "epoch-02_step-000020.ckpt"
    document = sidecar_document(exp_name="t", epoch=2, hmean=0.99, checkpoint_path=str(path))
    data = checkpoint_bytes(document)
    path.write_bytes(data[: len(data) // 2])
    sidecar_path_for(path).write_text(dump_document(document))
    return path, {"unreadable"}, ""


def ordinary_files(root: Path) -> dict[str, str]:
    """A sidecar'd checkpoint and a sidecar-less one, with the status each must get."""
    ckpt_dir = root / "ordinary-dbnet-resnet18_training_20250101_000000" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    expected = {}
    for epoch, with_sidecar in ((1, True), (2, False)):
        path = ckpt_dir / f"epoch-{epoch:02d}_step-{epoch * 10:06d}.ckpt"
        document = sidecar_document(
            exp_name="ordinary", epoch=epoch, hmean=0.5 + epoch / 10, checkpoint_path=str(path)
        )
        path.write_bytes(checkpoint_bytes(document))
        if with_sidecar:
            sidecar_path_for(path).write_text(dump_document(document))
        expected[str(path)] = "valid" if with_sidecar else "inferred"
    return expected


_MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
try:
    proc = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
except subprocess.TimeoutExpired:
    rc, out, err = None, "", "killed: still running after the timeout"
print(json.dumps({"rc": rc, "seconds": time.monotonic() - started,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "stdout": out, "stderr": err}))
"""


def measured_sync(root: Path, db_url: str, *extra: str, timeout: float = MAX_SECONDS * 2) -> dict:
    """Run `python -m ckpt_index sync` in a child; its exit, time and the tree's peak RSS
    (``rc`` None: killed after ``timeout``)."""
    argv = [
        sys.executable,
        "-m",
        "ckpt_index",
        "sync",
        str(root),
        "--db",
        db_url,
        "--format",
        "json",
        *extra,
    ]
    wrapper = [sys.executable, "-c", _MEASURE, str(timeout), *argv]
    out = subprocess.run(wrapper, capture_output=True, text=True, timeout=timeout + 60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def rows(db_url: str) -> dict[str, dict]:
    from sqlalchemy import select

    from ckpt_index.index.readonly import read_only_engine
    from ckpt_index.index.tables import checkpoints

    engine = read_only_engine(db_url)
    try:
        with engine.connect() as conn:
            return {r.checkpoint_path: dict(r._mapping) for r in conn.execute(select(checkpoints))}
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_contained(name: str, outputs: Path, db_url: str) -> None:
    target, statuses, fragment = CASES[name](outputs)
    ordinary = ordinary_files(outputs)
    result = measured_sync(outputs, db_url)
    assert result["rc"] == 0, result["stderr"]
    assert result["seconds"] < MAX_SECONDS, result
    assert result["maxrss_kib"] < MAX_RSS_KIB, result
    summary = json.loads(result["stdout"])
    got = rows(db_url)
    row = got[str(target)]
    assert row["status"] in statuses, row
    if row["status"] in ("unreadable", "invalid"):
        assert row["error"] and "\n" not in row["error"] and fragment in row["error"], row
        listed = summary["invalid_files"] + summary["unreadable_files"]
        assert str(target) in {f["path"] for f in listed} or row["sidecar_path"]
    for path, status in ordinary.items():
        assert got[path]["status"] == status, got[path]
    # Stored values are clean: what one backend stores, the other can too.
    for column in ("exp_name", "architecture", "encoder", "monitor", "mode", "error", "warnings"):
        value = row[column]
        assert value is None or isinstance(value, str) and "\x00" not in value
        if isinstance(value, str):
            value.encode("utf-8")  # no lone surrogates
    for column in ("epoch", "global_step"):
        assert row[column] is None or 0 <= row[column] < 2**63


@pytest.mark.slow
def test_malicious_pickles_run_nothing_and_the_sync_completes(outputs: Path, db_url: str) -> None:
    from helpers.pickles import PAYLOAD_NAMES, dumps, payloads

    canary = outputs.parent / "canary"
    evil_dir = run_dir(outputs, "evil")
    count = 0
    for name in PAYLOAD_NAMES:
        for protocol in range(6):
            payload = payloads(canary)[name]
            data = dumps(checkpoint_dict(hyper_parameters={"x": payload}), protocol)
            zip_pickle(evil_dir / f"{count:02d}-hp.ckpt", data)
            zip_pickle(evil_dir / f"{count:02d}-whole.ckpt", dumps(payload, protocol))
            count += 1
    ordinary = ordinary_files(outputs)
    result = measured_sync(outputs, db_url)
    assert result["rc"] == 0, result["stderr"]
    assert not canary.exists(), "a payload ran"
    got = rows(db_url)
    assert len(got) == 2 * count + len(ordinary)
    for path, status in ordinary.items():
        assert got[path]["status"] == status
    for path, row in got.items():
        if "/evil/" in path:
            assert row["status"] in ("inferred", "unreadable"), row
            if row["status"] == "inferred" and path.endswith("-hp.ckpt"):
                assert json.loads(row["unsafe_globals"]), row  # it names what loading would run
    readable = [r for p, r in got.items() if p.endswith("-hp.ckpt") and r["status"] == "inferred"]
    assert len(readable) >= count // 2, "payloads are read as placeholders, not just refused"


@pytest.mark.slow
def test_the_whole_corpus_in_one_tree(outputs: Path, db_url: str) -> None:
    from helpers.files import age

    outcomes = {
        name: builder(outputs / f"case{i}") for i, (name, builder) in enumerate(CASES.items())
    }
    ordinary = ordinary_files(outputs)
    age(outputs)  # out of the racy window: an unchanged file is then never read again
    result = measured_sync(outputs, db_url)
    assert result["rc"] == 0, result["stderr"]
    assert result["seconds"] < MAX_SECONDS and result["maxrss_kib"] < MAX_RSS_KIB, result
    got = rows(db_url)
    for name, (target, statuses, _) in outcomes.items():
        assert got[str(target)]["status"] in statuses, (name, got[str(target)])
    for path, status in ordinary.items():
        assert got[path]["status"] == status
    # A second sync reads nothing again and says the same.
    again = measured_sync(outputs, db_url)
    assert again["rc"] == 0 and json.loads(again["stdout"])["parsed"] == 0
    # --strict turns the reasons into an error exit, still having indexed everything.
    strict = measured_sync(outputs, db_url, "--strict")
    assert strict["rc"] == 1, strict


def main() -> None:
    """Print, per case, what one `ckpt-index sync` of it (beside two ordinary files) costs and
    says: `python tests/test_hostile_corpus.py [TIMEOUT_S]` (with PYTHONPATH at another checkout,
    the same table for that version)."""
    import tempfile

    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    print(f"{'case':<55} {'exit':>4} {'time s':>7} {'peak MB':>8}  status: reason")
    for name, builder in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "outputs"
            root.mkdir()
            target, _, _ = builder(root)
            ordinary = ordinary_files(root)
            db_url = f"sqlite:///{tmp}/index.db"
            result = measured_sync(root, db_url, timeout=timeout)
            outcome = result["stderr"].strip().splitlines()[-1:] or [""]
            if result["rc"] == 0:
                got = rows(db_url)
                row = got.get(str(target), {})
                indexed = sum(got.get(p, {}).get("status") == s for p, s in ordinary.items())
                outcome = [
                    f"{row.get('status')}: {(row.get('error') or row.get('warnings') or '')[:70]}"
                    f" (ordinary files indexed: {indexed}/2)"
                ]
            print(
                f"{name[:55]:<55} {str(result['rc']):>4} {result['seconds']:>7.2f} "
                f"{result['maxrss_kib'] / 1024:>8.0f}  {outcome[0][:110]}",
                flush=True,
            )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
