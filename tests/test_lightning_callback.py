"""MetadataCallback with a real lightning.Trainer on the CPU: sidecars and index rows follow the
files."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from helpers.modules import tiny_trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ckpt_index import api  # noqa: E402
from ckpt_index.index.engine import open_engine  # noqa: E402
from ckpt_index.lightning import MetadataCallback  # noqa: E402
from ckpt_index.lightning._hparams import model_section  # noqa: E402
from ckpt_index.lightning._metrics import metrics_section  # noqa: E402
from ckpt_index.sidecar.files import read_sidecar, sidecar_path_for  # noqa: E402

#: val/hmean by epoch: rises, falls, rises again; with save_top_k=2 epochs 2 and 4 survive.
SCHEDULE = (0.2, 0.5, 0.9, 0.4, 0.7, 0.3)
CALLBACK_LOGGER = "ckpt_index.lightning"


class TinyModule(pl.LightningModule):
    """A Linear layer whose validation metrics follow ``schedule`` epoch by epoch."""

    def __init__(self, schedule: tuple[float, ...] = SCHEDULE, **fields: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        score = self.hparams.schedule[self.current_epoch % len(self.hparams.schedule)]
        self.log_dict(
            {
                "val/loss": nn.functional.mse_loss(self.layer(x), y),
                "val/hmean": score,
                "val/precision": score,
                "val/recall": score,
            },
            sync_dist=True,
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(
            torch.randn(8, 4, generator=generator), torch.randn(8, 1, generator=generator)
        ),
        batch_size=4,
    )


def fit(
    root: Path,
    callbacks: list,
    *,
    max_epochs: int = 2,
    model: TinyModule | None = None,
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dataloader workers, tiny batch counts, ...
        trainer = tiny_trainer(root, max_epochs=max_epochs, callbacks=callbacks, **trainer_kwargs)
        trainer.fit(model or TinyModule(), loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def checkpoints_in(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.ckpt")}


def sidecars_in(directory: Path) -> set[str]:
    return {p.name[: -len(".metadata.yaml")] + ".ckpt" for p in directory.glob("*.metadata.yaml")}


def indexed(db: Path) -> dict[str, dict[str, Any]]:
    """Rows of the index by checkpoint path (raw SQL: the table is interface)."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {r["checkpoint_path"]: dict(r) for r in conn.execute("SELECT * FROM checkpoints")}


def assert_consistent(directory: Path, db: Path | None) -> None:
    """Exactly the checkpoints on disk have valid sidecars, and rows but for links (aliases of
    their target's row: one checkpoint, one row); no temporary files remain."""
    files = checkpoints_in(directory)
    assert files, f"no checkpoints in {directory}"
    assert sidecars_in(directory) == files
    for name in files:
        meta = read_sidecar(sidecar_path_for(directory / name))
        assert meta.checkpoint_path == str(directory / name)
        saved = torch.load(directory / name, map_location="cpu", weights_only=False)
        assert (meta.training.epoch, meta.training.global_step) == (
            saved["epoch"],
            saved["global_step"],
        ), name
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
    if db is not None:
        rows = {p: r for p, r in indexed(db).items() if Path(p).parent == directory}
        links = {str(directory / n) for n in files if (directory / n).is_symlink()}
        assert set(rows) == {str(directory / n) for n in files} - links
        assert {a for r in rows.values() for a in json.loads(r["aliases"] or "[]")} == links


def ckpt_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith(CALLBACK_LOGGER) and r.levelno >= logging.WARNING
    ]


# -- Top-k -----------------------------------------------------------------------------------------


def test_top_k_survivors_have_sidecars_and_rows_and_best_by_hmean(
    tmp_path, db_path, invoke, caplog
):
    run = tmp_path / "run"
    fit(
        run,
        [
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=2),
            MetadataCallback(db=db_path),
        ],
        max_epochs=6,
    )

    ckpts = run / "checkpoints"
    assert checkpoints_in(ckpts) == {"epoch=2-step=6.ckpt", "epoch=4-step=10.ckpt"}
    assert_consistent(ckpts, db_path)
    assert len(indexed(db_path)) == 2  # the four that fell out of the top k left no rows behind

    result = invoke("query", "--best-by", "hmean", "--format", "json")
    assert result.exit_code == 0, result.output
    [best] = json.loads(result.output)
    assert best["checkpoint_path"] == str(ckpts / "epoch=2-step=6.ckpt")
    assert best["hmean"] == pytest.approx(0.9)
    assert not ckpt_warnings(caplog)


def test_sidecar_contents(tmp_path, db_path):
    hparams = {  # a whole Hydra config saved as hparams, the seeds' layout
        "model": {
            "architecture": "dbnet",
            "component_overrides": {
                "encoder": {"model_name": "resnet18", "pretrained": True, "frozen": False},
                "decoder": {
                    "_target_": "ocr.models.PANDecoder",
                    "in_channels": [64, 128],
                    "inner_channels": 32,
                    "output_channels": 16,
                    "dropout": 0.1,
                },
                "head": {"name": "db_head", "in_channels": 16},
                "loss": {"name": "db_loss", "params": {"alpha": 5}},
            },
        },
    }
    run = tmp_path / "run"
    fit(
        run,
        [
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=1),
            MetadataCallback(exp_name="my-exp", training_phase="finetuning", db=db_path),
        ],
        model=TinyModule(**hparams),
        max_epochs=3,
    )

    [ckpt] = (run / "checkpoints").glob("*.ckpt")
    meta = read_sidecar(sidecar_path_for(ckpt))
    assert (meta.exp_name, meta.checkpoint_path) == ("my-exp", str(ckpt))
    assert meta.training.model_dump() == {
        "epoch": 2,
        "global_step": 6,
        "training_phase": "finetuning",
        "max_epochs": 3,
    }
    assert meta.model.architecture == "dbnet"
    assert meta.model.encoder.model_dump() == {
        "model_name": "resnet18",
        "pretrained": True,
        "frozen": False,
    }
    assert meta.model.decoder.name == "PANDecoder"  # from the Hydra _target_
    assert (meta.model.decoder.in_channels, meta.model.decoder.params) == (
        [64, 128],
        {"dropout": 0.1},
    )
    assert (meta.model.head.name, meta.model.head.in_channels) == ("db_head", 16)
    assert (meta.model.loss.name, meta.model.loss.params) == ("db_loss", {"alpha": 5})
    assert meta.metrics.hmean == meta.metrics.precision == meta.metrics.recall == pytest.approx(0.9)
    assert meta.metrics.validation_loss == pytest.approx(
        meta.metrics.additional_metrics["val/loss"]
    )
    assert set(meta.metrics.additional_metrics) == {
        "train/loss",
        "val/loss",
        "val/hmean",
        "val/precision",
        "val/recall",
    }
    assert meta.checkpointing.model_dump() == {
        "monitor": "val/hmean",
        "mode": "max",
        "save_top_k": 1,
        "save_last": False,
    }
    assert meta.hydra_config_path is None and meta.wandb_run_id is None

    row = indexed(db_path)[str(ckpt)]
    assert (row["architecture"], row["encoder"], row["decoder"], row["training_phase"]) == (
        "dbnet",
        "resnet18",
        "PANDecoder",
        "finetuning",
    )


def test_unknown_model_and_default_exp_name(tmp_path, db_path):
    run = tmp_path / "plain_run"
    fit(run, [ModelCheckpoint(save_top_k=1), MetadataCallback(db=db_path)], max_epochs=1)
    [ckpt] = (run / "checkpoints").glob("*.ckpt")
    meta = read_sidecar(sidecar_path_for(ckpt))
    assert meta.exp_name == "plain_run"  # the run directory (parent of checkpoints/)
    assert meta.model.architecture == meta.model.encoder.model_name == "unknown"
    assert meta.checkpointing.monitor is None and meta.checkpointing.mode == "min"
    row = indexed(db_path)[str(ckpt)]
    assert row["architecture"] is None and row["encoder"] is None  # "unknown" is shown as empty


def test_hydra_run_directory_is_recorded(tmp_path, db_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model:\n  architecture: dbnet\n")
    fit(run, [ModelCheckpoint(save_top_k=1), MetadataCallback(db=db_path)], max_epochs=1)
    [ckpt] = (run / "checkpoints").glob("*.ckpt")
    assert read_sidecar(sidecar_path_for(ckpt)).hydra_config_path == str(
        run / ".hydra" / "config.yaml"
    )


# -- Every-n, several ModelCheckpoints, save_last, resume ------------------------------------------


def test_every_n_epochs(tmp_path, db_path):
    run = tmp_path / "run"
    fit(
        run,
        [ModelCheckpoint(every_n_epochs=2, save_top_k=-1), MetadataCallback(db=db_path)],
        max_epochs=4,
    )
    ckpts = run / "checkpoints"
    assert checkpoints_in(ckpts) == {"epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"}
    assert_consistent(ckpts, db_path)
    assert [
        read_sidecar(sidecar_path_for(ckpts / n)).training.epoch
        for n in sorted(checkpoints_in(ckpts))
    ] == [1, 3]


def test_several_model_checkpoints(tmp_path, db_path):
    best = ModelCheckpoint(dirpath=tmp_path / "best", monitor="val/hmean", mode="max", save_top_k=1)
    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1)
    fit(tmp_path, [best, steps, MetadataCallback(db=db_path)], max_epochs=4)

    assert checkpoints_in(tmp_path / "best") == {"epoch=2-step=6.ckpt"}
    assert checkpoints_in(tmp_path / "steps") == {"epoch=1-step=3.ckpt", "epoch=2-step=6.ckpt"}
    for directory in (tmp_path / "best", tmp_path / "steps"):
        assert_consistent(directory, db_path)
    by_steps = read_sidecar(tmp_path / "steps" / "epoch=1-step=3.metadata.yaml")
    assert by_steps.checkpointing.model_dump() == {
        "monitor": None,
        "mode": "min",
        "save_top_k": -1,
        "save_last": False,
    }
    assert by_steps.training.global_step == 3
    by_hmean = read_sidecar(tmp_path / "best" / "epoch=2-step=6.metadata.yaml")
    assert (by_hmean.checkpointing.monitor, by_hmean.checkpointing.save_top_k) == ("val/hmean", 1)
    assert len(indexed(db_path)) == 3


@pytest.mark.parametrize("save_last", [True, "link"])
def test_save_last(tmp_path, db_path, save_last):
    run = tmp_path / "run"
    # Epoch 3 (hmean 0.4) is not in the top 1, so nothing is saved at its end.
    fit(
        run,
        [
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=1, save_last=save_last),
            MetadataCallback(db=db_path),
        ],
        max_epochs=4,
    )
    ckpts = run / "checkpoints"
    last = ckpts / "last.ckpt"
    assert_consistent(ckpts, db_path)
    meta = read_sidecar(ckpts / "last.metadata.yaml")
    assert meta.checkpoint_path == str(last)
    # Lightning refreshes last.ckpt only after a save (or relinks it): it holds epoch 2 either way,
    # and its sidecar says so (assert_consistent compared it with the file's own epoch and step).
    assert (meta.training.epoch, meta.training.global_step) == (2, 6)
    assert meta.metrics.hmean == pytest.approx(0.9)
    rows = indexed(db_path)
    target = rows[str(ckpts / "epoch=2-step=6.ckpt")]
    if save_last == "link":
        # One checkpoint, one row: the link is an alias of the epoch file it points to.
        assert last.is_symlink() and os.readlink(last) == "epoch=2-step=6.ckpt"
        assert str(last) not in rows and json.loads(target["aliases"]) == [str(last)]
    else:
        # Saved at the step of epoch=2-step=6.ckpt, with its bytes: a copy, marked is_last.
        assert not last.is_symlink()
        assert last.read_bytes() == (ckpts / "epoch=2-step=6.ckpt").read_bytes()
        row = rows[str(last)]
        assert row["epoch"] == meta.training.epoch and row["save_last"] == 1
        assert row["is_last"] == 1 and not target["is_last"] and target["aliases"] is None
    # A sync of the tree agrees with the callback.
    api.sync(run, db=db_path)
    synced = indexed(db_path)
    assert {p: (r["aliases"], r["is_last"]) for p, r in synced.items()} == {
        p: (r["aliases"], r["is_last"]) for p, r in rows.items()
    }


def test_resume_from_checkpoint(tmp_path, db_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"

    def callbacks():
        return [
            ModelCheckpoint(
                dirpath=ckpts, monitor="val/hmean", mode="max", save_top_k=2, save_last=True
            ),
            MetadataCallback(db=db_path),
        ]

    fit(run, callbacks(), max_epochs=3)
    assert checkpoints_in(ckpts) == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}
    fit(run, callbacks(), max_epochs=6, ckpt_path=str(ckpts / "last.ckpt"))

    # epoch 1 (0.5), from the first fit, fell out of the top 2 when epoch 4 (0.7) came in.
    assert checkpoints_in(ckpts) == {"epoch=2-step=6.ckpt", "epoch=4-step=10.ckpt", "last.ckpt"}
    assert_consistent(ckpts, db_path)
    assert read_sidecar(ckpts / "last.metadata.yaml").training.epoch == 4  # the last save
    assert len(indexed(db_path)) == 3


def test_sync_agrees_with_the_callback(tmp_path, db_path, invoke):
    run = tmp_path / "run"
    fit(
        run,
        [
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=2, save_last="link"),
            MetadataCallback(db=db_path),
        ],
        max_epochs=4,
    )
    before = indexed(db_path)
    result = invoke("sync", str(run), "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    # The callback wrote exactly the rows a sync would: nothing to add, update, re-read or remove.
    assert (summary["added"], summary["updated"], summary["removed"]) == (0, 0, 0)
    # last.ckpt is a link: an alias of the epoch file it points to, not a row.
    assert summary["unchanged"] == summary["valid"] == len(before) == 2
    assert summary["aliases"] == 1 and summary["dangling_links"] == []
    after = indexed(db_path)
    assert after.keys() == before.keys()
    assert {p: r["aliases"] for p, r in after.items()} == {
        p: r["aliases"] for p, r in before.items()
    }


def test_db_false_writes_sidecars_only(tmp_path):
    run = tmp_path / "run"
    fit(run, [ModelCheckpoint(save_top_k=1), MetadataCallback(db=False)], max_epochs=1)
    assert_consistent(run / "checkpoints", None)
    assert not list(tmp_path.rglob("*.db"))


def test_default_db_follows_the_environment(tmp_path, monkeypatch):
    db = tmp_path / "from_env.db"
    monkeypatch.setenv("CKPT_INDEX_DB", str(db))
    run = tmp_path / "run"
    fit(run, [ModelCheckpoint(save_top_k=1), MetadataCallback()], max_epochs=1)
    assert_consistent(run / "checkpoints", db)


def test_hooks_are_removed_after_fit(tmp_path, db_path):
    checkpoint = ModelCheckpoint(save_top_k=1)
    fit(tmp_path / "run", [checkpoint, MetadataCallback(db=db_path)], max_epochs=1)
    assert not {"_save_checkpoint", "_link_checkpoint", "_remove_checkpoint"} & set(
        vars(checkpoint)
    )


class CrashingModule(TinyModule):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 1:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_a_crashing_fit_still_leaves_sidecars_and_rows(tmp_path, db_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        fit(
            run,
            [ModelCheckpoint(save_top_k=-1, save_on_exception=True), MetadataCallback(db=db_path)],
            max_epochs=4,
            model=CrashingModule(),
        )
    ckpts = run / "checkpoints"
    # teardown() is not called after an exception: the checkpoint saved on the exception flushed
    # the index writer itself.
    assert checkpoints_in(ckpts) == {
        "epoch=0-step=2.ckpt",
        "epoch=1-step=4.ckpt",
        "epoch=2-step=5.ckpt",
    }
    assert_consistent(ckpts, db_path)


# -- W&B -------------------------------------------------------------------------------------------


def test_wandb_offline_run_id(tmp_path, db_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    logger = WandbLogger(project="ckpt-index-test", save_dir=str(tmp_path), offline=True)
    try:
        fit(
            tmp_path,
            [ModelCheckpoint(save_top_k=1), MetadataCallback(db=db_path)],
            max_epochs=1,
            logger=logger,
        )
    finally:
        import wandb

        wandb.finish()
    run_id = logger.version
    [ckpt] = tmp_path.glob(f"ckpt-index-test/{run_id}/checkpoints/*.ckpt")
    meta = read_sidecar(sidecar_path_for(ckpt))
    assert meta.wandb_run_id == run_id
    assert meta.exp_name == f"ckpt-index-test/{run_id}"  # Lightning's <project>/<run id> layout
    assert indexed(db_path)[str(ckpt)]["wandb_run_id"] == run_id


# -- Failures never stop training ------------------------------------------------------------------


def test_locked_index(tmp_path, db_path, caplog, invoke):
    open_engine(db_path).dispose()  # an index at head, then held by another writer the whole time
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    run = tmp_path / "run"
    try:
        fit(
            run,
            [
                ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=2, save_last=True),
                MetadataCallback(db=db_path, busy_timeout=0.2),
            ],
            max_epochs=4,
        )
    finally:
        lock.rollback()
        lock.close()

    assert len(ckpt_warnings(caplog)) == 1
    assert "could not update the index" in ckpt_warnings(caplog)[0].getMessage()
    assert_consistent(run / "checkpoints", None)  # sidecars are complete: they are the truth
    assert indexed(db_path) == {}  # failed batches were rolled back whole
    result = invoke("sync", str(run))
    assert result.exit_code == 0
    assert len(indexed(db_path)) == 3


def test_index_path_unusable(tmp_path, caplog):
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("")
    run = tmp_path / "run"
    fit(
        run,
        [
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=1),
            MetadataCallback(db=not_a_dir / "index.db"),
        ],
        max_epochs=3,
    )
    [warning] = ckpt_warnings(caplog)
    assert "could not update the index" in warning.getMessage()
    assert_consistent(run / "checkpoints", None)
    assert not_a_dir.read_text() == ""


def test_sidecar_cannot_be_written(tmp_path, db_path, caplog):
    # Running as root, permissions would not stop a write; a directory squatting on the sidecar's
    # name does: os.replace() onto it fails (EISDIR) after the temporary file was written, which
    # exercises the clean-up path. The failure is real, and the same for every user.
    ckpts = tmp_path / "run" / "checkpoints"
    blocker = ckpts / "epoch=0-step=2.metadata.yaml"
    blocker.mkdir(parents=True)
    trainer = fit(
        tmp_path / "run",
        [ModelCheckpoint(save_top_k=-1), MetadataCallback(db=db_path)],
        max_epochs=3,
    )

    assert trainer.current_epoch == 3  # training completed
    [warning] = ckpt_warnings(caplog)
    assert "epoch=0-step=2.ckpt" in warning.getMessage()
    assert blocker.is_dir() and not any(blocker.iterdir())
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]
    assert checkpoints_in(ckpts) == {
        "epoch=0-step=2.ckpt",
        "epoch=1-step=4.ckpt",
        "epoch=2-step=6.ckpt",
    }
    for name in ("epoch=1-step=4", "epoch=2-step=6"):
        read_sidecar(ckpts / f"{name}.metadata.yaml")
    # No row for a checkpoint without its sidecar: the index never runs ahead of the truth.
    assert set(indexed(db_path)) == {
        str(ckpts / "epoch=1-step=4.ckpt"),
        str(ckpts / "epoch=2-step=6.ckpt"),
    }


def test_repeated_failures_log_one_warning(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=CALLBACK_LOGGER)
    ckpts = tmp_path / "run" / "checkpoints"
    for name in ("epoch=0-step=2", "epoch=1-step=4"):
        (ckpts / f"{name}.metadata.yaml").mkdir(parents=True)
    fit(
        tmp_path / "run", [ModelCheckpoint(save_top_k=-1), MetadataCallback(db=False)], max_epochs=3
    )
    mine = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith(CALLBACK_LOGGER)
    ]
    assert [level for level, _ in mine] == ["WARNING", "DEBUG", "INFO"]
    assert "epoch=1-step=4.ckpt" in mine[1][1]
    assert "2 metadata operations failed" in mine[2][1]


# -- DDP -------------------------------------------------------------------------------------------


class RecordingCallback(MetadataCallback):
    """Appends ``<global rank> <path>`` to a file for every sidecar it writes (any process)."""

    def __init__(self, record: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record

    def _after_save(self, trainer, callback, filepath):
        super()._after_save(trainer, callback, filepath)
        with open(self.record, "a") as handle:
            handle.write(f"{trainer.global_rank} {os.path.basename(filepath)}\n")


@pytest.mark.slow
def test_ddp_two_processes_write_each_sidecar_once(tmp_path, db_path):
    from ckpt_index.lightning import UniqueModelCheckpoint

    record = tmp_path / "writes.log"
    run = tmp_path / "run"
    fit(
        run,
        [
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=1),
            UniqueModelCheckpoint(
                experiment_tag="ddp",
                monitor="val/hmean",
                mode="max",
                save_top_k=1,
                save_last="link",
            ),
            RecordingCallback(str(record), db=db_path),
        ],
        max_epochs=3,
        strategy="ddp_spawn",
        devices=2,
    )

    writes = record.read_text().split("\n")[:-1]
    # One write per save, all on global rank 0: epochs 0, 1 and 2 were each a new best.
    assert sorted(writes) == sorted(
        [f"0 epoch={e}-step={e + 1}.ckpt" for e in range(3)]
        + [f"0 epoch-{e:02d}_step-{e + 1:06d}.ckpt" for e in range(3)]
    )
    assert checkpoints_in(run / "checkpoints") == {"epoch=2-step=3.ckpt"}
    assert_consistent(run / "checkpoints", db_path)
    # Both ranks named a run directory; global rank 0's (broadcast) is the only one used.
    [scheme_dir] = (run / "outputs").iterdir()
    assert checkpoints_in(scheme_dir / "checkpoints") == {
        "epoch-02_step-000003.ckpt",
        "last.ckpt",
        "best-hmean-0.9000.ckpt",
    }
    assert_consistent(scheme_dir / "checkpoints", db_path)


# -- Arguments, helpers, imports -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"training_phase": "train"},
            "MetadataCallback(training_phase='train'): training_phase must be one of",
        ),
        ({"exp_name": ""}, "MetadataCallback(exp_name=''): exp_name must be"),
        ({"db": True}, "MetadataCallback(db=True): db must be"),
        ({"db": 3}, "MetadataCallback(db=3): db must be"),
        ({"busy_timeout": -1}, "MetadataCallback(busy_timeout=-1): busy_timeout must be"),
    ],
)
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError) as error:
        MetadataCallback(**kwargs)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        ({"val/hmean": 0.8, "hmean": 0.7, "train/hmean": 0.9}, {"hmean": 0.8}),
        ({"cleval/precision": 0.6, "cleval/recall": 0.5}, {"precision": 0.6, "recall": 0.5}),
        ({"val_f1": 0.75}, {"hmean": 0.75}),
        ({"val/f1_score": 0.5, "test/hmean": 0.4}, {"hmean": 0.5}),
        ({"metrics/hmean": 0.4}, {"hmean": 0.4}),
        ({"train/f1": 0.9}, {}),
        ({"val/hmean": 84.3}, {}),  # a percentage is not a ratio; kept only in additional_metrics
        ({"val/hmean": float("nan"), "hmean": 0.3}, {"hmean": 0.3}),
        ({"val/hmean_epoch": 0.6, "val/hmean_step": 0.1}, {"hmean": 0.6}),
        ({"val/loss": 0.25, "train/loss": 0.1, "loss": 0.3}, {"validation_loss": 0.25}),
        ({"validation_loss": 0.5}, {"validation_loss": 0.5}),
        ({"val_loss": 1.5}, {"validation_loss": 1.5}),
        ({"loss": 0.3}, {}),
    ],
)
def test_metrics_are_matched_by_pattern(logged, expected):
    section = metrics_section({k: torch.tensor(v) for k, v in logged.items()})
    assert {k: v for k, v in section.items() if k != "additional_metrics"} == pytest.approx(
        expected
    )
    assert set(section["additional_metrics"]) == set(logged)


def test_metrics_skip_non_scalars():
    section = metrics_section(
        {"val/hmean": torch.tensor(0.5), "confusion": torch.ones(2, 2), "n": 3}
    )
    assert section["additional_metrics"] == {"n": 3.0, "val/hmean": 0.5}


@pytest.mark.parametrize(
    ("hparams", "architecture", "encoder"),
    [
        ({}, "unknown", "unknown"),
        (None, "unknown", "unknown"),
        ({"architecture_name": "craft", "encoder": "vgg16"}, "craft", "vgg16"),
        (
            {"architecture": {"name": "pan"}, "backbone": {"model_name": "resnet50"}},
            "pan",
            "resnet50",
        ),
        (
            {"model": {"architecture": "dbnet", "encoder": {"_target_": "timm.models.ResNet"}}},
            "dbnet",
            "ResNet",
        ),
    ],
)
def test_model_fields_from_hparams(hparams, architecture, encoder):
    section = model_section(hparams)
    assert (section["architecture"], section["encoder"]["model_name"]) == (architecture, encoder)
    assert [section[k]["name"] for k in ("decoder", "head", "loss")] == ["unknown"] * 3


def test_model_fields_of_the_wrong_type_become_params():
    section = model_section(
        {"decoder": {"name": "fpn", "in_channels": "auto", "inner_channels": 8}}
    )
    assert section["decoder"] == {
        "name": "fpn",
        "params": {"in_channels": "auto", "inner_channels": 8},
    }


def test_importing_ckpt_index_leaves_lightning_out():
    code = (
        "import sys, ckpt_index, ckpt_index.lightning, ckpt_index.lightning._metrics, "
        "ckpt_index.lightning._hparams\n"
        "heavy = [m for m in ('torch', 'lightning', 'wandb') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from ckpt_index.lightning import MetadataCallback\n"
        "assert 'lightning' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
