"""The catalog API for applications: ``ckpt_index.build_catalog`` syncs a tree and lists its
checkpoints, best hmean first, with a display string per entry."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import tiny_checkpoint
from helpers.sidecars import seed_document

import ckpt_index
import ckpt_index.sync.build as record_builder
import ckpt_index.sync.roots as sync_module
from ckpt_index.sidecar.files import dump_document, sidecar_path_for
from ckpt_index.tools.catalog import CheckpointCatalog

HOUR_NS = 3600 * 10**9
SEED_DISPLAY = (
    "dbnet · resnet50 · exp_name (ep10 • hmean 0.843 • prec 0.854 • rec 0.832 • 20251018_1432)"
)
LIGHTNING_RUN = "ocr_v2-craft-mobilenetv3_large_training_20251020_090000"


@pytest.fixture(scope="module")
def lightning_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint (epoch 0, step 4) of a model named in its hparams; it logs no hmean."""
    torch = pytest.importorskip("torch")
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(
                {"architecture_name": "craft", "encoder": {"model_name": "mobilenetv3_large"}}
            )
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch: Any, _: int) -> None:
            self.log("val/loss", 0.25)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    root = tmp_path_factory.mktemp("catalog_ckpt")
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=2
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=root, monitor="val/loss", mode="min")],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(), data, data)
    (ckpt,) = root.glob("*.ckpt")  # val/loss never improves after epoch 0
    assert ckpt.name == "epoch=0-step=4.ckpt"
    return ckpt


def write(ckpt: Path, document: dict[str, Any] | None) -> Path:
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(tiny_checkpoint())
    if document is not None:
        sidecar_path_for(ckpt).write_text(dump_document(document))
    return ckpt


def design(**changes: Any) -> dict[str, Any]:
    """The seed design card's sidecar with exp_name "exp_name" and top-level/nested changes."""
    doc = seed_document("seed_design")
    doc["exp_name"] = "exp_name"
    for dotted, value in changes.items():
        target = doc
        *parents, last = dotted.split(".")
        for key in parents:
            target = target[key]
        target[last] = value
    return doc


def age(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))


@pytest.fixture
def tree(outputs: Path, lightning_checkpoint: Path) -> dict[str, Path]:
    """Three checkpoints with sidecars (hmean 0.9, 0.843, 0.773) and one real one without."""
    paths = {
        "design": write(outputs / "exp_a" / "checkpoints" / "epoch-10_step-005420.ckpt", design()),
        "better": write(
            outputs / "exp_b" / "checkpoints" / "epoch-12_step-006000.ckpt",
            design(
                **{
                    "exp_name": "exp_b",
                    "training.epoch": 12,
                    "metrics.hmean": 0.9,
                    "metrics.precision": 0.91,
                    "metrics.recall": 0.89,
                }
            ),
        ),
        "converted": write(
            outputs / "my_experiment" / "checkpoints" / "best.ckpt", seed_document("seed_converted")
        ),
    }
    bare = outputs / LIGHTNING_RUN / "checkpoints" / lightning_checkpoint.name
    bare.parent.mkdir(parents=True)
    shutil.copyfile(lightning_checkpoint, bare)
    paths["bare"] = bare
    age(outputs)
    return paths


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Sidecars parsed and checkpoints opened by the syncs under test."""
    seen: dict[str, list[str]] = {"sidecars": [], "checkpoints": []}
    read_sidecar = record_builder.read_sidecar

    def sidecar(path: Any) -> Any:
        seen["sidecars"].append(str(path))
        return read_sidecar(path)

    def build(paths, found, racy_after_ns, options):
        # Checkpoints are read in worker processes: count what is handed to them.
        seen["checkpoints"].extend(
            p for p in paths if sync_module._needs_isolation(found[p], options)
        )
        if any(sync_module._needs_isolation(found[p], options) for p in paths):
            seen["sidecars"].extend(found[p].sidecar_path for p in paths if found[p].sidecar_path)
        return build_records(paths, found, racy_after_ns, options)

    build_records = sync_module._build_records
    monkeypatch.setattr(record_builder, "read_sidecar", sidecar)
    monkeypatch.setattr(sync_module, "_build_records", build)
    return seen


def test_catalog_counts_coverage_and_best_hmean_first(
    tree: dict[str, Path], outputs: Path, db_path: Path
) -> None:
    catalog = ckpt_index.build_catalog(outputs, db=db_path)

    assert isinstance(catalog, CheckpointCatalog)
    assert catalog.total_count == len(catalog.entries) == 4
    assert catalog.metadata_coverage_percent == 75.0  # 3 of 4 have sidecars
    assert isinstance(catalog.catalog_build_time_seconds, float)
    assert 0 < catalog.catalog_build_time_seconds < 30
    assert [e.checkpoint_path for e in catalog.entries] == [
        str(tree[k]) for k in ("better", "design", "converted", "bare")
    ]
    assert [e.hmean for e in catalog.entries] == [0.9, 0.843, pytest.approx(0.773013), None]


def test_display_option_matches_the_seed_format(
    tree: dict[str, Path], outputs: Path, db_path: Path
) -> None:
    entries = {e.checkpoint_path: e for e in ckpt_index.build_catalog(outputs, db=db_path).entries}

    assert entries[str(tree["design"])].to_display_option() == SEED_DISPLAY
    assert entries[str(tree["better"])].to_display_option() == (
        "dbnet · resnet50 · exp_b (ep12 • hmean 0.900 • prec 0.910 • rec 0.890 • 20251018_1432)"
    )
    converted = entries[str(tree["converted"])]
    assert (converted.architecture, converted.encoder, converted.epoch) == (
        "dbnet",
        "mobilenetv3_small_050",
        0,
    )
    assert converted.to_display_option().startswith(
        "dbnet · mobilenetv3_small_050 · my_experiment (ep0 • hmean 0.773"
    )
    assert converted.to_display_option().endswith(" • 20251017_2200)")


def test_checkpoints_without_a_sidecar_are_listed_from_the_fallbacks(
    tree: dict[str, Path], outputs: Path, db_path: Path
) -> None:
    entries = {e.checkpoint_path: e for e in ckpt_index.build_catalog(outputs, db=db_path).entries}

    bare = entries[str(tree["bare"])]
    assert (bare.status, bare.source) == ("inferred", "checkpoint")
    assert (bare.architecture, bare.encoder, bare.exp_name) == (
        "craft",
        "mobilenetv3_large",
        LIGHTNING_RUN,
    )
    assert (bare.epoch, bare.global_step, bare.hmean) == (0, 4, None)
    assert bare.metrics == {"val/loss": 0.25, "validation_loss": 0.25}
    assert bare.to_display_option().startswith(f"craft · mobilenetv3_large · {LIGHTNING_RUN} (ep0")


def test_second_build_parses_nothing_new(
    tree: dict[str, Path], outputs: Path, db_path: Path, parses: dict[str, list[str]]
) -> None:
    first = ckpt_index.build_catalog(outputs, db=db_path)
    assert sorted(parses["sidecars"]) == sorted(
        str(sidecar_path_for(tree[k])) for k in ("design", "better", "converted")
    )

    parses["sidecars"].clear()
    parses["checkpoints"].clear()
    second = ckpt_index.build_catalog(outputs, db=db_path)
    assert parses == {"sidecars": [], "checkpoints": []}
    assert [e.to_display_option() for e in second.entries] == [
        e.to_display_option() for e in first.entries
    ]
    assert second.metadata_coverage_percent == first.metadata_coverage_percent

    # A changed sidecar is the only one parsed again, and the new value shows.
    sidecar = sidecar_path_for(tree["converted"])
    sidecar.write_text(dump_document(design(**{"exp_name": "exp_c", "metrics.hmean": 0.95})))
    third = ckpt_index.build_catalog(outputs, db=db_path)
    assert parses["sidecars"] == [str(sidecar)] and parses["checkpoints"] == []
    assert (
        third.entries[0].checkpoint_path == str(tree["converted"])
        and third.entries[0].hmean == 0.95
    )


def test_catalog_follows_deleted_checkpoints(
    tree: dict[str, Path], outputs: Path, db_path: Path
) -> None:
    ckpt_index.build_catalog(outputs, db=db_path)
    tree["better"].unlink()  # its sidecar stays: an orphan, not offered

    catalog = ckpt_index.build_catalog(outputs, db=db_path)

    assert str(tree["better"]) not in [e.checkpoint_path for e in catalog.entries]
    assert catalog.total_count == 3
    assert catalog.metadata_coverage_percent == pytest.approx(200 / 3)


def test_catalog_uses_the_default_database(
    tree: dict[str, Path], outputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = ckpt_index.build_catalog(outputs)  # cwd is tmp_path (conftest): ./ckpt_index.db
    assert catalog.total_count == 4
    assert (tmp_path / "ckpt_index.db").is_file()

    monkeypatch.setenv("CKPT_INDEX_DB", str(tmp_path / "env.db"))
    assert ckpt_index.build_catalog(str(outputs)).total_count == 4
    assert (tmp_path / "env.db").is_file()


def test_empty_outputs(outputs: Path, db_path: Path) -> None:
    catalog = ckpt_index.build_catalog(outputs, db=db_path)
    assert (catalog.entries, catalog.total_count, catalog.metadata_coverage_percent) == ([], 0, 0.0)


def test_missing_outputs_is_an_empty_catalog_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UI on a fresh checkout (no outputs/ yet) starts with an empty list: no index is created,
    not at ./ckpt_index.db (the cwd is tmp_path), not at --db, not at $CKPT_INDEX_DB."""
    missing = tmp_path / "outputs"
    catalog = ckpt_index.build_catalog(missing)
    assert isinstance(catalog, CheckpointCatalog)
    assert (catalog.entries, catalog.total_count, catalog.metadata_coverage_percent) == ([], 0, 0.0)
    catalog = ckpt_index.build_catalog(str(missing), db=tmp_path / "nodir" / "index.db")
    assert catalog.total_count == 0
    monkeypatch.setenv("CKPT_INDEX_DB", str(tmp_path / "env.db"))
    assert ckpt_index.build_catalog(missing).entries == []
    assert sorted(os.listdir(tmp_path)) == []
