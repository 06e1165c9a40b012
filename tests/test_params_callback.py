"""MetadataCallback records the run's hyperparameters (schema 1.1) with a real lightning.Trainer:
Hydra config < DataModule hparams < LightningModule hparams, plain and bounded, and the row it
upserts carries the same parameters as a later sync of its sidecars."""

from __future__ import annotations

import enum
import logging
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from helpers.modules import tiny_trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sqlalchemy import text  # noqa: E402
from test_lightning_callback import TinyModule, loader  # noqa: E402

from ckpt_index.hyperparams import MAX_PARAMS, MAX_VALUE_BYTES, flatten  # noqa: E402
from ckpt_index.index.engine import open_engine  # noqa: E402
from ckpt_index.lightning import MetadataCallback, _params  # noqa: E402
from ckpt_index.sidecar.files import read_sidecar, sidecar_path_for  # noqa: E402

HYDRA_CONFIG = """\
seed: 7
run_dir: ${hydra:runtime.output_dir}
model:
  lr: 0.5
  depth: 3
  widths: [8, 16]
data:
  batch_size: 4
  root: /data/${seed}
"""
OVERRIDES = "- model.lr=0.5\n- data.batch_size=4\n- +extra=1\n"


class Color(enum.Enum):
    RED = "red"


class ParamModule(TinyModule):
    def __init__(self, model: dict, shared: str, path: Path, color: Color, scale: Any) -> None:
        super().__init__()
        self.save_hyperparameters()


class ParamData(pl.LightningDataModule):
    def __init__(self, batch_size: int, shared: str, workers: int) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        return loader()

    def val_dataloader(self):
        return loader()


def fit_run(run: Path, db: Any, module: pl.LightningModule, datamodule=None, epochs: int = 2):
    trainer = tiny_trainer(
        run,
        max_epochs=epochs,
        callbacks=[
            ModelCheckpoint(monitor="val/hmean", mode="max", save_top_k=-1),
            MetadataCallback(db=db),
        ],
    )
    if datamodule is None:
        trainer.fit(module, loader(), loader())
    else:
        trainer.fit(module, datamodule=datamodule)
    return trainer


def hydra_run(root: Path, config: str = HYDRA_CONFIG, overrides: str | None = OVERRIDES) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(config)
    if overrides is not None:
        (root / ".hydra" / "overrides.yaml").write_text(overrides)
    return root


def params_by_path(db: str) -> dict[str, dict[str, tuple]]:
    """{checkpoint_path: {name: (value_type, numeric, text, source, overridden)}} (raw SQL)."""
    engine = open_engine(db, readonly=True)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.checkpoint_path, p.name, p.value_type, p.numeric_value, "
                    "p.text_value, p.source, p.overridden FROM checkpoints AS c "
                    "JOIN checkpoint_params AS p ON p.checkpoint_id = c.id"
                )
            ).all()
    finally:
        engine.dispose()
    out: dict[str, dict[str, tuple]] = {}
    for path, name, *value in rows:
        value[-1] = bool(value[-1])
        out.setdefault(path, {})[name] = tuple(value)
    return out


def test_hydra_config_datamodule_and_module_hparams(tmp_path, db_url, invoke):
    run = hydra_run(tmp_path / "run")
    module = ParamModule(
        model={"lr": 0.1, "optimizer": {"name": "adam"}},
        shared="module",
        path=Path("/weights/init.pt"),
        color=Color.RED,
        scale=torch.tensor(0.25),
    )
    datamodule = ParamData(batch_size=16, shared="datamodule", workers=2)
    fit_run(run, db_url, module, datamodule)

    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 2
    expected = {
        # the Hydra config, interpolations kept as text ...
        "seed": 7,
        "run_dir": "${hydra:runtime.output_dir}",
        # ... the module's model mapping merged into it leaf by leaf (the module wins on lr)
        "model": {"lr": 0.1, "depth": 3, "widths": [8, 16], "optimizer": {"name": "adam"}},
        "data": {"batch_size": 4, "root": "/data/${seed}"},
        # the DataModule's hparams, the module's winning the name both have
        "batch_size": 16,
        "shared": "module",
        "workers": 2,
        # objects as plain values: paths and enums as text, a 0-d tensor as its number
        "path": "/weights/init.pt",
        "color": "red",
        "scale": 0.25,
        # TinyModule's own save_hyperparameters() argument
        "schedule": [0.2, 0.5, 0.9, 0.4, 0.7, 0.3],
    }
    for ckpt in ckpts:
        meta = read_sidecar(sidecar_path_for(ckpt))
        assert meta.hyperparameters == expected
        assert meta.hydra_overrides == ["model.lr=0.5", "data.batch_size=4", "+extra=1"]

    by_callback = params_by_path(db_url)
    assert set(by_callback) == {str(p) for p in ckpts}
    params = by_callback[str(ckpts[0])]
    assert params["model.lr"] == ("float", 0.1, "0.1", "sidecar", True)
    assert params["data.batch_size"] == ("int", 4.0, "4", "sidecar", True)
    assert params["batch_size"] == ("int", 16.0, "16", "sidecar", False)
    assert params["run_dir"][:3] == ("str", None, "${hydra:runtime.output_dir}")
    assert params["model.widths"][:3] == ("json", None, "[8,16]")
    assert not params["seed"][4]

    # A sync of the same sidecars into a new index stores exactly the callback's parameters.
    synced = tmp_path / "synced.db"
    result = invoke("sync", str(run), "--db", str(synced))
    assert result.exit_code == 0, result.output
    assert params_by_path(str(synced)) == by_callback


def test_without_hydra_the_module_hparams_alone(tmp_path, db_path, invoke):
    run = tmp_path / "run"
    fit_run(run, db_path, TinyModule(encoder="resnet18", lr=0.003, clip=math.inf))
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        meta = read_sidecar(sidecar_path_for(ckpt))
        assert meta.hyperparameters == {
            "schedule": [0.2, 0.5, 0.9, 0.4, 0.7, 0.3],
            "encoder": "resnet18",
            "lr": 0.003,
            "clip": math.inf,
        }
        assert meta.hydra_overrides is None
    by_callback = params_by_path(str(db_path))
    assert {name for p in by_callback.values() for name in p} == {
        "schedule",
        "encoder",
        "lr",
        "clip",
    }
    assert {p["clip"] for p in by_callback.values()} == {("float", None, "inf", "sidecar", False)}
    synced = tmp_path / "synced.db"
    assert invoke("sync", str(run), "--db", str(synced)).exit_code == 0
    assert params_by_path(str(synced)) == by_callback


class NoHparams(TinyModule):
    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.layer = torch.nn.Linear(4, 1)
        self.hparams_schedule = (0.5,)

    def validation_step(self, batch, batch_idx):
        self.log("val/hmean", 0.5)


def test_no_hparams_and_no_config_leave_the_key_out(tmp_path, db_path):
    run = tmp_path / "run"
    fit_run(run, db_path, NoHparams(), epochs=1)
    [ckpt] = (run / "checkpoints").glob("*.ckpt")
    assert "hyperparameters" not in sidecar_path_for(ckpt).read_text()
    assert read_sidecar(sidecar_path_for(ckpt)).hyperparameters is None
    assert params_by_path(str(db_path)) == {}


def test_a_hostile_hydra_config_costs_only_itself(tmp_path, db_path, caplog):
    run = hydra_run(
        tmp_path / "run",
        config="model: !!python/object/apply:os.system ['touch pwned']\n",
        overrides="- model.lr=1\n",
    )
    with caplog.at_level(logging.WARNING, logger="ckpt_index.lightning"):
        fit_run(run, db_path, TinyModule(lr=0.2), epochs=1)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    [ckpt] = (run / "checkpoints").glob("*.ckpt")
    meta = read_sidecar(sidecar_path_for(ckpt))
    assert meta.hyperparameters == {"schedule": [0.2, 0.5, 0.9, 0.4, 0.7, 0.3], "lr": 0.2}
    assert meta.hydra_overrides == ["model.lr=1"]
    assert any("Hydra config" in r.getMessage() for r in caplog.records)


def test_bounds_in_a_real_fit(tmp_path, db_path, invoke, caplog):
    run = tmp_path / "run"
    many = {f"k{i:05d}": i for i in range(MAX_PARAMS + 500)}
    with caplog.at_level(logging.WARNING, logger="ckpt_index.lightning"):
        fit_run(run, db_path, TinyModule(big="x" * (MAX_VALUE_BYTES + 10), many=many), epochs=1)
    [ckpt] = (run / "checkpoints").glob("*.ckpt")
    meta = read_sidecar(sidecar_path_for(ckpt))
    flat, warnings = flatten(meta.hyperparameters, "sidecar")
    assert len(flat) == MAX_PARAMS and warnings == []
    assert "big" not in meta.hyperparameters
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"more than {MAX_PARAMS} parameters" in messages
    assert f"longer than {MAX_VALUE_BYTES} bytes" in messages
    by_callback = params_by_path(str(db_path))
    assert len(by_callback[str(ckpt)]) == MAX_PARAMS
    synced = tmp_path / "synced.db"
    assert invoke("sync", str(run), "--db", str(synced)).exit_code == 0
    assert params_by_path(str(synced)) == by_callback


def test_computed_once_per_fit(tmp_path, db_path, monkeypatch):
    calls = []
    original = _params.run_hyperparameters

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(
        "ckpt_index.lightning.metadata_callback.run_hyperparameters", counting, raising=True
    )
    run = hydra_run(tmp_path / "run")
    fit_run(run, db_path, TinyModule(lr=0.1), epochs=4)
    assert len(list((run / "checkpoints").glob("*.ckpt"))) == 4
    assert len(calls) == 1


def test_plain_values():
    class Opaque:
        def __str__(self) -> str:
            return "<opaque>"

    config = OmegaConf.create({"a": "${b}", "b": 1, "c": {"d": [1, "${a}"]}})
    value = _params.plain_value(
        {
            "cfg": config,
            "tuple": (1, 2.5, None),
            "set": {3, 1, 2},
            "nan": math.nan,
            "inf": -math.inf,
            "tensor": torch.tensor([1.0, 2.0]),
            "scalar": torch.tensor(3),
            "obj": Opaque(),
            1: "int key",
            None: "null key",
            "deep": _deep(100),
        }
    )
    assert value["cfg"] == {"a": "${b}", "b": 1, "c": {"d": [1, "${a}"]}}
    assert value["tuple"] == [1, 2.5, None] and value["set"] == [1, 2, 3]
    assert math.isnan(value["nan"]) and value["inf"] == -math.inf
    assert value["tensor"] == "tensor([1., 2.])" and value["scalar"] == 3
    assert value["obj"] == "<opaque>"
    assert value["1"] == "int key" and value["null"] == "null key"
    hyper, warnings = _params.run_hyperparameters(value, None, None)
    assert hyper is not None and warnings == []
    flat, again = flatten(hyper, "sidecar")
    assert again == [] and flat["deep" + ".k" * 15][1] == "json"


def test_huge_values_are_dropped_before_the_sidecar():
    hyper, warnings = _params.run_hyperparameters(
        {"huge": list(range(1_000_000)), "ok": 1, "name" * 60: 2}, None, None
    )
    assert hyper == {"ok": 1}
    assert any("longer than" in w for w in warnings)


def _deep(levels: int) -> dict[str, Any]:
    out: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        out = {"k": out}
    return out
