"""UniqueModelCheckpoint: the naming scheme, the best-* link, resuming in place (a real Trainer on
the CPU)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from helpers.index_rows import raw_rows  # noqa: E402
from helpers.modules import Detector, tiny_trainer  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ckpt_index import api  # noqa: E402
from ckpt_index.lightning import MetadataCallback, UniqueModelCheckpoint  # noqa: E402
from ckpt_index.sidecar.files import read_sidecar, sidecar_path_for  # noqa: E402
from ckpt_index.sources.naming import parse_checkpoint_name, parse_run_dir  # noqa: E402

STAMP = "20251015_120000"


class Anonymous(Detector):
    def __init__(self) -> None:
        super().__init__(architecture_name=None, encoder=None)


def fit(
    root: Path,
    callbacks: list,
    *,
    max_epochs: int,
    model: pl.LightningModule | None = None,
    ckpt_path: str | None = None,
) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = tiny_trainer(root, max_epochs=max_epochs, callbacks=callbacks)
        trainer.fit(model or Detector(), data, data, ckpt_path=ckpt_path)
    return trainer


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.ckpt")}


def rows(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {Path(p).name for (p,) in conn.execute("SELECT checkpoint_path FROM checkpoints")}


def scheme(**kwargs: Any) -> UniqueModelCheckpoint:
    options: dict[str, Any] = dict(
        experiment_tag="ocr_v1",
        timestamp=STAMP,
        monitor="val/hmean",
        mode="max",
        save_top_k=2,
        save_last=True,
    )
    options.update(kwargs)
    return UniqueModelCheckpoint(**options)


def test_scheme_layout_and_names(tmp_path, db_path):
    checkpoint = scheme()
    fit(tmp_path, [checkpoint, MetadataCallback(db=db_path)], max_epochs=6)

    run_dir = tmp_path / "outputs" / f"ocr_v1-dbnet-resnet18_training_{STAMP}"
    ckpts = run_dir / "checkpoints"
    assert (checkpoint.run_dir, checkpoint.dirpath) == (str(run_dir), str(ckpts))
    parsed = parse_run_dir(run_dir.name)
    assert (parsed.tag, parsed.architecture, parsed.encoder, parsed.phase, parsed.timestamp) == (
        "ocr_v1",
        "dbnet",
        "resnet18",
        "training",
        STAMP,
    )

    # hmean by epoch 0.2 0.5 0.9 0.4 0.95 0.3: the top 2 are epochs 2 and 4.
    assert names(ckpts) == {
        "epoch-02_step-000006.ckpt",
        "epoch-04_step-000010.ckpt",
        "last.ckpt",
        "best-hmean-0.9500.ckpt",
    }
    assert {parse_checkpoint_name(n).format for n in names(ckpts)} == {"scheme", "last", "best"}
    best = ckpts / "best-hmean-0.9500.ckpt"
    assert best.is_symlink() and os.readlink(best) == "epoch-04_step-000010.ckpt"
    assert checkpoint.best_link_path == str(best)

    # Every file, links included, has its sidecar; the replaced best-hmean-0.9000 link has none.
    # One checkpoint, one row: the best-* link is an alias of the epoch file, not a row.
    assert {p.name for p in ckpts.glob("*.metadata.yaml")} == {
        n.replace(".ckpt", ".metadata.yaml") for n in names(ckpts)
    }
    assert rows(db_path) == names(ckpts) - {best.name}
    written = raw_rows(db_path)
    target = str(ckpts / "epoch-04_step-000010.ckpt")
    assert json.loads(written[target]["aliases"]) == [str(best)]
    # last.ckpt holds epoch 5 (in no top k): its own checkpoint, not a copy.
    assert not written[str(ckpts / "last.ckpt")]["is_last"]
    # A sync of the tree agrees with what the callback wrote.
    api.sync(tmp_path / "outputs", db=db_path)
    synced = raw_rows(db_path)
    assert set(synced) == set(written)
    assert synced[target]["aliases"] == written[target]["aliases"]
    meta = read_sidecar(sidecar_path_for(best))
    assert (meta.training.epoch, meta.metrics.hmean, meta.exp_name) == (
        4,
        pytest.approx(0.95),
        run_dir.name,
    )


def test_experiment_tag_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERIMENT_TAG", "ablation/wide-run")
    checkpoint = scheme(experiment_tag="ignored", training_phase="finetuning")
    fit(tmp_path, [checkpoint], max_epochs=1)
    assert Path(checkpoint.run_dir).name == f"ablation_wide_run-dbnet-resnet18_finetuning_{STAMP}"
    assert names(Path(checkpoint.dirpath)) == {
        "epoch-00_step-000002.ckpt",
        "last.ckpt",
        "best-hmean-0.2000.ckpt",
    }


def test_model_part_and_timestamp_defaults(tmp_path):
    from_class = UniqueModelCheckpoint(outputs_dir=tmp_path / "runs")
    fit(tmp_path, [from_class], max_epochs=1, model=Anonymous())
    run_dir = Path(from_class.run_dir)
    assert run_dir.parent == tmp_path / "runs"
    assert re.fullmatch(r"exp-anonymous_training_\d{8}_\d{6}", run_dir.name)
    assert names(run_dir / "checkpoints") == {
        "epoch-00_step-000002.ckpt"
    }  # no monitor: no best link

    named = UniqueModelCheckpoint(model_name="craft-vgg16_bn", timestamp=STAMP)
    fit(tmp_path, [named], max_epochs=1, model=Detector(encoder={"model_name": "resnet50"}))
    parsed = parse_run_dir(Path(named.run_dir).name)
    assert (parsed.architecture, parsed.encoder) == ("craft", "vgg16_bn")


def test_explicit_dirpath_keeps_the_file_names(tmp_path):
    checkpoint = scheme(dirpath=tmp_path / "mine", save_top_k=1)
    fit(tmp_path, [checkpoint], max_epochs=3)
    assert names(tmp_path / "mine") == {
        "epoch-02_step-000006.ckpt",
        "last.ckpt",
        "best-hmean-0.9000.ckpt",
    }
    assert not (tmp_path / "outputs").exists()


def test_best_link_follows_a_top_1_checkpoint(tmp_path, db_path):
    # With save_top_k=1 the old best file is deleted before the link moves: no link is left
    # dangling.
    checkpoint = scheme(save_top_k=1, save_last=False)
    fit(tmp_path, [checkpoint, MetadataCallback(db=db_path)], max_epochs=5)
    ckpts = Path(checkpoint.dirpath)
    assert names(ckpts) == {"epoch-04_step-000010.ckpt", "best-hmean-0.9500.ckpt"}
    assert all(p.exists() for p in ckpts.iterdir())
    assert {p.name for p in ckpts.glob("*.metadata.yaml")} == {
        "epoch-04_step-000010.metadata.yaml",
        "best-hmean-0.9500.metadata.yaml",
    }
    assert rows(db_path) == {"epoch-04_step-000010.ckpt"}
    aliases = raw_rows(db_path)[str(ckpts / "epoch-04_step-000010.ckpt")]["aliases"]
    assert json.loads(aliases) == [str(ckpts / "best-hmean-0.9500.ckpt")]


def test_save_best_false(tmp_path):
    checkpoint = scheme(save_best=False, save_top_k=1, save_last=False)
    fit(tmp_path, [checkpoint], max_epochs=3)
    assert names(Path(checkpoint.dirpath)) == {"epoch-02_step-000006.ckpt"}


def test_resume_continues_in_the_same_run_directory(tmp_path, db_path):
    first = scheme(timestamp="20251015_120000")
    fit(tmp_path, [first, MetadataCallback(db=db_path)], max_epochs=3)
    ckpts = Path(first.dirpath)
    assert names(ckpts) == {
        "epoch-01_step-000004.ckpt",
        "epoch-02_step-000006.ckpt",
        "last.ckpt",
        "best-hmean-0.9000.ckpt",
    }

    second = scheme(timestamp="20251016_090000")
    fit(
        tmp_path,
        [second, MetadataCallback(db=db_path)],
        max_epochs=6,
        ckpt_path=str(ckpts / "last.ckpt"),
    )
    assert second.dirpath == str(ckpts)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [Path(first.run_dir).name]
    # Top-k bookkeeping carried over: epoch 1 (0.5) went when epoch 4 (0.95) came in, and the
    # best link moved from 0.9000 to 0.9500 instead of leaving a second best-* file behind.
    assert names(ckpts) == {
        "epoch-02_step-000006.ckpt",
        "epoch-04_step-000010.ckpt",
        "last.ckpt",
        "best-hmean-0.9500.ckpt",
    }
    # The moved link is an alias of the new best only; the old link was dropped from its target.
    assert rows(db_path) == names(ckpts) - {"best-hmean-0.9500.ckpt"}
    aliases = {p: r["aliases"] for p, r in raw_rows(db_path).items() if r["aliases"]}
    assert aliases == {
        str(ckpts / "epoch-04_step-000010.ckpt"): json.dumps(
            [str(ckpts / "best-hmean-0.9500.ckpt")]
        )
    }


def test_a_new_phase_starts_a_new_run_directory(tmp_path):
    first = scheme()
    fit(tmp_path, [first], max_epochs=2)
    tuned = scheme(training_phase="finetuning")
    fit(tmp_path, [tuned], max_epochs=3, ckpt_path=str(Path(first.dirpath) / "last.ckpt"))
    assert tuned.run_dir != first.run_dir
    assert parse_run_dir(Path(tuned.run_dir).name).phase == "finetuning"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"training_phase": "fine-tuning"},
            "UniqueModelCheckpoint(training_phase='fine-tuning'): "
            "training_phase must be letters only",
        ),
        (
            {"timestamp": "2025-10-15"},
            "UniqueModelCheckpoint(timestamp='2025-10-15'): timestamp must look like",
        ),
        (
            {"experiment_tag": " "},
            "UniqueModelCheckpoint(experiment_tag=' '): experiment_tag must be",
        ),
        ({"model_name": 3}, "UniqueModelCheckpoint(model_name=3): model_name must be"),
        ({"save_best": "yes"}, "UniqueModelCheckpoint(save_best='yes'): save_best must be"),
    ],
)
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError) as error:
        UniqueModelCheckpoint(**kwargs)
    assert str(error.value).startswith(message)


def test_lightning_arguments_pass_through():
    checkpoint = UniqueModelCheckpoint(
        monitor="val/loss", save_top_k=3, every_n_epochs=2, filename="{epoch}"
    )
    assert (checkpoint.monitor, checkpoint.save_top_k, checkpoint.every_n_epochs) == (
        "val/loss",
        3,
        2,
    )
    assert checkpoint.filename == "{epoch}" and checkpoint.auto_insert_metric_name
