"""W&B as a metadata source: runs made by the real wandb SDK (offline) and a real Lightning
Trainer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers.child_limits import run_child
from helpers.wandb_log import frame, record, write_log
from sqlalchemy import insert

import ckpt_index.sources.wandb as ws
from ckpt_index.index.engine import open_engine
from ckpt_index.index.models import WandbRunCache
from ckpt_index.index.store import WandbApiCache
from ckpt_index.sources.naming import parse_checkpoint_name
from ckpt_index.sources.wandb import files as wfiles
from ckpt_index.sources.wandb import log as wlog
from ckpt_index.sources.wandb import online as wonline
from ckpt_index.sources.wandb import run as wrun

CONFIG = {
    "model": {
        "architecture": "dbnet",
        "component_overrides": {"encoder": {"model_name": "resnet50"}},
    },
    "exp_name": "x",
}
# global step -> (val/hmean, val/loss); the summary gets different values.
VAL_ROWS = {100: (0.5, 0.9), 200: (0.6, 0.8), 300: (0.7, 0.7)}
FILLER_STEPS = range(1, 400)  # enough rows to spread the log over several 32 KiB blocks


def _filler(step: int) -> float:
    return round(1.0 / step, 6)


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """Offline W&B with every directory it writes in a temporary place, and no real credentials."""
    base = tmp_path_factory.mktemp("wandb_env")
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "WANDB_API_KEY",
            "WANDB_BASE_URL",
            "WANDB_ENTITY",
            "WANDB_PROJECT",
            "WANDB_RUN_ID",
        ):
            mp.delenv(var, raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_CONSOLE", "off")
        mp.setenv("WANDB_DISABLE_GIT", "true")
        mp.setenv("WANDB_DISABLE_CODE", "true")
        mp.setenv("NETRC", str(base / "no-netrc"))
        for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
            path = base / name.lower()
            path.mkdir()
            mp.setenv(f"WANDB_{name}", str(path))
        yield base
        import wandb

        wandb.teardown()


@pytest.fixture(autouse=True)
def _fresh_module_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wrun, "_warned", set())
    monkeypatch.setattr(wonline, "_online_unavailable", None)
    monkeypatch.setattr(wfiles, "_read_cache", type(wfiles._read_cache)())


@pytest.fixture(scope="module")
def offline_run(wandb_env: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run written by ``wandb.init(mode="offline")`` in a run directory, and a checkpoint
    beside it."""
    import wandb

    run_dir = tmp_path_factory.mktemp("outputs") / "ocr_v1-dbnet-resnet50_training_20251015_120000"
    run_dir.mkdir()
    run = wandb.init(mode="offline", dir=run_dir, project="p", config=CONFIG)
    run_id = run.id
    for step in FILLER_STEPS:
        row = {"train/filler": _filler(step), "trainer/global_step": step, "epoch": step // 100}
        if step in VAL_ROWS:
            row["val/hmean"], row["val/loss"] = VAL_ROWS[step]
        if step == 150:
            row["notes"] = "x" * 100_000  # a record longer than a block: first, middle, last chunks
        run.log(row)
    run.log({"train/lr": 0.01, "trainer/global_step": 200})  # a second row at the same step
    run.summary["val/hmean"] = 0.99
    run.summary.update({"val/loss": 0.01})
    run.finish()
    _settle(run_dir)
    ckpt = run_dir / "checkpoints" / "epoch-01_step-000200.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"placeholder\n")
    return {"run_dir": run_dir, "run_id": run_id, "ckpt": ckpt}


def _settle(root: Path, timeout: float = 60.0) -> None:
    """Wait until wandb's service has written every run log under ``root`` completely.

    finish() returns before the wandb-core process has flushed the transaction log; on a loaded
    machine a read right after it can see a truncated final record (or no log yet).
    """
    import time

    import wandb

    wandb.teardown()  # stops the service process, which flushes what it holds
    deadline = time.monotonic() + timeout
    while True:
        logs = list(root.rglob("run-*.wandb"))
        problems: list[str] = []
        for log in logs:
            for _ in wlog._log_records(log, problems):
                pass
        if logs and not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"wandb logs under {root} still incomplete: {problems or 'none'}")
        time.sleep(0.2)


def _wandb_run_dir(offline_run: dict) -> Path:
    (path,) = (offline_run["run_dir"] / "wandb").glob(f"offline-run-*-{offline_run['run_id']}")
    return path


def _fake_run(wandb_dir: Path, timespec: str, run_id: str, prefix: str = "offline-run") -> Path:
    path = wandb_dir / f"{prefix}-{timespec}-{run_id}"
    path.mkdir(parents=True)
    return path


def _local_ts(timespec: str) -> float:
    return time.mktime(time.strptime(timespec, "%Y%m%d_%H%M%S"))


# ---------------------------------------------------------------------------------------------
# Offline runs written by the SDK


def test_offline_run_layout_keeps_only_the_transaction_log(offline_run: dict) -> None:
    wandb_dir = offline_run["run_dir"] / "wandb"
    run_path = _wandb_run_dir(offline_run)
    assert (wandb_dir / "latest-run").is_symlink()
    assert (wandb_dir / "latest-run").resolve() == run_path.resolve()
    log = run_path / f"run-{offline_run['run_id']}.wandb"
    assert log.read_bytes()[:7] == b":W&B\xe1\xbe\x00"
    assert log.stat().st_size > 2 * 32768  # records cross block boundaries
    # Why the log must be read: an offline run writes neither the config nor the summary file.
    assert not (run_path / "files" / "config.yaml").exists()
    assert not (run_path / "files" / "wandb-summary.json").exists()


def test_find_run_from_checkpoint_beside_wandb_dir(offline_run: dict) -> None:
    location = ws.find_run(offline_run["ckpt"])
    assert location is not None
    assert location.run_id == offline_run["run_id"]
    assert location.run_dir == _wandb_run_dir(offline_run).resolve()
    assert location.how == "wandb_dir"


def test_read_run_config_from_offline_log(offline_run: dict) -> None:
    run = ws.read_run(ws.find_run(offline_run["ckpt"]))
    assert run.source == "log"
    assert run.run_id == offline_run["run_id"]
    assert run.project == "p"
    assert run.run_path == f"p/{offline_run['run_id']}"
    assert run.config == CONFIG
    assert ws.model_fields_from_config(run.config) == {
        "architecture": "dbnet",
        "encoder": "resnet50",
        "exp_name": "x",
    }
    assert run.warnings == []
    assert run.lightning_steps is False


def test_history_at_step_is_the_step_not_the_summary(offline_run: dict) -> None:
    run = ws.read_run(ws.find_run(offline_run["ckpt"]))
    step = parse_checkpoint_name(offline_run["ckpt"].name).step
    assert step == 200
    metrics = run.history_at_step(step)
    # Two rows at step 200, merged; bookkeeping keys left out.
    assert metrics == {
        "val/hmean": 0.6,
        "val/loss": 0.8,
        "train/filler": _filler(200),
        "train/lr": 0.01,
    }
    assert run.summary["val/hmean"] == 0.99 and run.summary["val/loss"] == 0.01
    assert run.checkpoint_metrics(step) == metrics  # not a Lightning-logged run: same step
    assert run.history_at_step(250) == {"train/filler": _filler(250)}
    assert run.history_at_step(150) == {"train/filler": _filler(150)}  # text is not a metric
    assert run.history_at_step(10_000) == {}
    # Every row survives the chunking across blocks.
    assert run.steps == list(FILLER_STEPS)
    assert all(run.history_at_step(s)["train/filler"] == _filler(s) for s in FILLER_STEPS)


def test_damaged_log_keeps_what_is_readable(offline_run: dict, tmp_path: Path, caplog) -> None:
    source = _wandb_run_dir(offline_run)
    run_id = offline_run["run_id"]

    corrupt = tmp_path / "corrupt" / "wandb" / source.name
    shutil.copytree(source, corrupt, symlinks=True)
    log = corrupt / f"run-{run_id}.wandb"
    data = bytearray(log.read_bytes())
    data[40_000] ^= 0xFF  # inside the second block
    log.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ckpt_index.wandb"):
        run = ws.read_run(ws.RunLocation(run_id, corrupt))
    assert run.config == CONFIG  # from the first block
    assert any("bad checksum" in w for w in run.warnings)
    assert any("bad checksum" in r.getMessage() for r in caplog.records)
    last = max(FILLER_STEPS)
    assert run.history_at_step(last) == {"train/filler": _filler(last)}  # from a later block
    assert len(run.steps) < len(FILLER_STEPS)

    truncated = tmp_path / "truncated" / "wandb" / source.name
    shutil.copytree(source, truncated, symlinks=True)
    log = truncated / f"run-{run_id}.wandb"
    data = log.read_bytes()
    # A run killed mid-write: cut inside the 100 KB "notes" row of step 150, which is a run of
    # "x" with no chunk header in its first 1,000 bytes, so the cut is inside a chunk wherever
    # wandb's framing put it (a fixed offset can land on a chunk boundary, which no reader can
    # tell from a clean end).
    log.write_bytes(data[: data.index(b"x" * 1000) + 500])
    run = ws.read_run(ws.RunLocation(run_id, truncated))
    assert run.config == CONFIG
    assert run.history_at_step(100)["val/hmean"] == 0.5
    assert 149 in run.steps and 150 not in run.steps
    assert any("truncated" in w for w in run.warnings)


def test_a_cut_anywhere_inside_the_last_record_is_seen() -> None:
    import io

    payloads = [bytes([65 + i]) * n for i, n in enumerate((10, 40_000, 25))]
    whole = frame(payloads)
    before = len(frame(payloads[:-1]))  # where the last record's chunk header starts
    for cut in range(before, len(whole) + 1):
        problems: list[str] = []
        records = list(wlog._chunked_records(io.BytesIO(whole[:cut]), problems))
        if cut in (before, len(whole)):  # a cut on a record boundary is a clean end
            assert records == payloads[: 2 if cut == before else 3] and problems == []
        else:  # inside the header (1-6 bytes of it) or inside the data
            assert records == payloads[:2], cut
            assert problems == [wlog._TRUNCATED], cut


def test_not_a_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "wandb" / "offline-run-20250101_000000-abcd1234"
    run_dir.mkdir(parents=True)
    (run_dir / "run-abcd1234.wandb").write_bytes(b"PK\x03\x04 not a log")
    run = ws.read_run(ws.RunLocation("abcd1234", run_dir))
    assert run.source == "none"
    assert run.warnings == ["run-abcd1234.wandb: not a W&B transaction log"]


# ---------------------------------------------------------------------------------------------
# Lightning's WandbLogger


@pytest.fixture(scope="module")
def lightning_run(wandb_env: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny real Trainer run with WandbLogger (offline) saving in Lightning's default layout."""
    import lightning as L
    import torch
    import wandb
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"architecture_name": "tiny"})
            self.layer = torch.nn.Linear(2, 1)

        def _loss(self, batch):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def training_step(self, batch, _):
            loss = self._loss(batch)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            loss = self._loss(batch)
            self.log("val/loss", loss)
            self.log("val/hmean", 1 / (1 + loss))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    save_dir = tmp_path_factory.mktemp("lightning")
    wandb_logger = WandbLogger(save_dir=str(save_dir), project="proj", offline=True)
    checkpoint = ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=wandb_logger,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(save_dir),
    )
    trainer.fit(
        Tiny(),
        torch.utils.data.DataLoader(data, batch_size=2),
        torch.utils.data.DataLoader(data, batch_size=2),
    )
    run_id = wandb_logger.version
    wandb.finish()
    _settle(save_dir)
    scores = {Path(p): float(s) for p, s in checkpoint.best_k_models.items()}
    return {"save_dir": save_dir, "run_id": run_id, "scores": scores}


def test_lightning_layout(lightning_run: dict) -> None:
    ckpts = sorted(lightning_run["scores"])
    assert len(ckpts) == 2
    for ckpt in ckpts:
        assert (
            ckpt.parent
            == lightning_run["save_dir"] / "proj" / lightning_run["run_id"] / "checkpoints"
        )
        location = ws.find_run(ckpt)
        assert location.run_id == lightning_run["run_id"]
        assert location.project == "proj"
        assert location.run_dir.parent == (lightning_run["save_dir"] / "wandb").resolve()


def test_lightning_history_at_checkpoint_step(lightning_run: dict) -> None:
    for ckpt, score in lightning_run["scores"].items():
        step = parse_checkpoint_name(ckpt.name).step
        run = ws.read_run(ws.find_run(ckpt))
        assert (
            run.lightning_steps
        )  # WandbLogger's define_metric("*", step_metric="trainer/global_step")
        assert run.config == {"architecture_name": "tiny"}
        metrics = run.checkpoint_metrics(step)
        assert metrics["val/hmean"] == pytest.approx(score)
        assert "val/loss" in metrics and "train/loss" in metrics
        # Lightning logs the validation before a save at step N under trainer/global_step N - 1.
        assert run.history_at_step(step - 1) == metrics
        assert "val/hmean" not in run.history_at_step(step)


def test_lightning_layout_without_wandb_dir(lightning_run: dict, tmp_path: Path) -> None:
    ckpt = next(iter(lightning_run["scores"]))
    copy = tmp_path / "elsewhere" / "proj" / lightning_run["run_id"] / "checkpoints" / ckpt.name
    copy.parent.mkdir(parents=True)
    shutil.copy(ckpt, copy)
    location = ws.find_run(copy)
    assert location == ws.RunLocation(
        lightning_run["run_id"], None, "proj", None, "lightning_layout"
    )
    assert location.run_path == f"proj/{lightning_run['run_id']}"
    assert ws.read_run(location) is None  # nothing local: the caller may try fetch_online


@pytest.mark.parametrize(
    ("run_id", "expected"), [("abcd1234", "wandb_dir"), ("ffff0000", "lightning_layout")]
)
def test_lightning_layout_searches_above_save_dir(
    tmp_path: Path, run_id: str, expected: str
) -> None:
    # WandbLogger(save_dir=root/x/y) with the wandb dir two levels above: found by its id only.
    _fake_run(tmp_path / "wandb", "20250101_100000", run_id)
    ckpt = tmp_path / "x" / "y" / "proj" / "abcd1234" / "checkpoints" / "epoch=0-step=4.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    location = ws.find_run(ckpt)
    assert (location.run_id, location.project, location.how) == ("abcd1234", "proj", expected)


# ---------------------------------------------------------------------------------------------
# Choosing among several runs


@pytest.fixture
def two_runs(tmp_path: Path) -> dict:
    run_dir = tmp_path / "exp"
    wandb_dir = run_dir / "wandb"
    first = _fake_run(wandb_dir, "20250101_100000", "aaaa1111")
    second = _fake_run(wandb_dir, "20250101_120000", "bbbb2222", prefix="run")
    (wandb_dir / "latest-run").symlink_to(first.name)
    ckpt = run_dir / "checkpoints" / "epoch-00_step-000010.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    return {"ckpt": ckpt, "first": first, "second": second}


@pytest.mark.parametrize(
    ("written", "hints", "expected"),
    [
        ("20250101_110000", (), "aaaa1111"),  # the run that started last before the checkpoint
        ("20250101_130000", (), "bbbb2222"),
        ("20250101_090000", (), "aaaa1111"),  # written before both (a copy): the earliest
        ("20250101_130000", ("aaaa1111",), "aaaa1111"),  # a recorded id wins over time
        ("20250101_130000", ("zzzz9999", "team/p/aaaa1111"), "aaaa1111"),
    ],
)
def test_several_runs(two_runs: dict, written: str, hints: tuple, expected: str) -> None:
    os.utime(two_runs["ckpt"], (_local_ts(written), _local_ts(written)))
    location = ws.find_run(two_runs["ckpt"], run_id_hints=hints)
    assert location.run_id == expected
    assert location.run_dir.name.endswith(expected)


def test_hint_without_run_dir(tmp_path: Path) -> None:
    ckpt = tmp_path / "exp" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert ws.find_run(ckpt) is None
    assert ws.find_run(ckpt, run_id_hints=["team/ocr/abc12345"]) == ws.RunLocation(
        "abc12345", None, "ocr", "team", "hint"
    )


@pytest.mark.parametrize(("levels", "found"), [(0, True), (1, True), (2, True), (3, False)])
def test_wandb_dir_up_to_two_parents(tmp_path: Path, levels: int, found: bool) -> None:
    run_dir = tmp_path / "a" / "b" / "c" / "run"
    base = run_dir
    for _ in range(levels):
        base = base.parent
    _fake_run(base / "wandb", "20250101_100000", "cccc3333")
    ckpt = run_dir / "checkpoints" / "epoch-00_step-000010.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    location = ws.find_run(ckpt)
    assert (location is not None and location.run_id == "cccc3333") is found


# ---------------------------------------------------------------------------------------------
# Online run files


ONLINE_CONFIG_YAML = """\
wandb_version: 1

_wandb:
  desc: null
  value:
    cli_version: 0.16.6
    m:
    - 1: trainer/global_step
      6:
      - 3
    - 1: val/hmean
      5: 1
      6:
      - 1
      - 3
    python_version: 3.10.12
model:
  desc: null
  value:
    architecture: dbnet
    component_overrides:
      encoder:
        model_name: resnet18
      decoder:
        name: unet
exp_name:
  value: ocr_v1
lr:
  desc: learning rate
  value: 0.001
"""


@pytest.fixture
def online_run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "exp" / "wandb" / "run-20251015_120000-onl1ne00"
    files = run_dir / "files"
    files.mkdir(parents=True)
    (files / "config.yaml").write_text(ONLINE_CONFIG_YAML)
    (files / "wandb-summary.json").write_text(
        json.dumps(
            {"val/hmean": 0.91, "_step": 40, "_wandb": {"runtime": 12}, "trainer/global_step": 399}
        )
    )
    (files / "wandb-metadata.json").write_text(json.dumps({"host": "node1", "program": "train.py"}))
    return run_dir


def test_online_run_files(online_run_dir: Path) -> None:
    ckpt = online_run_dir.parents[1] / "checkpoints" / "best-hmean-0.9100.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    location = ws.find_run(ckpt)
    assert location.run_id == "onl1ne00" and location.run_dir == online_run_dir
    run = ws.read_run(location)
    assert run.source == "files"
    assert run.config == {
        "model": {
            "architecture": "dbnet",
            "component_overrides": {
                "encoder": {"model_name": "resnet18"},
                "decoder": {"name": "unet"},
            },
        },
        "exp_name": "ocr_v1",
        "lr": 0.001,
    }
    assert run.summary == {"val/hmean": 0.91, "_step": 40, "trainer/global_step": 399}
    assert run.metadata["host"] == "node1"
    assert run.lightning_steps  # from the stored metric definitions (_wandb.m)
    assert run.history == {}  # no log: no per-step values, and the summary is never used instead
    assert run.checkpoint_metrics(400) == {}
    assert ws.model_fields_from_config(run.config) == {
        "architecture": "dbnet",
        "encoder": "resnet18",
        "decoder": "unet",
        "exp_name": "ocr_v1",
    }


def test_keys_starting_with_underscore_are_wandbs_own(
    online_run_dir: Path, no_credentials, engine, cache, monkeypatch
) -> None:
    # W&B keeps its own bookkeeping in the run config (_wandb, and on some versions other
    # underscore keys); none of it is the user's config, whichever way the run is read.
    config_yaml = online_run_dir / "files" / "config.yaml"
    config_yaml.write_text(
        ONLINE_CONFIG_YAML + "_name:\n  value: sweep-7\n_internal:\n  value: {exp_name: x}\n"
    )
    ckpt = online_run_dir.parents[1] / "checkpoints" / "epoch-00_step-000010.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    run = ws.read_run(ws.find_run(ckpt))
    assert sorted(run.config) == ["exp_name", "lr", "model"]

    _forbid_network(monkeypatch)
    _cache_row(
        engine,
        run_path="team/ocr/abc12345",
        config_json=json.dumps({"_step": 3, "_name": "x", "lr": 0.1}),
        summary_json="{}",
        history_json="{}",
    )
    cached = ws.fetch_online("team/ocr/abc12345", cache=cache)
    assert cached is not None and cached.config == {"lr": 0.1}


def test_files_and_log_together(offline_run: dict, online_run_dir: Path) -> None:
    # An online run keeps both; the files are the final snapshot and win for the config.
    log = next(_wandb_run_dir(offline_run).glob("*.wandb"))
    shutil.copy(log, online_run_dir / "run-onl1ne00.wandb")
    run = ws.read_run(ws.RunLocation("onl1ne00", online_run_dir))
    assert run.source == "files+log"
    assert run.config["model"]["architecture"] == "dbnet"
    assert run.config["exp_name"] == "ocr_v1"
    assert run.summary["val/hmean"] == 0.91
    assert run.history_at_step(200)["val/hmean"] == 0.6


def test_read_run_cache_follows_file_changes(online_run_dir: Path) -> None:
    location = ws.RunLocation("onl1ne00", online_run_dir)
    first = ws.read_run(location)
    first.config["exp_name"] = "mutated by a caller"
    assert ws.read_run(location).config["exp_name"] == "ocr_v1"
    (online_run_dir / "files" / "config.yaml").write_text("exp_name:\n  value: renamed_run\n")
    assert ws.read_run(location).config == {"exp_name": "renamed_run"}


# ---------------------------------------------------------------------------------------------
# Model fields


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (CONFIG, {"architecture": "dbnet", "encoder": "resnet50", "exp_name": "x"}),
        (
            {"architecture_name": "craft", "encoder": "mobilenetv3_large"},
            {"architecture": "craft", "encoder": "mobilenetv3_large"},
        ),
        (
            {
                "architecture": "dbnet",
                "encoder": {"model_name": "resnet34"},
                "head": {"name": "db_head"},
                "loss": {"name": "db_loss"},
            },
            {"architecture": "dbnet", "encoder": "resnet34", "head": "db_head", "loss": "db_loss"},
        ),
        (
            {
                "model/architecture": "dbnetpp",
                "model.component_overrides.encoder.model_name": "resnet18",
            },
            {"architecture": "dbnetpp", "encoder": "resnet18"},
        ),
        ({"model": {"architecture": "${oc.select:arch}"}, "exp_name": ""}, {}),
        ({"model": {"architecture": None}, "encoder": 3}, {}),
    ],
)
def test_model_fields_from_config(config: dict, expected: dict) -> None:
    assert ws.model_fields_from_config(config) == expected


# ---------------------------------------------------------------------------------------------
# The W&B API


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture
def engine(tmp_path: Path):
    engine = open_engine(tmp_path / "i.db")
    yield engine
    engine.dispose()


@pytest.fixture
def cache(engine) -> WandbApiCache:
    """The index as the W&B API cache, as a sync builds it."""
    return WandbApiCache(engine)


def _forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args):
        raise AssertionError("fetch_online went to the network")

    monkeypatch.setattr(wonline, "_fetch_remote", fail)


def test_fetch_online_without_credentials(no_credentials, cache, monkeypatch, caplog) -> None:
    _forbid_network(monkeypatch)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ckpt_index.wandb"):
        assert ws.fetch_online("team/ocr/abc12345", timeout=2.0, cache=cache) is None
        assert ws.fetch_online("team/ocr/other999", timeout=2.0, cache=cache) is None
    assert time.monotonic() - started < 2.0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "API key" in warnings[0].getMessage()


def test_fetch_online_hanging_api_times_out(monkeypatch, caplog) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    release = threading.Event()
    calls = []

    def hang(run_path, timeout, state):
        calls.append(run_path)
        release.wait(30)

    monkeypatch.setattr(wonline, "_fetch_remote", hang)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ckpt_index.wandb"):
        assert ws.fetch_online("team/ocr/abc12345", timeout=0.3) is None
        assert ws.fetch_online("team/ocr/other999", timeout=0.3) is None
    release.set()
    assert time.monotonic() - started < 1.5
    assert calls == ["team/ocr/abc12345"]  # the second call did not wait again
    assert len(caplog.records) == 1 and "within 0.3 s" in caplog.records[0].getMessage()


def test_fetch_online_real_client_unreachable_server(wandb_env, monkeypatch, caplog) -> None:
    # The real wandb.Api against a closed local port, with a (fake) key: no hang, one warning.
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ckpt_index.wandb"):
        assert ws.fetch_online("team/ocr/abc12345", timeout=1.0) is None
        assert ws.fetch_online("team/ocr/other999", timeout=1.0) is None
    assert time.monotonic() - started < 15
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def _cache_row(engine, **values) -> None:
    row = {"fetched_at": "2099-01-01T00:00:00+00:00", "ok": True, "error": None} | values
    with engine.begin() as conn:
        conn.execute(insert(WandbRunCache.__table__).values(**row))


def test_fetch_online_answers_from_cache(
    no_credentials, engine, cache, monkeypatch, caplog
) -> None:
    _forbid_network(monkeypatch)
    raw_config = {
        "_wandb": {
            "m": [{"1": "trainer/global_step", "6": [3]}, {"1": "val/hmean", "5": 1, "6": [1, 3]}]
        },
        "model": {"architecture": "dbnet"},
    }
    _cache_row(
        engine,
        run_path="team/ocr/abc12345",
        config_json=json.dumps(raw_config),
        summary_json=json.dumps({"val/hmean": 0.99}),
        history_json=json.dumps({"199": {"val/hmean": 0.8}, "399": {"val/hmean": 0.99}}),
    )
    _cache_row(
        engine, run_path="team/ocr/gone0000", ok=False, error="CommError: Could not find run"
    )
    with caplog.at_level(logging.WARNING, logger="ckpt_index.wandb"):
        run = ws.fetch_online("team/ocr/abc12345", cache=cache, global_step=200)
        assert ws.fetch_online("team/ocr/gone0000", cache=cache) is None
    assert caplog.records == []  # nothing was attempted, so nothing to warn about
    assert (run.source, run.run_id, run.project, run.entity) == ("cache", "abc12345", "ocr", "team")
    assert run.config == {"model": {"architecture": "dbnet"}}
    assert run.summary == {"val/hmean": 0.99}
    assert run.lightning_steps
    assert run.checkpoint_metrics(200) == {"val/hmean": 0.8}
    assert run.history_at_step(399) == {"val/hmean": 0.99}


@pytest.mark.parametrize(
    ("fetched_at", "global_step", "attempts"),
    [
        ("2099-01-01T00:00:00+00:00", 400, False),  # fresh: served as is
        ("2000-01-01T00:00:00+00:00", 200, False),  # old but covers the step
        ("2000-01-01T00:00:00+00:00", 400, True),  # old and ends before the step: refetched
    ],
)
def test_fetch_online_refreshes_a_cache_that_ends_early(
    no_credentials, engine, cache, monkeypatch, caplog, fetched_at, global_step, attempts
) -> None:
    _forbid_network(monkeypatch)
    _cache_row(
        engine,
        run_path="team/ocr/abc12345",
        fetched_at=fetched_at,
        config_json="{}",
        summary_json="{}",
        history_json=json.dumps({"200": {"val/hmean": 0.8}}),
    )
    with caplog.at_level(logging.WARNING, logger="ckpt_index.wandb"):
        run = ws.fetch_online("team/ocr/abc12345", cache=cache, global_step=global_step)
    # Without credentials the refresh is skipped (one warning) and the cached answer still serves.
    assert run.history_at_step(200) == {"val/hmean": 0.8}
    assert len(caplog.records) == int(attempts)


class _FakeRemoteRun:
    rawconfig = {
        "_wandb": {"m": [{"1": "trainer/global_step"}, {"2": "*", "4": "trainer/global_step"}]},
        "lr": 0.1,
    }
    config = {"lr": 0.1}
    summary_metrics = {"val/hmean": 0.99, "_wandb": {"runtime": 3}}

    def scan_history(self):
        yield {"_step": 0, "trainer/global_step": 99, "val/hmean": 0.5, "epoch": 0}
        yield {"_step": 1, "trainer/global_step": 199, "val/hmean": 0.8, "epoch": 1}
        yield {
            "_step": 2,
            "trainer/global_step": 199,
            "train/loss": 0.3,
            "media": {"_type": "image"},
        }


def test_fetch_online_caches_the_api_answer(wandb_env, engine, cache, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    created = []

    class FakeApi:
        def __init__(self, timeout=None):
            created.append(timeout)

        def run(self, path):
            if path.endswith("gone0000"):
                raise ValueError("Could not find run team/ocr/gone0000")
            return _FakeRemoteRun()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    run = ws.fetch_online("team/ocr/abc12345", timeout=3.0, cache=cache)
    assert created == [3.0]
    assert run.source == "api" and run.config == {"lr": 0.1} and run.summary == {"val/hmean": 0.99}
    assert run.checkpoint_metrics(200) == {"val/hmean": 0.8, "train/loss": 0.3}
    again = ws.fetch_online("team/ocr/abc12345", cache=cache)
    assert again.source == "cache" and again.history == run.history and again.lightning_steps
    assert ws.fetch_online("team/ocr/gone0000", cache=cache) is None
    assert ws.fetch_online("team/ocr/gone0000", cache=cache) is None  # the failure is cached
    assert len(created) == 2


# ---------------------------------------------------------------------------------------------
# Without wandb


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )


def test_import_does_not_import_wandb() -> None:
    # Nor the index: the API cache is handed in by the caller (a source never opens the index).
    result = _run_python(
        """
        import sys
        import ckpt_index.sources.wandb
        heavy = ("wandb", "google.protobuf", "torch", "lightning", "sqlalchemy", "ckpt_index.index")
        print(sorted(m for m in heavy if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_index_cache_keeps_answers_and_drops_what_it_cannot_write(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "i.db")
    try:
        cache = WandbApiCache(engine)
        assert cache.get("team/ocr/abc12345") is None
        entry = {"fetched_at": "2099-01-01T00:00:00+00:00", "ok": True, "error": None}
        cache.put("team/ocr/abc12345", {**entry, "history_json": "{}"})
        cache.put("team/ocr/abc12345", {**entry, "history_json": '{"1": {"a": 1.0}}'})
        assert cache.get("team/ocr/abc12345") == {
            **entry,
            "config_json": None,
            "summary_json": None,
            "history_json": '{"1": {"a": 1.0}}',
        }
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE wandb_run_cache")
        cache.put("team/ocr/abc12345", entry)  # a refused write is not an error
    finally:
        engine.dispose()


def test_without_wandb_reads_files_and_skips_the_log(
    offline_run: dict, online_run_dir: Path
) -> None:
    log = next(_wandb_run_dir(offline_run).glob("*.wandb"))
    shutil.copy(log, online_run_dir / "run-onl1ne00.wandb")
    result = _run_python(
        f"""
        import json, logging, sys
        sys.modules["wandb"] = None
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
        from pathlib import Path
        import ckpt_index.sources.wandb as ws
        online = ws.read_run(ws.RunLocation("onl1ne00", Path({str(online_run_dir)!r})))
        offline = ws.read_run(ws.find_run({str(offline_run["ckpt"])!r}))
        print(json.dumps({{
            "online": [online.source, online.config["exp_name"], online.summary["val/hmean"],
                       online.warnings],
            "offline": [offline.source, offline.run_id, offline.config, offline.history],
        }}))
        """
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    skipped = "run-onl1ne00.wandb: skipped, wandb is not importable"
    assert out["online"] == ["files", "ocr_v1", 0.91, [skipped]]
    assert out["offline"] == ["none", offline_run["run_id"], {}, {}]
    warnings = [
        line for line in result.stderr.splitlines() if line.startswith("ckpt_index.wandb WARNING")
    ]
    assert len(warnings) == 1 and "wandb is not importable" in warnings[0]


# --------------------------------------------------------------------------------------------
# Hostile run folders: nothing blocks, nothing is read whole, nothing raises


READ_IN_CHILD = """
import json, sys
import ckpt_index.sources.wandb as ws
location = ws.find_run(sys.argv[1])
run = ws.read_run(location)
print(json.dumps({"run_id": location.run_id, "source": run.source, "warnings": run.warnings,
                  "config": run.config}))
"""


def _hostile_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory with a wandb run folder (to be filled) and a checkpoint."""
    run_dir = tmp_path / "outputs" / "r1"
    wandb_run = _fake_run(run_dir / "wandb", "20250101_000000", "abcd1234")
    ckpt = run_dir / "checkpoints" / "epoch=1-step=2.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    return wandb_run, ckpt


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


def _fifo_log(run: Path) -> None:
    os.mkfifo(run / "run-abcd1234.wandb")


def _fifo_other_log(run: Path) -> None:
    os.mkfifo(run / "zz-other.wandb")


def _fifo_files(run: Path) -> None:
    (run / "files").mkdir()
    for name in ("config.yaml", "wandb-summary.json", "wandb-metadata.json"):
        os.mkfifo(run / "files" / name)


def _sparse_log(run: Path) -> None:
    # A valid header, then 64 GiB of holes: reading it would walk two million empty blocks.
    _sparse(run / "run-abcd1234.wandb", 64 << 30, b":W&B\xe1\xbe\x00")


def _sparse_files(run: Path) -> None:
    (run / "files").mkdir()
    for name in ("config.yaml", "wandb-summary.json", "wandb-metadata.json"):
        _sparse(run / "files" / name, 4 << 30)


def _deep_files(run: Path) -> None:
    (run / "files").mkdir()
    (run / "files" / "config.yaml").write_text(
        "a:\n  value: " + "[" * 100_000 + "]" * 100_000 + "\n"
    )
    (run / "files" / "wandb-summary.json").write_text(
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    (run / "files" / "wandb-metadata.json").write_text(
        '{"project": ' + "[" * 900 + "]" * 900 + ', "entity": 5}'
    )


def _wide_files(run: Path) -> None:
    # Millions of values within the size caps: refused by count, before they are copied around.
    (run / "files").mkdir()
    zeros = ",".join(["0"] * (wfiles.MAX_FILE_BYTES // 2 - 16))
    (run / "files" / "wandb-summary.json").write_text('{"a": [' + zeros + "]}")
    (run / "files" / "config.yaml").write_text("a:\n  value: [" + zeros[: (2 << 20) - 32] + "]\n")


HOSTILE_RUNS = [
    ("wide-files", _wide_files, "values"),
    ("fifo-log", _fifo_log, "FIFO"),
    ("fifo-other-log", _fifo_other_log, "FIFO"),
    ("fifo-files", _fifo_files, "FIFO"),
    ("sparse-64gib-log", _sparse_log, "limit"),
    ("sparse-4gib-files", _sparse_files, "limit"),
    ("deep-files", _deep_files, "nest"),
]


@pytest.mark.parametrize(
    "make, word", [c[1:] for c in HOSTILE_RUNS], ids=[c[0] for c in HOSTILE_RUNS]
)
def test_hostile_run_folder_is_read_in_bounded_time_and_memory(
    tmp_path: Path, make, word: str
) -> None:
    wandb_run, ckpt = _hostile_run(tmp_path)
    make(wandb_run)
    result = run_child(READ_IN_CHILD, str(ckpt))
    result.assert_bounded()
    out = json.loads(result.stdout)
    assert out["run_id"] == "abcd1234"
    assert out["warnings"], out
    assert all(word.lower() in w.lower() for w in out["warnings"]), out["warnings"]
    assert all("\n" not in w for w in out["warnings"])


def test_config_yaml_values_are_plain(online_run_dir: Path) -> None:
    (online_run_dir / "files" / "config.yaml").write_text(
        "created:\n  value: 2024-01-01\nmodel:\n  value: {architecture: 5, encoder: [resnet]}\n"
        'exp_name:\n  value: "a\\0b"\n3:\n  value: three\n'
    )
    run = ws.read_run(ws.RunLocation("onl1ne00", online_run_dir))
    assert run.config == {
        "created": "2024-01-01",
        "model": {"architecture": 5, "encoder": ["resnet"]},
        "exp_name": "a\x00b",
        "3": "three",
    }
    json.dumps(run.config, allow_nan=False)
    assert ws.model_fields_from_config(run.config) == {}


def test_a_yaml_alias_bomb_in_config_is_refused(online_run_dir: Path) -> None:
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    (online_run_dir / "files" / "config.yaml").write_text(
        "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + levels
    )
    run = ws.read_run(ws.RunLocation("onl1ne00", online_run_dir))
    assert run.config == {}
    assert any("alias bomb" in w for w in run.warnings)


@pytest.mark.parametrize(
    "config",
    [
        {"model": 5},
        {"model": [1, 2]},
        {"model": {"architecture": ["a"]}},
        {"model.architecture": {"x": 1}},
        {"model/architecture": 7},
        {"exp_name": "\ud800"},
        {"exp_name": "a\x00b"},
        {"exp_name": "x" * 10_000},
        {5: "x", None: "y"},
        {"model": {5: 1, None: 2}},
        {"encoder": {"model_name": 3.5}},
        {"encoder": None},
        {"model": {"component_overrides": "x"}},
        [],
        None,
        "model",
        5,
    ],
)
def test_model_fields_from_config_of_any_shape(config) -> None:
    assert ws.model_fields_from_config(config) == {}


@pytest.mark.parametrize(
    "hint", [5, ["abc"], {"id": "x"}, "a\x00b", "\ud800", "x" * 10_000, "", None]
)
def test_find_run_ignores_hints_that_are_not_names(tmp_path: Path, hint) -> None:
    ckpt = tmp_path / "outputs" / "run" / "epoch=1.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert ws.find_run(ckpt, run_id_hints=(hint,)) is None


# The transaction log reader's own limits, on the real offline log and on records wandb would
# not write around real ones.


def _copy_run(offline_run: dict, tmp_path: Path) -> tuple[Path, Path]:
    source = _wandb_run_dir(offline_run)
    copy = tmp_path / "wandb" / source.name
    shutil.copytree(source, copy, symlinks=True)
    return copy, copy / f"run-{offline_run['run_id']}.wandb"


def test_a_record_over_the_size_limit_is_skipped(
    offline_run: dict, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(wlog, "MAX_RECORD_BYTES", 60_000)  # the 100 KB "notes" row is over it
    run_dir, _ = _copy_run(offline_run, tmp_path)
    run = ws.read_run(ws.RunLocation(offline_run["run_id"], run_dir))
    assert run.config == CONFIG
    assert any("record over" in w for w in run.warnings)
    assert 150 not in run.steps and 149 in run.steps and 151 in run.steps


@pytest.mark.parametrize(
    "limit, value, word",
    [
        ("MAX_LOG_RECORDS", 50, "stopped after"),
        ("MAX_LOG_ITEMS", 50, "stopped after"),
        ("MAX_HISTORY_VALUES", 50, "later rows ignored"),
        ("MAX_RECORD_ITEMS", 7, "items skipped"),  # rows with val/* metrics are over it
    ],
)
def test_the_reader_stops_at_its_limits(
    offline_run: dict, tmp_path: Path, monkeypatch, limit: str, value: int, word: str
) -> None:
    monkeypatch.setattr(wrun if limit == "MAX_HISTORY_VALUES" else wlog, limit, value)
    run_dir, _ = _copy_run(offline_run, tmp_path)
    run = ws.read_run(ws.RunLocation(offline_run["run_id"], run_dir))
    assert any(word in w for w in run.warnings), run.warnings
    assert 0 < len(run.steps) < len(FILLER_STEPS)


def test_update_keys_are_capped(offline_run: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wlog, "MAX_UPDATE_KEYS", 1)
    run_dir, _ = _copy_run(offline_run, tmp_path)
    run = ws.read_run(ws.RunLocation(offline_run["run_id"], run_dir))
    assert len(run.config) <= 1 and len(run.summary) <= 1
    assert any("keys ignored" in w for w in run.warnings)


def test_hostile_records_beside_real_ones(offline_run: dict, tmp_path: Path) -> None:
    run_dir, log = _copy_run(offline_run, tmp_path)
    real = list(wlog._log_records(log, []))
    deep_value = "[" * 200_000 + "]" * 200_000
    hostile = [
        record(config={"update": [{"key": "deep", "valueJson": deep_value}]}),
        record(
            config={"update": [{"nestedKey": [f"k{i}" for i in range(5_000)], "valueJson": "1"}]}
        ),
        record(config={"update": [{"key": "big", "valueJson": "9" * 10_000}]}),
        record(summary={"update": [{"key": "s", "valueJson": '"\\ud800\\u0000"'}]}),
        record(
            history={
                "item": [
                    {"key": "trainer/global_step", "valueJson": "1e400"},
                    {"key": "m", "valueJson": "NaN"},
                ]
            }
        ),
        record(
            history={"item": [{"key": "_step", "valueJson": "-5"}, {"key": "m", "valueJson": "1"}]}
        ),
        record(run={"runId": "bad\u0000id", "project": "\n", "entity": "x" * 10_000}),
        b"\xff" * 50,  # not a Record
    ]
    write_log(log, real + hostile)
    run = ws.read_run(ws.RunLocation(offline_run["run_id"], run_dir))
    assert run.config == CONFIG
    assert run.summary["s"] == "\ufffd\x00"
    assert (run.run_id, run.project, run.entity) == (offline_run["run_id"], "p", None)
    assert run.history_at_step(200)["val/hmean"] == 0.6
    assert any("nested too deep" in w or "nests deeper" in w for w in run.warnings), run.warnings
    assert ws.read_run(ws.RunLocation(offline_run["run_id"], run_dir)).config == CONFIG
