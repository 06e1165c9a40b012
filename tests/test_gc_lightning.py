"""`gc --apply` on checkpoints a real Lightning Trainer wrote (CPU, tiny model, a few steps).

Three runs, each its own experiment, with MetadataCallback's sidecars, indexed by `ckpt-index
sync` on both backends:

- A: ``save_top_k=3, save_last=True`` (a ``last.ckpt`` written as a file), 6 epochs, then a fit
  resumed from ``last`` to 9 epochs: its best (epoch 4) is not its newest;
- B: every epoch saved, ``save_last="link"`` (``last.ckpt`` a symbolic link to the newest), an
  early epoch pinned with ``ckpt-index pin``;
- C: every epoch saved, written "just now": an active run.

After ``gc --apply --keep-best 1 --by val/hmean``: each best, ``last.ckpt`` and its target, the
pinned epoch and all of C remain, exactly the others are gone, the index equals a fresh sync,
and ``Trainer.fit(ckpt_path="last")`` resumes A and B from where they stopped.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from helpers.index_rows import content, raw_rows, sync, wipe  # noqa: E402
from helpers.modules import Detector, tiny_trainer  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ckpt_index.lightning import MetadataCallback  # noqa: E402
from ckpt_index.sidecar.files import sidecar_path_for  # noqa: E402

#: val/hmean by epoch. A: best epoch 4 (0.95); B: best epoch 1 (0.9), newest epoch 4.
SCHEDULE_A = (0.2, 0.5, 0.9, 0.4, 0.95, 0.3)
SCHEDULE_B = (0.3, 0.9, 0.4, 0.5, 0.6)
HOURS_AGO = time.time() - 3 * 3600


class EpochsRun(Callback):
    """Counts the epochs a fit trains (a resumed fit trains only the remaining ones)."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.started.append(trainer.current_epoch)


def checkpointing(dirpath: Path, **options: Any) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=dirpath,
        filename="epoch-{epoch:02d}_step-{step:06d}",
        auto_insert_metric_name=False,
        monitor="val/hmean",
        mode="max",
        **options,
    )


def fit(
    run: Path,
    exp: str,
    schedule: tuple[float, ...],
    max_epochs: int,
    ckpt_path: str | None = None,
    **options: Any,
) -> EpochsRun:
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    epochs = EpochsRun()
    callbacks = [checkpointing(run / "checkpoints", **options), MetadataCallback(exp, db=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = tiny_trainer(run, max_epochs=max_epochs, callbacks=[*callbacks, epochs])
        trainer.fit(Detector(schedule=schedule), data, data, ckpt_path=ckpt_path)
    return epochs


A_OPTIONS: dict[str, Any] = {"save_top_k": 3, "save_last": True}
B_OPTIONS: dict[str, Any] = {"save_top_k": -1, "save_last": "link"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The three runs, trained once for the module (each test copies the tree)."""
    root = tmp_path_factory.mktemp("trained") / "outputs"
    fit(root / "A", "A", SCHEDULE_A, 6, **A_OPTIONS)
    fit(root / "A", "A", SCHEDULE_A, 9, ckpt_path="last", **A_OPTIONS)
    fit(root / "B", "B", SCHEDULE_B, 5, **B_OPTIONS)
    fit(root / "C", "C", SCHEDULE_A, 3, save_top_k=-1)
    return root


def names(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".ckpt")}


def age(paths: list[Path], when: float) -> None:
    for path in paths:
        os.utime(path, (when, when), follow_symlinks=False)


def test_gc_keeps_best_last_pinned_and_active_and_training_resumes(
    trained, tmp_path, db_url, invoke_db
):
    outputs = tmp_path / "outputs"
    shutil.copytree(trained, outputs, symlinks=True)
    a, b, c = outputs / "A", outputs / "B", outputs / "C"
    everything = [p for p in outputs.rglob("*")] + [outputs]
    age(everything, HOURS_AGO)
    age([*c.rglob("*"), c], time.time())  # C is being written
    ckpts_a, ckpts_b = a / "checkpoints", b / "checkpoints"
    # What Lightning left: A's top 3 of 9 epochs and last.ckpt; B's 5 epochs and a last link.
    assert names(a) == {
        "epoch-04_step-000010.ckpt",
        "epoch-02_step-000006.ckpt",
        "epoch-08_step-000018.ckpt",
        "last.ckpt",
    }
    assert (ckpts_a / "last.ckpt").is_file() and not (ckpts_a / "last.ckpt").is_symlink()
    assert os.readlink(ckpts_b / "last.ckpt") == "epoch-04_step-000010.ckpt"
    c_before = sorted(p.name for p in (c / "checkpoints").iterdir())

    assert invoke_db("sync", str(outputs)).exit_code == 0
    pinned = ckpts_b / "epoch-00_step-000002.ckpt"
    pin = invoke_db("pin", str(pinned))
    assert pin.exit_code == 0, pin.output
    age([sidecar_path_for(pinned)], HOURS_AGO)  # pin wrote it: not a sign of training
    assert invoke_db("sync", str(outputs)).exit_code == 0

    result = invoke_db("gc", str(outputs), "--keep-best", "1", "--by", "val/hmean", "--apply")
    assert result.exit_code == 0, result.output

    # A: the best (epoch 4), last.ckpt and the newest epoch file stay; epoch 2 goes.
    assert names(a) == {"epoch-04_step-000010.ckpt", "epoch-08_step-000018.ckpt", "last.ckpt"}
    # B: the best (epoch 1), the pinned epoch 0, last.ckpt and its target (epoch 4) stay.
    assert names(b) == {
        "epoch-00_step-000002.ckpt",
        "epoch-01_step-000004.ckpt",
        "epoch-04_step-000010.ckpt",
        "last.ckpt",
    }
    assert (ckpts_b / "last.ckpt").resolve().exists()
    # C: nothing touched.
    assert sorted(p.name for p in (c / "checkpoints").iterdir()) == c_before
    # Sidecars went with their checkpoints; no orphan, no marker left.
    for ckpts in (ckpts_a, ckpts_b):
        for sidecar in ckpts.glob("*.metadata.yaml"):
            assert sidecar.with_name(sidecar.name.replace(".metadata.yaml", ".ckpt")).exists()
        assert not list(ckpts.glob(".*"))
    assert {line.split()[1] for line in result.output.splitlines()[:-1]} == {
        "A/checkpoints/epoch-02_step-000006.ckpt",
        "B/checkpoints/epoch-02_step-000006.ckpt",
        "B/checkpoints/epoch-03_step-000008.ckpt",
    }

    # The index is what a fresh sync of the disk gives.
    rows_after_gc = set(raw_rows(db_url))
    sync(outputs, db_url)
    assert set(raw_rows(db_url)) == rows_after_gc
    fresh = "sqlite:///" + str(tmp_path / "fresh.db")
    sync(outputs, fresh)
    assert content(db_url) == content(fresh)
    wipe(fresh)

    # Training resumes from last.ckpt in both runs: only the remaining epochs are trained.
    resumed_a = fit(a, "A", SCHEDULE_A, 10, ckpt_path="last", **A_OPTIONS)
    assert resumed_a.started == [9]
    resumed_b = fit(b, "B", SCHEDULE_B, 6, ckpt_path="last", **B_OPTIONS)
    assert resumed_b.started == [5]
