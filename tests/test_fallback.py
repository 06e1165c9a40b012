"""Checkpoints without a sidecar reach the index through the fallbacks, merged field by field.

Every artifact here is real: checkpoints written by a ``lightning.Trainer`` on the CPU, a W&B run
written by the SDK (offline) through Lightning's ``WandbLogger``, Hydra run directories with
``.hydra/config.yaml`` saved the way Hydra saves it (OmegaConf, interpolations unresolved).
Each source names the model differently on purpose, so a row shows which one won.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")
pytest.importorskip("wandb")
nn = torch.nn

from helpers.checkpoints import checkpoint_callback, crafted  # noqa: E402
from helpers.sidecars import seed_document  # noqa: E402

import ckpt_index.sources.checkpoint.reader as checkpoint_reader  # noqa: E402
import ckpt_index.sources.wandb as wandb_source  # noqa: E402
from ckpt_index import api  # noqa: E402
from ckpt_index.sidecar.files import dump_document, sidecar_path_for  # noqa: E402
from ckpt_index.sources.merge import created_at_of  # noqa: E402
from ckpt_index.sources.wandb import online as wandb_online  # noqa: E402
from ckpt_index.sources.wandb import run as wandb_run  # noqa: E402
from ckpt_index.sync import roots as sync_module  # noqa: E402

HOUR_NS = 3600 * 10**9
#: A run directory name in the naming scheme: the path says architecture "archpath", encoder
#: "encpath".
SCHEME_RUN = "ocr-archpath-encpath_training_20251015_120000"
HYDRA_CONFIG = {
    "exp_name": "exphydra",
    "output_dir": "${hydra:runtime.output_dir}",  # Hydra leaves these unresolved in the saved file
    "run_name": "${now:%Y%m%d_%H%M%S}",
    "model": {
        "architecture": "archhydra",
        "component_overrides": {
            "encoder": {"model_name": "enchydra"},
            "decoder": {"name": "dechydra"},
        },
    },
    "trainer": {"max_epochs": 2},
}
WANDB_MODEL_CONFIG = {
    "model": {
        "architecture": "archwandb",
        "component_overrides": {
            "encoder": {"model_name": "encwandb"},
            "head": {"name": "headwandb"},
        },
    }
}
# What the LightningModule logs and stores, by epoch: distinct values so every row says where
# its numbers came from.
CLEVAL = {"precision": 0.88, "recall": 0.71}


def cleval_hmean(epoch: int) -> float:
    return round(0.77 + epoch / 100, 4)


def val_hmean(epoch: int) -> float:
    return 0.5 + 0.1 * epoch


def val_loss(epoch: int) -> float:
    return 0.3 + 0.1 * epoch


SUMMARY_VAL_LOSS = 9.0  # the run summary's final value: never a checkpoint's metric


# --------------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """Offline W&B with every directory it writes in a temporary place, and no credentials."""
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
        for var, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
        }.items():
            mp.setenv(var, value)
        mp.setenv("NETRC", str(base / "no-netrc"))
        for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
            path = base / name.lower()
            path.mkdir()
            mp.setenv(f"WANDB_{name}", str(path))
        yield base
        import wandb

        wandb.teardown()


class HintedModule(L.LightningModule):
    """Names its model in hparams, stores cleval_metrics, logs val/hmean and val/loss."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"architecture_name": "archhparams", "encoder": {"model_name": "enchparams"}, "lr": 0.1}
        )
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, _: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, _: int) -> None:
        self.log("val/loss", val_loss(self.current_epoch))
        self.log("val/hmean", val_hmean(self.current_epoch))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cleval_metrics"] = {**CLEVAL, "hmean": cleval_hmean(self.current_epoch)}

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, bias=False), nn.BatchNorm2d(cout)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )


class ResNet18(nn.Module):
    """torchvision.models.resnet18's attribute layout and shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for stage, width in enumerate([64, 128, 256, 512], start=1):
            blocks = [
                BasicBlock(cin if i == 0 else width, width, i == 0 and cin != width)
                for i in range(2)
            ]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            cin = width
        self.fc = nn.Linear(512, 1000)


class BareModule(L.LightningModule):
    """A model whose only clue is its state dict: a resnet18 encoder, no hparams, no logger."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = ResNet18()
        self.head = nn.Linear(2, 1)

    def training_step(self, batch: Any, _: int) -> Any:
        x, y = batch
        return nn.functional.mse_loss(self.head(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def _data() -> Any:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    return torch.utils.data.DataLoader(data, batch_size=2)


def _fit(module: L.LightningModule, **trainer_kwargs: Any) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = _data() if isinstance(module, HintedModule) else None
        trainer.fit(module, _data(), val)


@pytest.fixture(scope="module")
def hinted(wandb_env: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two checkpoints (epochs 0 and 1) of a run logged by WandbLogger (offline).

    The W&B run config names the model differently from the hparams; the summary is overwritten
    after training with values no checkpoint had.
    """
    import wandb
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    base = tmp_path_factory.mktemp("hinted")
    logger = WandbLogger(save_dir=str(base), project="proj", offline=True)
    logger.experiment.config.update(WANDB_MODEL_CONFIG)
    checkpointing = ModelCheckpoint(
        dirpath=base / "ckpts", monitor="val/hmean", mode="max", save_top_k=-1
    )
    _fit(
        HintedModule(), max_epochs=2, logger=logger, callbacks=[checkpointing], log_every_n_steps=1
    )
    logger.experiment.summary["val/loss"] = SUMMARY_VAL_LOSS
    logger.experiment.summary["val/summary_only"] = 0.5
    run_id = logger.version
    wandb.finish()
    ckpts = sorted((base / "ckpts").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    (run_dir,) = (base / "wandb").glob(f"offline-run-*-{run_id}")
    return {"ckpts": ckpts, "run_id": run_id, "wandb_run": run_dir}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One checkpoint of a model with a resnet18 encoder and nothing else naming it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    base = tmp_path_factory.mktemp("bare")
    checkpointing = ModelCheckpoint(dirpath=base / "ckpts")
    _fit(BareModule(), max_epochs=1, logger=False, callbacks=[checkpointing])
    (ckpt,) = (base / "ckpts").glob("*.ckpt")
    assert ckpt.name == "epoch=0-step=4.ckpt"
    return ckpt


# ----------------------------------------------------------------------------------- helpers
def make_run(
    root: Path,
    source: Path,
    *,
    run_name: str = SCHEME_RUN,
    ckpt_name: str = "epoch-99_step-009999.ckpt",
    hydra: dict[str, Any] | None = None,
    wandb_run: Path | None = None,
) -> Path:
    """A run directory under ``root`` holding a copy of ``source`` in ``checkpoints/``.

    The default checkpoint name disagrees with every real checkpoint on epoch and step.
    """
    from omegaconf import OmegaConf

    run_dir = root / run_name
    ckpt = run_dir / "checkpoints" / ckpt_name
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, ckpt)
    if hydra is not None:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(hydra), run_dir / ".hydra" / "config.yaml")  # as Hydra does
    if wandb_run is not None:
        shutil.copytree(wandb_run, run_dir / "wandb" / wandb_run.name, symlinks=True)
    return ckpt


def age(*paths: Path, by_ns: int = HOUR_NS) -> None:
    """Move mtimes out of the 2 s racy window (files under directories too)."""
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - by_ns))


def sync(root: Path, db: Path, **options: Any):
    options.setdefault("infer", True)
    return api.sync_index(root, db=db, **options)


def rows(db: Path) -> dict[str, dict[str, Any]]:
    """Every ``checkpoints`` row by path, with ``metrics`` and ``inferred_fields`` decoded."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        found = {r["checkpoint_path"]: dict(r) for r in conn.execute("SELECT * FROM checkpoints")}
        for row in found.values():
            row["metrics"] = {}
            raw = row["inferred_fields"]
            row["inferred"] = json.loads(raw) if raw is not None else None
        for path, name, value in conn.execute(
            "SELECT c.checkpoint_path, m.name, m.value FROM checkpoint_metrics m "
            "JOIN checkpoints c ON c.id = m.checkpoint_id"
        ):
            found[path]["metrics"][name] = value
    finally:
        conn.close()
    return found


def row(db: Path, ckpt: Path) -> dict[str, Any]:
    found = rows(db)
    assert str(ckpt) in found, f"no row for {ckpt}; rows: {sorted(found)}"
    return found[str(ckpt)]


#: Columns that record when and from which file state a row was built, not what it says.
NON_CONTENT = {"id", "indexed_at", "ckpt_size", "ckpt_mtime_ns", "sidecar_size", "sidecar_mtime_ns"}


def content(db: Path) -> dict[str, dict[str, Any]]:
    return {p: {k: v for k, v in r.items() if k not in NON_CONTENT} for p, r in rows(db).items()}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Checkpoints a sync hands to its reader workers, in order (the reading is in the workers)."""
    calls: list[str] = []
    real = sync_module._build_records

    def counting(paths, found, racy_after_ns, options):
        calls.extend(p for p in paths if sync_module._needs_isolation(found[p], options))
        return real(paths, found, racy_after_ns, options)

    monkeypatch.setattr(sync_module, "_build_records", counting)
    return calls


# ------------------------------------------------------------------------ a sidecar is truth
def test_valid_sidecar_is_the_whole_truth(
    hinted: dict, outputs: Path, db_path: Path, reads: list[str]
) -> None:
    ckpt = make_run(outputs, hinted["ckpts"][0], hydra=HYDRA_CONFIG, wandb_run=hinted["wandb_run"])
    document = seed_document("seed_design")
    sidecar_path_for(ckpt).write_text(dump_document(document))
    age(outputs)

    summary = sync(outputs, db_path)

    assert (summary.valid, summary.inferred, summary.unreadable) == (1, 0, 0)
    assert reads == []  # the checkpoint is not even opened
    got = row(db_path, ckpt)
    assert (got["status"], got["source"], got["inferred_fields"]) == ("valid", "sidecar", None)
    expected = {
        "exp_name": document["exp_name"],
        "architecture": "dbnet",
        "encoder": "resnet50",
        "decoder": "pan_decoder",
        "head": "db_head",
        "loss": "db_loss",
        "epoch": 10,
        "global_step": 5420,
        "training_phase": "training",
        "max_epochs": 50,
        "precision": 0.8542,
        "recall": 0.8321,
        "hmean": 0.843,
        "validation_loss": 0.0234,
        "monitor": "val/hmean",
        "mode": "max",
        "save_top_k": 3,
        "save_last": 1,
        "created_at": "2025-10-18T14:32:15",
        "hydra_config_path": None,
        "wandb_run_id": None,
    }
    assert {k: got[k] for k in expected} == expected
    assert got["metrics"] == {
        "precision": 0.8542,
        "recall": 0.8321,
        "hmean": 0.843,
        "validation_loss": 0.0234,
    }


# ------------------------------------------------------------------------------ merge order
def test_every_field_from_the_most_specific_source(
    hinted: dict, outputs: Path, db_path: Path
) -> None:
    ckpts = [
        make_run(
            outputs,
            source,
            run_name=f"{SCHEME_RUN[:-1]}{i}",
            hydra=HYDRA_CONFIG,
            wandb_run=hinted["wandb_run"],
        )
        for i, source in enumerate(hinted["ckpts"])
    ]
    age(outputs)

    summary = sync(outputs, db_path)

    assert (summary.inferred, summary.unreadable, summary.missing) == (2, 0, 0)
    for epoch, ckpt in enumerate(ckpts):
        got = row(db_path, ckpt)
        assert (got["status"], got["source"], got["error"], got["sidecar_path"]) == (
            "inferred",
            "checkpoint",
            None,
            None,
        )
        # The checkpoint's own facts, not the file name's (epoch-99_step-009999).
        assert (got["epoch"], got["global_step"]) == (epoch, 4 * (epoch + 1))
        assert (got["monitor"], got["mode"]) == ("val/hmean", "max")
        # Model facts: hparams over Hydra over W&B over the path.
        assert (got["architecture"], got["encoder"]) == ("archhparams", "enchparams")
        assert got["decoder"] == "dechydra"  # hparams lack it: Hydra
        assert got["head"] == "headwandb"  # hparams and Hydra lack it: W&B
        assert got["exp_name"] == "exphydra"
        assert got["training_phase"] == "training"  # only the path says it
        assert got["hydra_config_path"] == str(ckpt.parent.parent / ".hydra" / "config.yaml")
        assert got["wandb_run_id"] == hinted["run_id"]
        # No source gives these: empty, not guessed.
        for name in (
            "loss",
            "max_epochs",
            "save_top_k",
            "save_last",
            "encoder_pretrained",
            "encoder_frozen",
        ):
            assert got[name] is None, name
        # cleval_metrics and the monitored score from the checkpoint.
        assert (got["precision"], got["recall"], got["hmean"]) == (0.88, 0.71, cleval_hmean(epoch))
        assert got["metrics"]["val/hmean"] == pytest.approx(val_hmean(epoch))
        # What the checkpoint lacks: the W&B history at this checkpoint's step (Lightning logs
        # it under global_step - 1), never the summary's final value.
        assert got["validation_loss"] == pytest.approx(val_loss(epoch))
        assert got["metrics"]["val/loss"] == pytest.approx(val_loss(epoch))
        assert got["validation_loss"] != SUMMARY_VAL_LOSS
        assert "val/summary_only" not in got["metrics"]
        assert "train/loss" in got["metrics"]
        expected_sources = {
            "epoch": "checkpoint",
            "global_step": "checkpoint",
            "monitor": "checkpoint",
            "mode": "checkpoint",
            "architecture": "checkpoint",
            "encoder": "checkpoint",
            "precision": "checkpoint",
            "recall": "checkpoint",
            "hmean": "checkpoint",
            "metrics.precision": "checkpoint",
            "metrics.recall": "checkpoint",
            "metrics.hmean": "checkpoint",
            "metrics.val/hmean": "checkpoint",
            "decoder": "hydra",
            "exp_name": "hydra",
            "hydra_config_path": "hydra",
            "head": "wandb",
            "wandb_run_id": "wandb",
            "validation_loss": "wandb",
            "metrics.val/loss": "wandb",
            "metrics.train/loss": "wandb",
            "training_phase": "path",
            "created_at": "file",
        }
        assert got["inferred"] == expected_sources
        assert got["created_at"] == created_at_of(ckpt)  # when the file was written


def test_the_summary_really_differs_from_the_history(hinted: dict) -> None:
    # The control for the test above: the run's summary holds values no checkpoint should get.
    run = wandb_source.read_run(wandb_source.RunLocation(hinted["run_id"], hinted["wandb_run"]))
    assert run.lightning_steps
    assert run.summary["val/loss"] == SUMMARY_VAL_LOSS and run.summary["val/summary_only"] == 0.5
    assert "val/loss" not in run.history_at_step(4)  # the naive step holds no validation


#: Sources of model facts from most to least specific; each case removes the first ``dropped``.
CHAIN = ["checkpoint", "hydra", "wandb", "path", "state_dict"]


@pytest.mark.parametrize(
    ("dropped", "architecture", "encoder"),
    [
        (0, "archhparams", "enchparams"),
        (1, "archhydra", "enchydra"),
        (2, "archwandb", "encwandb"),
        (3, "archpath", "encpath"),
        (4, None, "resnet18"),  # nothing names the architecture: it stays empty
    ],
    ids=CHAIN,
)
def test_model_facts_fall_through_the_sources_in_order(
    hinted: dict,
    bare: Path,
    outputs: Path,
    db_path: Path,
    dropped: int,
    architecture: str | None,
    encoder: str,
) -> None:
    active = set(CHAIN[dropped:])
    ckpt = make_run(
        outputs,
        hinted["ckpts"][0] if "checkpoint" in active else bare,  # bare: no names in its hparams
        run_name=SCHEME_RUN if "path" in active else "run",
        hydra={"model": HYDRA_CONFIG["model"]} if "hydra" in active else None,
        wandb_run=hinted["wandb_run"] if "wandb" in active else None,
        ckpt_name="model.ckpt",
    )
    age(outputs)

    sync(outputs, db_path)

    got = row(db_path, ckpt)
    winner = CHAIN[dropped]
    assert (got["status"], got["source"]) == ("inferred", "checkpoint")  # epoch, step: checkpoint
    assert (got["architecture"], got["encoder"]) == (architecture, encoder)
    assert got["inferred"]["encoder"] == winner
    if architecture is None:
        assert "architecture" not in got["inferred"]
    else:
        assert got["inferred"]["architecture"] == winner


def test_state_dict_names_the_encoder_when_nothing_else_does(
    bare: Path, outputs: Path, db_path: Path
) -> None:
    ckpt = outputs / "run" / "model.ckpt"
    ckpt.parent.mkdir()
    shutil.copyfile(bare, ckpt)
    age(outputs)

    sync(outputs, db_path)

    got = row(db_path, ckpt)
    assert (got["status"], got["encoder"], got["inferred"]["encoder"]) == (
        "inferred",
        "resnet18",
        "state_dict",
    )
    assert (got["epoch"], got["global_step"]) == (0, 4)
    # Nothing names the experiment: its run folder does (as the seed catalog showed it).
    assert (got["exp_name"], got["inferred"]["exp_name"]) == ("run", "path")
    for name in (
        "architecture",
        "decoder",
        "hmean",
        "monitor",
        "wandb_run_id",
        "hydra_config_path",
        "training_phase",
    ):
        assert got[name] is None, name
    assert got["inferred"]["epoch"] == got["inferred"]["global_step"] == "checkpoint"


def test_mode_without_a_monitor_is_not_recorded(bare: Path, outputs: Path, db_path: Path) -> None:
    # ModelCheckpoint() without a monitor keeps the latest file; its default mode ("min") ranks
    # nothing, so the row must not claim one.
    ckpt = outputs / "run" / "model.ckpt"
    ckpt.parent.mkdir()
    shutil.copyfile(bare, ckpt)
    age(outputs)

    sync(outputs, db_path)

    got = row(db_path, ckpt)
    assert (got["monitor"], got["mode"]) == (None, None)
    assert got["inferred"] == {
        "encoder": "state_dict",
        "epoch": "checkpoint",
        "global_step": "checkpoint",
        "created_at": "file",
        "exp_name": "path",
    }


# -------------------------------------------------------------------- unreadable checkpoints
def _random_bytes(path: Path, _: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _truncated(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path, _: Path) -> None:
    path.write_bytes(b"")


UNREADABLE = {
    "random_bytes": (_random_bytes, "neither a zip archive nor the legacy torch format"),
    "truncated": (_truncated, "truncated or corrupt zip archive"),
    "empty": (_empty, "empty file"),
}


def make_unreadable(outputs: Path, source: Path) -> dict[str, Path]:
    paths = {}
    for i, (kind, (write, _)) in enumerate(UNREADABLE.items()):
        ckpt = make_run(
            outputs,
            source,
            run_name=f"{SCHEME_RUN[:-1]}{i}",
            hydra=HYDRA_CONFIG,
            ckpt_name=f"epoch-0{i}_step-00012{i}.ckpt",
        )
        write(ckpt, source)
        paths[kind] = ckpt
    return paths


def test_unreadable_checkpoints_are_recorded_with_reasons(
    hinted: dict, outputs: Path, db_path: Path
) -> None:
    bad = make_unreadable(outputs, hinted["ckpts"][0])
    good = make_run(outputs, hinted["ckpts"][0], run_name="good")
    age(outputs)

    summary = sync(outputs, db_path)

    assert (summary.checkpoints, summary.inferred, summary.unreadable) == (4, 1, 3)
    listed = dict(summary.unreadable_files)
    assert sorted(listed) == sorted(str(p) for p in bad.values())
    for i, (kind, ckpt) in enumerate(bad.items()):
        fragment = UNREADABLE[kind][1]
        assert fragment in listed[str(ckpt)]
        got = row(db_path, ckpt)
        assert got["status"] == "unreadable"
        assert fragment in got["error"] and "\n" not in got["error"]
        # What the path and the Hydra config say is kept.
        assert got["source"] == "hydra"
        assert (got["architecture"], got["encoder"], got["exp_name"]) == (
            "archhydra",
            "enchydra",
            "exphydra",
        )
        assert (got["epoch"], got["global_step"], got["training_phase"]) == (i, 120 + i, "training")
        assert got["inferred"]["epoch"] == "path" and got["inferred"]["encoder"] == "hydra"
        assert got["checkpoint_exists"] == 1
    assert row(db_path, good)["status"] == "inferred"
    assert summary.to_dict()["unreadable"] == 3


def test_cli_reports_unreadable_and_strict_fails(hinted: dict, outputs: Path, invoke) -> None:
    bad = make_unreadable(outputs, hinted["ckpts"][0])
    age(outputs)

    result = invoke("sync", str(outputs), "--format", "json")  # inference is the default
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["unreadable"] == 3
    assert sorted(f["path"] for f in data["unreadable_files"]) == sorted(
        str(p) for p in bad.values()
    )

    result = invoke("sync", str(outputs))
    assert result.exit_code == 0
    for ckpt in bad.values():
        assert f"unreadable: {ckpt}:" in result.stderr
    assert "3 unreadable" in result.stdout

    result = invoke("sync", str(outputs), "--strict")
    assert result.exit_code == 1
    assert "3 unreadable" in result.stderr

    # Without inference the checkpoints are not read, so nothing is unreadable.
    result = invoke("sync", str(outputs), "--strict", "--no-infer")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------ incremental
def test_unchanged_checkpoints_are_not_read_again(
    hinted: dict, outputs: Path, db_path: Path, reads: list[str]
) -> None:
    first, second = hinted["ckpts"]
    a = make_run(outputs, first, run_name="a", ckpt_name="model.ckpt")
    b = make_run(outputs, first, run_name="b", ckpt_name="model.ckpt")
    broken = outputs / "c" / "model.ckpt"
    broken.parent.mkdir()
    broken.write_bytes(os.urandom(1024))
    age(outputs)

    summary = sync(outputs, db_path)
    assert sorted(reads) == sorted(map(str, (a, b, broken)))
    assert (summary.inferred, summary.unreadable, summary.added) == (2, 1, 3)

    reads.clear()
    summary = sync(outputs, db_path)
    assert reads == []  # unreadable ones are not retried either while unchanged
    assert (summary.unchanged, summary.inferred, summary.unreadable, summary.parsed) == (3, 2, 1, 0)
    assert len(summary.unreadable_files) == 1  # still reported

    # b is replaced by the next epoch's checkpoint: it, and only it, is read again.
    shutil.copyfile(second, b)
    age(b)
    reads.clear()
    summary = sync(outputs, db_path)
    assert reads == [str(b)]
    assert (summary.updated, summary.unchanged) == (1, 2)
    assert (row(db_path, b)["epoch"], row(db_path, b)["hmean"]) == (1, cleval_hmean(1))
    assert row(db_path, a)["epoch"] == 0

    # A file changed without a new size (same bytes rewritten, new mtime) is read again too.
    os.utime(a, ns=(0, a.stat().st_mtime_ns - 5 * 10**9))
    reads.clear()
    sync(outputs, db_path)
    assert reads == [str(a)]


def test_sidecar_added_and_removed_switches_the_row(
    hinted: dict, outputs: Path, db_path: Path, reads: list[str]
) -> None:
    ckpt = make_run(outputs, hinted["ckpts"][0], hydra=HYDRA_CONFIG)
    age(outputs)
    sync(outputs, db_path)
    assert row(db_path, ckpt)["status"] == "inferred"

    sidecar = sidecar_path_for(ckpt)
    sidecar.write_text(dump_document(seed_document("seed_design")))
    age(sidecar)
    reads.clear()
    sync(outputs, db_path)
    got = row(db_path, ckpt)
    assert reads == []
    assert (got["status"], got["source"], got["encoder"], got["inferred_fields"]) == (
        "valid",
        "sidecar",
        "resnet50",
        None,
    )
    assert "val/hmean" not in got["metrics"]  # nothing inferred is left behind

    sidecar.unlink()
    sync(outputs, db_path)
    got = row(db_path, ckpt)
    assert reads == [str(ckpt)]
    assert (got["status"], got["source"], got["encoder"]) == (
        "inferred",
        "checkpoint",
        "enchparams",
    )


def test_files_modified_within_two_seconds_are_read_again(
    hinted: dict, outputs: Path, db_path: Path, reads: list[str]
) -> None:
    ckpt = make_run(
        outputs, hinted["ckpts"][0], run_name="a", ckpt_name="model.ckpt"
    )  # fresh mtime

    sync(outputs, db_path)
    sync(outputs, db_path)
    # Written just now: it might change again within the same mtime tick, so it is re-read.
    assert reads == [str(ckpt), str(ckpt)]

    age(ckpt)
    reads.clear()
    sync(outputs, db_path)
    sync(outputs, db_path)
    assert reads == [str(ckpt)]
    assert row(db_path, ckpt)["status"] == "inferred"


def test_no_infer_records_missing_and_switching_modes_redoes_rows(
    hinted: dict, outputs: Path, db_path: Path, tmp_path: Path, reads: list[str]
) -> None:
    ckpts = [
        make_run(outputs, src, run_name=f"{SCHEME_RUN[:-1]}{i}", hydra=HYDRA_CONFIG)
        for i, src in enumerate(hinted["ckpts"])
    ]
    age(outputs)
    from ckpt_index.index.records import METADATA_COLUMNS

    def assert_missing() -> None:
        for ckpt in ckpts:
            got = row(db_path, ckpt)
            assert (got["status"], got["source"], got["metrics"]) == ("missing", "none", {})
            assert {k: got[k] for k in METADATA_COLUMNS} == dict.fromkeys(METADATA_COLUMNS)

    summary = sync(outputs, db_path, infer=False)
    assert reads == []
    assert (summary.missing, summary.inferred) == (2, 0)
    assert_missing()

    summary = sync(outputs, db_path, infer=False)
    assert reads == [] and summary.unchanged == 2

    summary = sync(outputs, db_path, infer=True)
    assert sorted(reads) == sorted(map(str, ckpts))
    assert (summary.inferred, summary.updated, summary.missing) == (2, 2, 0)
    fresh_db = tmp_path / "fresh.db"
    sync(outputs, fresh_db, infer=True)
    assert content(db_path) == content(fresh_db)  # incremental equals a fresh sync

    reads.clear()
    summary = sync(outputs, db_path, infer=False)
    assert reads == []
    assert (summary.missing, summary.updated) == (2, 2)
    assert_missing()

    summary = sync(outputs, db_path, infer=True)
    assert content(db_path) == content(fresh_db)


def test_cli_no_infer(hinted: dict, outputs: Path, db_path: Path, invoke, reads: list[str]) -> None:
    ckpt = make_run(outputs, hinted["ckpts"][0], hydra=HYDRA_CONFIG)
    age(outputs)

    result = invoke("sync", str(outputs), "--no-infer", "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["missing"] == 1
    assert reads == [] and row(db_path, ckpt)["status"] == "missing"

    result = invoke("sync", str(outputs), "--format", "json")  # the default infers
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["inferred"], data["missing"]) == (1, 0)
    got = row(db_path, ckpt)
    assert (got["status"], got["encoder"]) == ("inferred", "enchparams")


# -------------------------------------------------------------------------------- hostility
class _Payload:
    """Unpickles as ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def torch_zip(path: Path, obj: Any) -> Path:
    """A file in torch's zip layout whose data.pkl pickles ``obj``."""
    buffer = io.BytesIO()
    pickle.dump(obj, buffer, protocol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("evil/data.pkl", buffer.getvalue())
        archive.writestr("evil/byteorder", "little")
        archive.writestr("evil/version", "3\n")
    return path


def test_malicious_checkpoints_never_run_and_the_sync_goes_on(
    hinted: dict, outputs: Path, db_path: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    system = _Payload(os.system, f"touch {canary}")
    popen = _Payload(
        subprocess.Popen, [sys.executable, "-c", f"open({str(canary)!r}, 'w').close()"]
    )
    inside = torch_zip(
        outputs / "evil" / "checkpoints" / "epoch=3-step=120.ckpt",
        {
            "epoch": 3,
            "global_step": 120,
            "hyper_parameters": {"architecture_name": system, "x": popen},
            "cleval_metrics": {"hmean": 0.5, "evil": system},
            "callbacks": {
                "ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max'}": {
                    "best_model_score": popen
                }
            },
            "state_dict": {"w": system},
        },
    )
    whole = torch_zip(outputs / "evil" / "checkpoints" / "whole.ckpt", system)
    good = make_run(outputs, hinted["ckpts"][0], run_name="good")
    age(outputs)

    summary = sync(outputs, db_path)

    time.sleep(0.5)  # Popen would be asynchronous
    assert not canary.exists()
    assert summary.checkpoints == 3
    found = rows(db_path)
    assert found[str(inside)]["status"] in ("inferred", "unreadable")
    if found[str(inside)]["status"] == "inferred":
        got = found[str(inside)]
        assert (got["epoch"], got["global_step"], got["hmean"]) == (3, 120, 0.5)
        assert got["architecture"] is None  # a placeholder is not a name
    assert found[str(whole)]["status"] == "unreadable" and found[str(whole)]["error"]
    assert found[str(good)]["status"] == "inferred"


# ----------------------------------------------------------------------------- W&B online
def test_wandb_online_without_credentials_is_skipped_cleanly(
    hinted: dict, tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(wandb_run, "_warned", set())
    monkeypatch.setattr(wandb_online, "_online_unavailable", None)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    # Lightning's default layout, with the run's files left behind on another machine.
    root = tmp_path / "lightning_logs"
    ckpts = [
        make_run(root / "proj", src, run_name="abcd1234", ckpt_name=src.name)
        for src in hinted["ckpts"]
    ]
    age(root)

    started = time.monotonic()
    with caplog.at_level("WARNING", logger="ckpt_index.wandb"):
        summary = sync(root, db_path, wandb_online=True)
    assert time.monotonic() - started < 10
    assert summary.inferred == 2
    skipped = [r for r in caplog.records if "W&B online look-ups skipped" in r.getMessage()]
    assert len(skipped) == 1  # one warning, not one per checkpoint
    for ckpt in ckpts:
        got = row(db_path, ckpt)
        assert got["status"] == "inferred" and got["encoder"] == "enchparams"
        assert got["validation_loss"] is None  # no history to take it from


# ------------------------------------------------------------- values at the boundary (issue 8)
def test_out_of_range_pickle_integers_are_dropped_with_a_warning(tmp_path: Path) -> None:
    from ckpt_index.sources.merge import infer_metadata

    ckpt = crafted(tmp_path / "run" / "model.ckpt", {"epoch": 2**64, "global_step": 2**64})

    found = infer_metadata(ckpt)

    assert "epoch" not in found.fields and "global_step" not in found.fields
    assert not found.unreadable
    # The reader may drop the value itself (its warning is forwarded) or leave it to the fallback.
    for field in ("epoch", "global_step"):
        assert any(
            w.startswith((f"{field} from checkpoint:", f"checkpoint: {field}:")) and "range" in w
            for w in found.warnings
        ), found.warnings


def test_a_huge_epoch_in_a_file_name_is_dropped_and_the_row_stays_unreadable(
    tmp_path: Path,
) -> None:
    from ckpt_index.sources.merge import infer_metadata

    empty = tmp_path / "epoch=99999999999999999999-step=1.ckpt"
    empty.write_bytes(b"")

    found = infer_metadata(empty)

    assert found.unreadable
    assert "epoch" not in found.fields and found.fields.get("global_step") == 1


@pytest.mark.parametrize(
    "hparams, field, kept, word",
    [
        ({"exp_name": "a\udc80b"}, "exp_name", "a\ufffdb", "lone surrogate"),
        ({"exp_name": "a\x00b"}, "exp_name", "ab", "NUL"),
        ({"architecture": "db\x00net"}, "architecture", "dbnet", "NUL"),
        ({"encoder": "\ud800resnet"}, "encoder", "\ufffdresnet", "lone surrogate"),
        ({"wandb_run_id": "abc\x00"}, "wandb_run_id", "abc", "NUL"),
    ],
)
def test_bad_text_from_hparams_is_never_stored_raw(
    tmp_path: Path, hparams: dict, field: str, kept: str, word: str
) -> None:
    from ckpt_index.sources.merge import infer_metadata

    ckpt = crafted(
        tmp_path / "run" / "model.ckpt", {"epoch": 1, "global_step": 2, "hyper_parameters": hparams}
    )
    found = infer_metadata(ckpt)

    # Cleaned with a warning here, or refused as no name by the config reader: never stored raw.
    if found.sources.get(field) == "checkpoint":
        assert found.fields[field] == kept
        assert any(w.startswith(f"{field} from checkpoint: ") and word in w for w in found.warnings)
    assert found.fields.get("epoch") == 1


@pytest.mark.parametrize(
    "value, kept, problem",
    [
        ("a\udc80b", "a\ufffdb", "contains a lone surrogate"),
        ("a\x00b", "ab", "contains a NUL character"),
        (
            "\ud800\udc00",
            "\ufffd\ufffd",
            "contains a lone surrogate",
        ),  # a pair is two code points here
    ],
)
@pytest.mark.parametrize(
    "field",
    [
        "exp_name",
        "architecture",
        "encoder",
        "monitor",
        "hydra_config_path",
        "wandb_run_id",
        "created_at",
    ],
)
def test_every_text_field_is_cleaned_with_a_warning(
    field: str, value: str, kept: str, problem: str
) -> None:
    from ckpt_index.sources.merge import Inferred

    found = Inferred("/x.ckpt")
    found.set(field, value, "wandb")

    assert found.fields[field] == kept
    assert found.warnings == [f"{field} from wandb: {problem}; cleaned"]


@pytest.mark.parametrize(
    "monitor", [5, ["val/hmean"], {"val/hmean": 1}], ids=["int", "list", "dict"]
)
def test_a_monitor_that_is_not_a_name_is_ignored_with_its_mode(
    tmp_path: Path, monitor: Any
) -> None:
    from ckpt_index.sources.merge import infer_metadata

    ckpt = crafted(
        tmp_path / "run" / "model.ckpt",
        {"epoch": 1, "global_step": 2, "callbacks": checkpoint_callback(monitor, "min")},
    )
    found = infer_metadata(ckpt)

    assert "monitor" not in found.fields and "mode" not in found.fields
    assert found.fields["epoch"] == 1
    assert any("ModelCheckpoint monitor" in w and "ignored" in w for w in found.warnings)


@pytest.mark.parametrize("mode", ["sideways", 5, ["max"]])
def test_a_mode_other_than_min_or_max_is_ignored(tmp_path: Path, mode: Any) -> None:
    from ckpt_index.sources.merge import infer_metadata

    ckpt = crafted(
        tmp_path / "run" / "model.ckpt",
        {"epoch": 1, "global_step": 2, "callbacks": checkpoint_callback("val/hmean", mode)},
    )
    found = infer_metadata(ckpt)

    assert found.fields["monitor"] == "val/hmean" and "mode" not in found.fields
    assert any("ModelCheckpoint mode" in w for w in found.warnings)


def test_odd_metric_values_and_names_never_raise(tmp_path: Path) -> None:
    from ckpt_index.sources.merge import infer_metadata

    ckpt = crafted(
        tmp_path / "run" / "model.ckpt",
        {
            "epoch": 1,
            "global_step": 2,
            "cleval_metrics": {
                "hmean": 0.5,
                "precision": float("nan"),
                "recall": 10**400,
                "x" * 300: 0.1,
                "name\x00": 0.25,
            },
            "callbacks": checkpoint_callback("val/hmean"),
        },
    )
    found = infer_metadata(ckpt)

    assert found.metrics == {"hmean": 0.5, "name": 0.25, "val/hmean": 0.5}
    assert found.fields["hmean"] == 0.5 and "precision" not in found.fields
    assert any("longer than 256" in w for w in found.warnings)


def test_inferred_set_checks_every_kind_of_field() -> None:
    from ckpt_index.sources.merge import Inferred

    found = Inferred("/x.ckpt")
    for name, value in {
        "epoch": True,
        "global_step": -1,
        "max_epochs": 2**31,
        "hmean": float("inf"),
        "precision": "0.9",
        "save_last": 1,
        "training_phase": "test",
        "exp_name": 5,
        "decoder": ["unet"],
    }.items():
        found.set(name, value, "hydra")
    assert found.fields == {} and len(found.warnings) == 9
    found.set("recall", 1, "hydra")  # an int is a number
    assert found.fields == {"recall": 1.0}


def _raise(exc: BaseException):
    def fail(*_: Any, **__: Any) -> Any:
        raise exc

    return fail


STEP_FAILURES = [
    (
        "ckpt_index.sources.hydra.load_config",
        RuntimeError("config parser bug"),
        "hydra config failed",
    ),
    ("ckpt_index.sources.hydra.model_fields", RecursionError("deep"), "failed: RecursionError"),
    ("ckpt_index.sources.wandb.locate.find_run", MemoryError(), "W&B run unusable: MemoryError"),
    (
        "ckpt_index.sources.merge.parse_checkpoint_name",
        OverflowError("int too large"),
        "path patterns failed",
    ),
    (
        "ckpt_index.sources.merge.created_at_of",
        OverflowError("timestamp out of range"),
        "file time failed",
    ),
    (
        "ckpt_index.sources.state_dict.infer_encoder",
        ValueError("shape"),
        "state dict inference failed",
    ),
    ("ckpt_index.sources.merge.match_canonical", TypeError("odd"), "canonical metrics failed"),
    (
        "ckpt_index.sources.merge.canonical_metrics",
        KeyError("x"),
        "reading the checkpoint's fields failed",
    ),
]


@pytest.mark.parametrize(
    "target, exc, warning", STEP_FAILURES, ids=[t.rsplit(".", 1)[1] for t, *_ in STEP_FAILURES]
)
def test_infer_metadata_is_total_a_failing_step_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, exc: BaseException, warning: str
) -> None:
    from omegaconf import OmegaConf

    from ckpt_index.sources.merge import infer_metadata

    run = tmp_path / "run"  # no encoder in its name nor its config: the state dict step runs too
    (run / ".hydra").mkdir(parents=True)
    config = {"exp_name": "exphydra", "model": {"architecture": "archhydra"}}
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    ckpt = crafted(
        run / "checkpoints" / "epoch=3-step=30.ckpt",
        {"epoch": 3, "global_step": 30, "cleval_metrics": {"hmean": 0.5}},
    )
    monkeypatch.setattr(target, _raise(exc))

    found = infer_metadata(ckpt)

    assert not found.unreadable
    assert any(warning in w for w in found.warnings), found.warnings
    assert all("\n" not in w for w in found.warnings)
    assert found.fields["global_step"] == 30  # the other steps still ran


def test_a_reader_that_raises_anything_makes_the_file_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpt_index.sources.merge import infer_metadata

    ckpt = crafted(tmp_path / "run" / "epoch=3-step=30.ckpt", {"epoch": 3, "global_step": 30})
    monkeypatch.setattr(
        checkpoint_reader, "read_checkpoint", _raise(RecursionError("deep\npickle"))
    )

    found = infer_metadata(ckpt)

    assert found.unreadable == "RecursionError: deep pickle"
    assert (found.fields["epoch"], found.fields["global_step"]) == (3, 30)  # from the name
