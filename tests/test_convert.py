"""``ckpt-index convert`` and ``scripts/convert_legacy_checkpoints.py``: sidecars for checkpoints
without one, from the fallbacks; never guessing epoch or step, never vouching for a broken file.

Both tools take the same flags and are run here on the same trees of real Lightning checkpoints:
``ckpt-index`` in-process through click's runner, the script as a subprocess, as users run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")
nn = torch.nn

from helpers.checkpoints import checkpoint_callback as model_checkpoint  # noqa: E402
from helpers.checkpoints import crafted  # noqa: E402
from helpers.sidecars import seed_document  # noqa: E402

import ckpt_index.sources.checkpoint.reader as checkpoint_reader  # noqa: E402
from ckpt_index import api  # noqa: E402
from ckpt_index.cli import cli  # noqa: E402
from ckpt_index.sidecar.files import SidecarError, dump_document, read_sidecar, sidecar_path_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "convert_legacy_checkpoints.py"
RUN = "ocr_v1-dbnet-resnet18_training_20251015_120000"
HYDRA_CONFIG = {
    "exp_name": "ocr_v1",
    "output_dir": "${hydra:runtime.output_dir}",
    "model": {"architecture": "dbnet", "component_overrides": {"decoder": {"name": "unet"}}},
}
HOUR_NS = 3600 * 10**9
TOOLS = ["ckpt-index", "script"]


# --------------------------------------------------------------------------------- artifacts
class Module(L.LightningModule):
    def __init__(self, hparams: dict[str, Any], cleval: bool) -> None:
        super().__init__()
        self.save_hyperparameters(hparams)
        self.cleval = cleval
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, _: int) -> Any:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, _: int) -> None:
        self.log("val/hmean", 0.5 + 0.1 * self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.cleval:
            checkpoint["cleval_metrics"] = {
                "precision": 0.88,
                "recall": 0.71,
                "hmean": round(0.77 + self.current_epoch / 100, 4),
            }

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _train(
    root: Path, hparams: dict[str, Any], *, cleval: bool, epochs: int, **settings: Any
) -> list[Path]:
    """Checkpoints of a real fit; ``settings`` override ModelCheckpoint's (monitor val/hmean,
    mode max, every epoch kept)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=2
    )
    settings = {"monitor": "val/hmean", "mode": "max", "save_top_k": -1, **settings}
    checkpointing = ModelCheckpoint(dirpath=root, **settings)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        callbacks=[checkpointing],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(hparams, cleval), data, data)
    return sorted(root.glob("*.ckpt"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Checkpoints of a model named in its hparams (epochs 0, 1) and of one named nowhere."""
    named = _train(
        tmp_path_factory.mktemp("named"),
        {"architecture_name": "dbnet", "encoder": {"model_name": "resnet18"}},
        cleval=True,
        epochs=2,
    )
    nameless = _train(tmp_path_factory.mktemp("nameless"), {"lr": 0.1}, cleval=False, epochs=1)
    assert [p.name for p in named] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    return {"named": named, "nameless": nameless[0]}


@pytest.fixture
def tree(trained: dict[str, Any], outputs: Path) -> dict[str, Path]:
    """outputs/ with a scheme run dir (Hydra config, two checkpoints), an unnamed legacy run, and
    a checkpoint at the top level. Every mtime is an hour old."""
    from omegaconf import OmegaConf

    run = outputs / RUN
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(HYDRA_CONFIG), run / ".hydra" / "config.yaml")
    paths = {}
    for src in trained["named"]:
        paths[src.name] = run / "checkpoints" / src.name
        shutil.copyfile(src, paths[src.name])
    paths["legacy"] = outputs / "legacy" / "checkpoints" / "epoch=0-step=4.ckpt"
    paths["legacy"].parent.mkdir(parents=True)
    shutil.copyfile(trained["nameless"], paths["legacy"])
    paths["top"] = outputs / "top.ckpt"
    shutil.copyfile(trained["named"][0], paths["top"])
    for f in outputs.rglob("*"):
        if f.is_file():
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
    paths["run"] = run
    return paths


# ----------------------------------------------------------------------------------- running
@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def summary(self) -> dict[str, int]:
        """The seed's summary lines: found, converted, skipped (existing), failed."""
        counts = {}
        for key, label in (
            ("found", "Total checkpoints found"),
            ("converted", "(?:Converted|Would convert)"),
            ("skipped", r"Skipped \(existing\)"),
            ("failed", "Failed"),
        ):
            match = re.search(rf"^{label}:\s+(\d+)$", self.stdout, re.MULTILINE)
            assert match, f"no {label!r} line in:\n{self.stdout}"
            counts[key] = int(match[1])
        return counts


def convert(tool: str, *args: str | os.PathLike[str]) -> Result:
    argv = [str(a) for a in args]
    if tool == "script":
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        return Result(done.returncode, done.stdout, done.stderr)
    result = CliRunner().invoke(cli, ["convert", *argv], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sidecars(root: Path) -> list[Path]:
    return sorted(root.rglob("*.metadata.yaml"))


# ------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("tool", TOOLS)
def test_dry_run_writes_nothing(
    tool: str, tree: dict[str, Path], outputs: Path, tmp_path: Path
) -> None:
    before = snapshot(tmp_path)

    result = convert(tool, "--outputs-dir", outputs, "--dry-run")

    assert result.exit_code == 0, result.stderr
    assert "dry run" in result.stdout
    assert re.search(r"^Would convert:\s+4$", result.stdout, re.MULTILINE)
    assert not re.search(r"^Converted:", result.stdout, re.MULTILINE)  # nothing was
    assert result.summary() == {"found": 4, "converted": 4, "skipped": 0, "failed": 0}
    assert snapshot(tmp_path) == before  # no sidecar, no temporary file, no index


@pytest.mark.parametrize("tool", TOOLS)
def test_writes_valid_sidecars_that_sync_as_sidecar_rows(
    tool: str, tree: dict[str, Path], outputs: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = convert(tool, "--outputs-dir", outputs)

    assert result.exit_code == 0, result.stderr
    assert result.summary() == {"found": 4, "converted": 4, "skipped": 0, "failed": 0}
    ckpts = sorted(outputs.rglob("*.ckpt"))
    assert sidecars(outputs) == sorted(sidecar_path_for(p) for p in ckpts)
    metas = {p: read_sidecar(sidecar_path_for(p)) for p in ckpts}  # every one validates

    for name, epoch in (("epoch=0-step=4.ckpt", 0), ("epoch=1-step=8.ckpt", 1)):
        meta = metas[tree[name]]
        assert (meta.training.epoch, meta.training.global_step) == (epoch, 4 * (epoch + 1))
        assert meta.training.training_phase == "training"
        assert (meta.exp_name, meta.model.architecture) == ("ocr_v1", "dbnet")
        assert meta.model.encoder.model_name == "resnet18"
        assert meta.model.decoder is not None and meta.model.decoder.name == "unet"
        assert (meta.metrics.precision, meta.metrics.recall) == (0.88, 0.71)
        assert meta.metrics.hmean == round(0.77 + epoch / 100, 4)
        assert meta.metrics.additional_metrics["val/hmean"] == pytest.approx(0.5 + 0.1 * epoch)
        assert (meta.checkpointing.monitor, meta.checkpointing.mode) == ("val/hmean", "max")
        assert meta.hydra_config_path == str(tree["run"] / ".hydra" / "config.yaml")
        assert meta.checkpoint_path == str(tree[name])

    # A required name that no source gives is written as "unknown"...
    legacy = metas[tree["legacy"]]
    assert (legacy.training.epoch, legacy.training.global_step) == (0, 4)
    assert legacy.model.architecture == "unknown"
    assert legacy.model.encoder.model_name == "unknown"
    assert legacy.exp_name == "legacy"  # nothing names the experiment: its run folder does
    assert legacy.metrics.hmean == 0.5  # its monitored val/hmean, from the checkpoint

    # ... and after a sync every row comes from its sidecar, without opening a checkpoint.
    opened: list[str] = []
    real = checkpoint_reader.read_checkpoint
    monkeypatch.setattr(
        checkpoint_reader, "read_checkpoint", lambda p: opened.append(str(p)) or real(p)
    )
    summary = api.sync_index(outputs, db=db_path, infer=True)
    assert (summary.valid, summary.inferred, summary.invalid) == (4, 0, 0)
    assert opened == []
    rows = {r["checkpoint_path"]: r for r in api.query_index(db=db_path)}
    assert {r["source"] for r in rows.values()} == {"sidecar"}
    assert {r["status"] for r in rows.values()} == {"valid"}
    got = rows[str(tree["epoch=1-step=8.ckpt"])]
    assert (got["encoder"], got["hmean"], got["epoch"]) == ("resnet18", 0.78, 1)
    # ... where "unknown" reads as empty.
    got = rows[str(tree["legacy"])]
    assert (got["architecture"], got["encoder"], got["decoder"]) == (None, None, None)
    assert got["exp_name"] == "legacy"


@pytest.mark.parametrize("tool", TOOLS)
def test_existing_sidecars_are_kept_unless_force(
    tool: str, tree: dict[str, Path], outputs: Path
) -> None:
    ckpt = tree["epoch=1-step=8.ckpt"]
    hand_made = sidecar_path_for(ckpt)
    hand_made.write_text(dump_document(seed_document("seed_design")))
    kept = snapshot(hand_made.parent)[str(hand_made)]

    result = convert(tool, "--outputs-dir", outputs)
    assert result.exit_code == 0, result.stderr
    assert result.summary() == {"found": 4, "converted": 3, "skipped": 1, "failed": 0}
    assert snapshot(hand_made.parent)[str(hand_made)] == kept

    written = snapshot(outputs)
    result = convert(tool, "--outputs-dir", outputs)
    assert result.summary() == {"found": 4, "converted": 0, "skipped": 4, "failed": 0}
    assert snapshot(outputs) == written

    result = convert(tool, "--outputs-dir", outputs, "--force")
    assert result.exit_code == 0, result.stderr
    assert result.summary() == {"found": 4, "converted": 4, "skipped": 0, "failed": 0}
    meta = read_sidecar(hand_made)
    assert (meta.training.epoch, meta.training.global_step, meta.exp_name) == (1, 8, "ocr_v1")


@pytest.mark.parametrize("tool", TOOLS)
def test_unreadable_checkpoints_fail_with_their_reason(
    tool: str, tree: dict[str, Path], outputs: Path
) -> None:
    noise = outputs / "broken" / "noise.ckpt"
    noise.parent.mkdir()
    noise.write_bytes(os.urandom(4096))
    # Named in the scheme, beside a Hydra config: the path and the config could fill a sidecar,
    # but a sidecar must not vouch for a checkpoint that cannot be read.
    cut = tree["run"] / "checkpoints" / "epoch-05_step-000120.ckpt"
    data = tree["epoch=0-step=4.ckpt"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    result = convert(tool, "--outputs-dir", outputs)

    assert result.exit_code == 1
    assert result.summary() == {"found": 6, "converted": 4, "skipped": 0, "failed": 2}
    assert re.search(rf"failed: {re.escape(str(noise))}: .*neither a zip archive", result.stderr)
    assert re.search(rf"failed: {re.escape(str(cut))}: .*truncated or corrupt zip", result.stderr)
    assert not sidecar_path_for(noise).exists()
    assert not sidecar_path_for(cut).exists()
    assert sidecar_path_for(tree["top"]).exists()


@pytest.mark.parametrize("tool", TOOLS)
def test_scopes_checkpoint_exp_dir_and_no_recursive(
    tool: str, tree: dict[str, Path], outputs: Path
) -> None:
    result = convert(tool, "--outputs-dir", outputs, "--no-recursive", "--dry-run")
    assert result.summary() == {"found": 1, "converted": 1, "skipped": 0, "failed": 0}

    result = convert(tool, "--exp-dir", tree["run"], "--no-recursive")
    assert result.summary()["found"] == 0  # its checkpoints are one level down

    result = convert(tool, "--exp-dir", tree["run"])
    assert result.summary() == {"found": 2, "converted": 2, "skipped": 0, "failed": 0}
    assert sidecars(outputs) == sorted(
        sidecar_path_for(tree[n]) for n in ("epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt")
    )

    result = convert(tool, "--checkpoint", tree["top"])
    assert result.summary() == {"found": 1, "converted": 1, "skipped": 0, "failed": 0}
    read_sidecar(sidecar_path_for(tree["top"]))
    result = convert(tool, "--checkpoint", tree["top"])
    assert result.summary() == {"found": 1, "converted": 0, "skipped": 1, "failed": 0}


@pytest.mark.parametrize("tool", TOOLS)
def test_exactly_one_scope_is_required(tool: str, tree: dict[str, Path], outputs: Path) -> None:
    assert convert(tool).exit_code == 2
    assert convert(tool, "--outputs-dir", outputs, "--exp-dir", tree["run"]).exit_code == 2
    assert sidecars(outputs) == []


@pytest.mark.parametrize("module", [["-m", "ckpt_index", "convert"], [str(SCRIPT)]], ids=TOOLS)
def test_verbose_logs_each_checkpoint(
    module: list[str], tree: dict[str, Path], outputs: Path
) -> None:
    # A subprocess: logging is configured by the tool, as when a user runs it.
    sidecar_path_for(tree["top"]).write_text(dump_document(seed_document("seed_design")))

    def run(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *module, "--outputs-dir", str(outputs), *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )

    quiet = run("--dry-run")
    loud = run("--dry-run", "-v")
    assert quiet.returncode == loud.returncode == 0
    assert quiet.stdout == loud.stdout
    for name in ("epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"):
        assert name in loud.stderr
    assert str(tree["legacy"].name) in loud.stderr
    assert "top.metadata.yaml" in loud.stderr  # the skipped one too
    assert len(loud.stderr.splitlines()) > len(quiet.stderr.splitlines())
    assert sidecars(outputs) == [sidecar_path_for(tree["top"])]


def test_every_written_sidecar_passes_validate(tree: dict[str, Path], outputs: Path) -> None:
    assert convert("ckpt-index", "--outputs-dir", outputs).exit_code == 0
    result = CliRunner().invoke(cli, ["validate", str(outputs)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4 valid sidecars, 0 invalid, 0 unreadable; 0 without sidecar" in result.stdout
    for path in sidecars(outputs):
        try:
            read_sidecar(path)
        except SidecarError as exc:  # pragma: no cover - the assertion message
            pytest.fail(str(exc))


# ------------------------------------------------------------------ hostile values (issue 8)


@pytest.mark.parametrize("tool", TOOLS)
def test_convert_never_crashes_nor_writes_a_sidecar_the_reader_rejects(
    tool: str, outputs: Path
) -> None:
    big = crafted(outputs / "big" / "model.ckpt", {"epoch": 2**64, "global_step": 2**64})
    big_named = crafted(
        outputs / "big" / "epoch=3-step=30.ckpt", {"epoch": 2**64, "global_step": 2**64}
    )
    monitors = [
        crafted(
            outputs / "monitor" / f"{i}.ckpt",
            {"epoch": 1, "global_step": 2, "callbacks": model_checkpoint(m, mode)},
        )
        for i, (m, mode) in enumerate(
            [(5, "max"), (["a"], "min"), ({"a": 1}, "max"), ("val/hmean", "sideways")]
        )
    ]
    texts = crafted(
        outputs / "texts" / "model.ckpt",
        {
            "epoch": 1,
            "global_step": 2,
            "hyper_parameters": {
                "exp_name": "a\udc80b",
                "architecture": "db\x00net",
                "decoder": {"name": "u\x00net"},
                "wandb_run_id": "\ud800",
            },
            "cleval_metrics": {
                "hmean": 0.5,
                "recall": 10**400,
                "precision": float("nan"),
                "x" * 300: 0.1,
            },
        },
    )

    result = convert(tool, "--outputs-dir", outputs)

    assert "Traceback" not in result.stderr
    assert result.summary() == {"found": 7, "converted": 6, "skipped": 0, "failed": 1}
    assert re.search(rf"failed: {re.escape(str(big))}: no source gives the epoch", result.stderr)
    for written in sidecars(outputs):
        read_sidecar(written)  # raises SidecarError if the reader would reject it
    assert read_sidecar(sidecar_path_for(big_named)).training.epoch == 3  # from the name, not 2**64
    for ckpt in monitors[:3]:  # no usable monitor: the seed-required name, nothing else
        ckpting = read_sidecar(sidecar_path_for(ckpt)).checkpointing
        assert ckpting is not None
        assert ckpting.model_dump(exclude_none=True) == {"monitor": "unknown"}
    ckpting = read_sidecar(sidecar_path_for(monitors[3])).checkpointing
    assert ckpting is not None and (ckpting.monitor, ckpting.mode) == ("val/hmean", None)
    meta = read_sidecar(sidecar_path_for(texts))
    # Each name is cleaned (NUL dropped, lone surrogates U+FFFD), or refused as no name at all.
    assert meta.exp_name in ("a\ufffdb", "texts") and meta.model.architecture in (
        "dbnet",
        "unknown",
    )
    assert meta.model.decoder is not None and meta.model.decoder.name in ("unet", "unknown")
    assert meta.wandb_run_id in ("\ufffd", None)
    assert meta.metrics.additional_metrics == {"hmean": 0.5}


def test_metadata_from_inferred_refuses_values_the_schema_would_reject(tmp_path: Path) -> None:
    """A guard against any source that bypasses ``Inferred.set``: the reason, never a crash."""
    from ckpt_index.sources.merge import Inferred
    from ckpt_index.tools.convert import ConversionError, metadata_from_inferred

    found = Inferred(str(tmp_path / "x.ckpt"))
    found.fields.update(epoch=2**64, global_step=1, created_at="2025-01-01T00:00:00")

    with pytest.raises(ConversionError, match=r"training\.epoch: .*less than or equal"):
        metadata_from_inferred(found, tmp_path / "x.ckpt")


def test_convert_reads_each_checkpoint_through_one_replaceable_function(outputs: Path) -> None:
    from ckpt_index.tools.convert import convert_checkpoints

    ok = crafted(outputs / "a" / "epoch=1-step=2.ckpt", {"epoch": 1, "global_step": 2})
    boom = crafted(outputs / "b" / "epoch=1-step=2.ckpt", {"epoch": 1, "global_step": 2})
    seen = []

    def infer(path: Path, *, wandb_online: bool = False):
        from ckpt_index.tools.convert import infer_checkpoint

        seen.append(path)
        if path == boom:
            raise RuntimeError("worker died\nwith SIGSEGV")
        return infer_checkpoint(path, wandb_online=wandb_online)

    summary = convert_checkpoints([ok, boom], infer=infer)

    assert seen == [ok, boom]
    assert (summary.converted, summary.failed) == (1, 1)
    assert summary.failures == [
        (str(boom), "cannot read the checkpoint: RuntimeError: worker died with SIGSEGV")
    ]
    assert sidecar_path_for(ok).exists() and not sidecar_path_for(boom).exists()


@pytest.mark.parametrize("fault", ["SIGSEGV", "SIGKILL"])
def test_convert_reads_checkpoints_in_isolated_workers(
    outputs: Path, monkeypatch, fault: str
) -> None:
    from ckpt_index.isolation import worker as isolation
    from ckpt_index.tools.convert import convert_checkpoints

    paths = [
        crafted(outputs / f"r{i}" / "epoch=1-step=2.ckpt", {"epoch": 1, "global_step": 2})
        for i in range(5)
    ]
    monkeypatch.setenv(isolation.FAULT_ENV, str(paths[2]))
    monkeypatch.setenv(isolation.FAULT_SIGNAL_ENV, fault)
    summary = convert_checkpoints(paths)
    expected = "reader crashed: SIGSEGV" if fault == "SIGSEGV" else "reader killed (SIGKILL)"
    assert summary.failures == [(str(paths[2]), f"cannot read the checkpoint: {expected}")]
    assert (summary.converted, summary.failed) == (4, 1)
    assert [sidecar_path_for(p).exists() for p in paths] == [True, True, False, True, True]


# ----------------------------------------------------------------------- no invented values
EXAMPLE_CONF = REPO / "examples" / "conf" / "train.yaml"


def seed_reader_problems(document: dict[str, Any]) -> list[str]:
    """What the seed design's own reader would refuse, reimplemented from its schema
    (/work/shared/seeds: ``CheckpointMetadataV1`` requires ``checkpoint_path``, ``exp_name``,
    ``created_at``, ``training``, ``model``, ``metrics`` and ``checkpointing``; ``ModelInfo``
    requires the encoder's ``model_name`` and a named ``decoder``, ``head`` and ``loss``;
    ``CheckpointingConfig`` names its ``monitor``). Empty: the seed reader loads the file."""
    required = [
        "schema_version",
        "checkpoint_path",
        "exp_name",
        "created_at",
        "training.epoch",
        "training.global_step",
        "model.architecture",
        "model.encoder.model_name",
        "model.decoder.name",
        "model.head.name",
        "model.loss.name",
        "metrics",
        "checkpointing.monitor",
    ]
    problems = []
    for dotted in required:
        value: Any = document
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None or (dotted != "metrics" and isinstance(value, dict)):
            problems.append(f"{dotted} missing")
    if str(document.get("schema_version")) != "1.0":
        problems.append("schema_version is not 1.0")
    return problems


def _raw(ckpt: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(sidecar_path_for(ckpt).read_text())


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run laid out as examples/train.py leaves it: the example's model config as the module's
    hparams, its ModelCheckpoint settings (save_top_k 2, save_last) in a real fit, and the
    composed config in ``.hydra/config.yaml`` (the example's train.yaml as Hydra saves it)."""
    import yaml

    conf = yaml.safe_load(EXAMPLE_CONF.read_text())
    composed = {k: v for k, v in conf.items() if k not in ("defaults", "hydra")}
    composed["callbacks"]["model_checkpoint"]["_target_"] = (
        "ckpt_index.lightning.model_checkpoint.ModelCheckpoint"
    )
    run = tmp_path_factory.mktemp("outputs") / "tiny_demo-tinynet-mlp32_training_20251015_120000"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(composed))
    settings = conf["callbacks"]["model_checkpoint"]
    ckpts = _train(
        run / "checkpoints",
        conf["model"],
        cleval=False,
        epochs=3,
        **{k: settings[k] for k in ("monitor", "mode", "save_top_k", "save_last")},
    )
    return {"run": run, "conf": conf, "ckpts": ckpts}


def test_example_run_converts_to_what_its_hparams_and_hydra_config_say(
    example_run: dict[str, Any],
) -> None:
    run, conf = example_run["run"], example_run["conf"]
    assert conf["model"]["encoder"]["pretrained"] is False  # the values the defaults contradict
    assert conf["callbacks"]["model_checkpoint"]["save_top_k"] == 2

    result = convert("ckpt-index", "--outputs-dir", run.parent, "--force")

    assert result.exit_code == 0, result.stderr
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in {p.name for p in ckpts} and len(ckpts) == 3  # top 2 and last
    settings = conf["callbacks"]["model_checkpoint"]
    for ckpt in ckpts:
        raw = _raw(ckpt)
        model = raw["model"]
        assert model["architecture"] == conf["model"]["architecture_name"]
        assert model["encoder"] == {"model_name": "mlp32", "pretrained": False, "frozen": False}
        assert [model[p]["name"] for p in ("decoder", "head", "loss")] == [
            conf["model"][p]["name"] for p in ("decoder", "head", "loss")
        ]
        assert raw["checkpointing"] == {
            k: settings[k] for k in ("monitor", "mode", "save_top_k", "save_last")
        }
        assert raw["exp_name"] == run.name
        # Where each came from: hparams are the checkpoint's own, the rest the Hydra config.
        sources = raw["inferred_fields"]
        flags = ("encoder_pretrained", "encoder_frozen", "save_top_k", "save_last")
        assert {k: sources[k] for k in flags} == {
            "encoder_pretrained": "checkpoint",
            "encoder_frozen": "checkpoint",
            "save_top_k": "hydra",
            "save_last": "hydra",
        }
        assert (sources["monitor"], sources["mode"]) == ("checkpoint", "checkpoint")
        assert seed_reader_problems(raw) == []
        assert read_sidecar(sidecar_path_for(ckpt)).model.encoder.pretrained is False


def test_a_field_no_source_gives_is_absent_or_unknown(
    trained: dict[str, Any], outputs: Path
) -> None:
    # A real checkpoint whose hparams name nothing, no Hydra config, no W&B run, no naming
    # scheme: only its own state says anything.
    ckpt = outputs / "run1" / "checkpoints" / "model.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copyfile(trained["nameless"], ckpt)

    result = convert("ckpt-index", "--outputs-dir", outputs)

    assert result.exit_code == 0, result.stderr
    raw = _raw(ckpt)
    assert raw["exp_name"] == "run1"  # the run folder's name, as the seed catalog showed it
    assert raw["inferred_fields"]["exp_name"] == "path"
    assert raw["model"]["encoder"] == {"model_name": "unknown"}  # no pretrained, no frozen
    for part in ("decoder", "head", "loss"):  # the seed reader requires them: named unknown
        assert raw["model"][part]["name"] == "unknown"
    # The callback state says what it monitored and how; nothing says save_top_k or save_last.
    assert raw["checkpointing"] == {"monitor": "val/hmean", "mode": "max"}
    unsaid = {"encoder_pretrained", "encoder_frozen", "save_top_k", "save_last"}
    assert not unsaid & set(raw["inferred_fields"])
    assert seed_reader_problems(raw) == []


def test_epochs_come_from_names_without_a_step(outputs: Path) -> None:
    # The checkpoints give their global step but not their epoch: the name gives it.
    names = {"epoch-5.ckpt": 5, "epoch_15.ckpt": 15, "epoch=10.ckpt": 10}
    for name in names:
        crafted(outputs / "run1" / name, {"global_step": 7})

    result = convert("ckpt-index", "--outputs-dir", outputs)

    assert result.exit_code == 0, result.stderr
    for name, epoch in names.items():
        raw = _raw(outputs / "run1" / name)
        assert (raw["training"]["epoch"], raw["training"]["global_step"]) == (epoch, 7)
        assert raw["inferred_fields"]["epoch"] == "path"
        assert raw["exp_name"] == "run1"
        assert raw["checkpointing"] == {"monitor": "unknown"}
        assert seed_reader_problems(raw) == []


def test_sync_reads_the_same_settings_for_rows_without_a_sidecar(
    example_run: dict[str, Any], outputs: Path, db_path: Path
) -> None:
    run = outputs / example_run["run"].name
    shutil.copytree(example_run["run"], run, ignore=shutil.ignore_patterns("*.metadata.yaml"))
    assert not sidecars(outputs)

    summary = api.sync_index(outputs, db=db_path, infer=True)

    assert summary.inferred == 3
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT encoder_pretrained, encoder_frozen, save_top_k, save_last, monitor, mode"
            " FROM checkpoints"
        ).fetchall()
    assert rows == [(0, 0, 2, 1, "val/hmean", "max")] * 3
