"""Hyperparameters of checkpoints without a sidecar: from the checkpoint's hparams (module and
datamodule), the run's Hydra config and overrides, and its W&B run config; ``convert`` writes them
into the sidecars it creates; hostile configs are bounded and reported, never a failed sync.

Artifacts are real: checkpoints written by a ``lightning.Trainer`` (or ``torch.save`` for hostile
contents), Hydra run directories laid out as Hydra writes them, W&B runs written by the SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.checkpoints import crafted
from helpers.index_rows import plain_engine
from sqlalchemy import text

from ckpt_index.cli import cli

#: The run's Hydra config (as Hydra saves it: interpolations unresolved) and its overrides.
HYDRA_CONFIG = {
    "seed": 7,
    "model": {"lr": 0.01, "encoder": "resnet18", "dims": [64, 32]},
    "data": {"batch_size": 8, "root": "${paths.data}"},
    "paths": {"data": "/data", "output_dir": "${hydra:runtime.output_dir}"},
    "trainer": {"max_epochs": 1, "precision": None},
}
OVERRIDES = ["model.lr=0.01", "data.batch_size=8", "+extra=1"]
WANDB_CONFIG = {
    "model": {"lr": 0.5, "_hidden": 1},  # model.lr: Hydra's value wins
    "wandb_only": {"tag": "w", "_private": "x"},
    "seed": 99,
}


def _write_hydra(run_dir: Path, config: Any = HYDRA_CONFIG, overrides: Any = OVERRIDES) -> None:
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, (bytes, str)):
        data = config.encode() if isinstance(config, str) else config
        (hydra_dir / "config.yaml").write_bytes(data)
    else:
        (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if overrides is not None:
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def _train(run_dir: Path) -> list[Path]:
    """A real Trainer run of a module and a datamodule that both save hyperparameters."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self, lr: float, encoder: dict, seed: int, layers: tuple) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Data(pl.LightningDataModule):
        def __init__(self, batch_size: int, lr: float, augment: bool) -> None:
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, generator=g))
            return DataLoader(data, batch_size=self.hparams.batch_size)

    module = Module(
        lr=0.01, encoder={"name": "resnet18", "pretrained": True}, seed=42, layers=(64, 32)
    )
    data = Data(batch_size=8, lr=0.5, augment=False)  # lr: the module's wins
    ckpt_dir = run_dir / "checkpoints"
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1)],
    )
    trainer.fit(module, datamodule=data)
    return sorted(ckpt_dir.glob("*.ckpt"))


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """Offline W&B with every directory it writes in a temporary place, and no credentials."""
    base = tmp_path_factory.mktemp("wandb_env")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT"):
            mp.delenv(var, raising=False)
        for var, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "NETRC": str(base / "no-netrc"),
        }.items():
            mp.setenv(var, value)
        for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
            (base / name.lower()).mkdir()
            mp.setenv(f"WANDB_{name}", str(base / name.lower()))
        yield base


def _wandb_offline_run(run_dir: Path, config: dict[str, Any]) -> None:
    import wandb
    from test_wandb_source import _settle

    run = wandb.init(mode="offline", dir=run_dir, project="p", config=config)
    run.log({"trainer/global_step": 1, "val/hmean": 0.5})
    run.finish()
    _settle(run_dir)


@pytest.fixture(scope="module")
def run_tree(tmp_path_factory: pytest.TempPathFactory, wandb_env: Path) -> dict[str, Any]:
    """A Hydra run directory holding a real Trainer's checkpoints and an offline W&B run."""
    root = tmp_path_factory.mktemp("outputs")
    run_dir = root / "sweep" / "0"
    run_dir.mkdir(parents=True)
    _write_hydra(run_dir)
    _wandb_offline_run(run_dir, WANDB_CONFIG)
    ckpts = _train(run_dir)
    assert ckpts
    return {"root": root, "run_dir": run_dir, "ckpts": ckpts}


def _invoke(db_url: str, *args: str) -> Any:
    from click.testing import CliRunner

    argv = list(args)
    if argv[0] != "convert":
        argv += ["--db", db_url]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _params(db_url: str) -> dict[str, dict[str, tuple]]:
    """checkpoint path -> {name: (value_type, numeric, text, source, overridden)}."""
    engine = plain_engine(db_url)
    out: dict[str, dict[str, tuple]] = {}
    try:
        with engine.connect() as conn:
            paths = dict(conn.execute(text("SELECT id, checkpoint_path FROM checkpoints")).all())
            for path in paths.values():
                out[path] = {}
            for cid, name, vtype, num, txt, source, over in conn.execute(
                text(
                    "SELECT checkpoint_id, name, value_type, numeric_value, text_value, source,"
                    " overridden FROM checkpoint_params"
                )
            ):
                out[paths[cid]][name] = (vtype, num, txt, source, bool(over))
    finally:
        engine.dispose()
    return out


def _row(db_url: str, ckpt: Path) -> dict[str, Any]:
    engine = plain_engine(db_url)
    try:
        with engine.connect() as conn:
            found = (
                conn.execute(
                    text("SELECT * FROM checkpoints WHERE checkpoint_path = :p"), {"p": str(ckpt)}
                )
                .mappings()
                .one()
            )
            return dict(found)
    finally:
        engine.dispose()


def _sync(db_url: str, root: Path) -> None:
    _invoke(db_url, "sync", str(root))


# ---------------------------------------------------------------------------------------------
# The three sources, merged per name


def test_fallback_params_from_checkpoint_hydra_and_wandb(run_tree, db_url: str) -> None:
    _sync(db_url, run_tree["root"])
    params = _params(db_url)
    assert set(params) == {str(c) for c in run_tree["ckpts"]}
    got = params[str(run_tree["ckpts"][0])]
    expected = {
        # the module's hparams; its lr wins over the datamodule's
        "lr": ("float", 0.01, "0.01", "checkpoint", False),
        "encoder.name": ("str", None, "resnet18", "checkpoint", False),
        "encoder.pretrained": ("bool", None, "true", "checkpoint", False),
        "layers": ("json", None, "[64,32]", "checkpoint", False),
        # seed: the checkpoint (42) over Hydra (7) over W&B (99)
        "seed": ("int", 42.0, "42", "checkpoint", False),
        # the datamodule's hparams
        "batch_size": ("int", 8.0, "8", "checkpoint", False),
        "augment": ("bool", None, "false", "checkpoint", False),
        # the Hydra config: overrides marked, interpolations kept as text
        "model.lr": ("float", 0.01, "0.01", "hydra", True),
        "model.encoder": ("str", None, "resnet18", "hydra", False),
        "model.dims": ("json", None, "[64,32]", "hydra", False),
        "data.batch_size": ("int", 8.0, "8", "hydra", True),
        "data.root": ("str", None, "${paths.data}", "hydra", False),
        "paths.data": ("str", None, "/data", "hydra", False),
        "paths.output_dir": ("str", None, "${hydra:runtime.output_dir}", "hydra", False),
        "trainer.max_epochs": ("int", 1.0, "1", "hydra", False),
        "trainer.precision": ("null", None, None, "hydra", False),
        # the W&B run config: no key starting with "_", at any level
        "wandb_only.tag": ("str", None, "w", "wandb", False),
    }
    assert got == expected
    # Every checkpoint of the run shares one stored set.
    assert all(p == got for p in params.values())
    row = _row(db_url, run_tree["ckpts"][0])
    assert row["status"] == "inferred"
    assert "hyperparameters" not in (row["warnings"] or "")


def test_datamodule_alone_and_no_sources(tmp_path: Path, db_url: str) -> None:
    dm_only = crafted(
        tmp_path / "a" / "dm.ckpt",
        {"epoch": 0, "global_step": 1, "datamodule_hyper_parameters": {"batch_size": 4}},
    )
    nothing = crafted(tmp_path / "b" / "none.ckpt", {"epoch": 0, "global_step": 1})
    _sync(db_url, tmp_path)
    params = _params(db_url)
    assert params[str(dm_only)] == {"batch_size": ("int", 4.0, "4", "checkpoint", False)}
    assert params[str(nothing)] == {}


def test_lightning_containers_in_hparams_are_plain(tmp_path: Path, db_url: str) -> None:
    # What save_hyperparameters stores: an AttributeDict; a Hydra app may pass a DictConfig or a
    # Namespace. The safe reader maps them to inert stand-ins; the values come out plain.
    from argparse import Namespace

    from lightning.fabric.utilities.data import AttributeDict
    from omegaconf import OmegaConf

    ckpt = crafted(
        tmp_path / "run" / "c.ckpt",
        {
            "epoch": 0,
            "global_step": 1,
            "hyper_parameters": AttributeDict(
                cfg=OmegaConf.create({"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "ref": "${x}"}),
                ns=Namespace(depth=3),
            ),
        },
    )
    _sync(db_url, tmp_path)
    assert _params(db_url)[str(ckpt)] == {
        "cfg.opt.lr": ("float", 0.1, "0.1", "checkpoint", False),
        "cfg.opt.betas": ("json", None, "[0.9,0.99]", "checkpoint", False),
        "cfg.ref": ("str", None, "${x}", "checkpoint", False),
        "ns.depth": ("int", 3.0, "3", "checkpoint", False),
    }


def test_online_wandb_files_config(tmp_path: Path, db_url: str) -> None:
    # An online run's files/config.yaml wraps values as {desc, value}; _wandb is W&B's own.
    run_dir = tmp_path / "exp" / "wandb" / "run-20251015_120000-onl1ne00"
    (run_dir / "files").mkdir(parents=True)
    (run_dir / "files" / "config.yaml").write_text(
        "wandb_version: 1\n"
        "_wandb:\n  desc: null\n  value:\n    cli_version: 0.19.0\n"
        "lr:\n  desc: learning rate\n  value: 0.001\n"
        "optim:\n  value:\n    name: adam\n    _internal: 1\n"
    )
    ckpt = crafted(tmp_path / "exp" / "checkpoints" / "epoch-00_step-000010.ckpt", {"epoch": 0})
    _sync(db_url, tmp_path)
    assert _params(db_url)[str(ckpt)] == {
        "lr": ("float", 0.001, "0.001", "wandb", False),
        "optim.name": ("str", None, "adam", "wandb", False),
    }


# ---------------------------------------------------------------------------------------------
# convert writes them; a sync of the written sidecars gives the same parameters


def test_convert_writes_params_that_sync_back_the_same(
    run_tree, tmp_path: Path, db_url: str
) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(run_tree["root"], root, symlinks=True)
    fallback_url = db_url
    _sync(fallback_url, root)
    fallback = _params(fallback_url)

    _invoke(db_url, "convert", "--outputs-dir", str(root))
    sidecars = sorted(root.rglob("*.metadata.yaml"))
    assert len(sidecars) == len(run_tree["ckpts"])
    document = yaml.safe_load(sidecars[0].read_text())
    assert document["schema_version"] == "1.0"  # what the seed reader accepts; 1.1 keys extra
    assert document["hydra_overrides"] == OVERRIDES
    assert document["hyperparameters"]["model"]["lr"] == 0.01
    assert document["hyperparameters"]["data"]["root"] == "${paths.data}"

    _invoke(db_url, "sync", "--full", str(root))
    from_sidecars = _params(db_url)
    assert set(from_sidecars) == set(fallback)
    for path, params in fallback.items():
        assert from_sidecars[path] == {
            name: (*value[:3], "sidecar", value[4]) for name, value in params.items()
        }
        assert _row(db_url, Path(path))["source"] == "sidecar"


def test_convert_round_trips_awkward_values(tmp_path: Path, db_url: str) -> None:
    # Names whose paths collide, NaN and infinities, empty mappings, a mapping past the depth
    # bound, text that looks like another type, a long integer, a cleaned key.
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(20):
        deep = {"d": deep}
    hparams = {
        "model": "x",
        "nan": float("nan"),
        "inf": float("-inf"),
        "empty": {},
        "deep": deep,
        "looks": {"int": "1", "bool": "yes", "null": "null", "date": "2024-01-01"},
        "big": 2**70,
        "huge": 2**2000,
        "ke\x00y": 1,
        "t": (1, "a", None),
    }
    ckpt = crafted(
        tmp_path / "run" / "epoch=0-step=1.ckpt",
        {"epoch": 0, "global_step": 1, "hyper_parameters": hparams},
    )
    _write_hydra(tmp_path / "run", {"model": {"lr": 0.1}}, ["model.lr=0.1"])
    _sync(db_url, tmp_path)
    fallback = _params(db_url)[str(ckpt)]
    assert fallback["model"][2] == "x" and fallback["model.lr"][1:] == (0.1, "0.1", "hydra", True)
    assert fallback["nan"] == ("float", None, "nan", "checkpoint", False)
    assert fallback["inf"] == ("float", None, "-inf", "checkpoint", False)
    assert fallback["key"] == ("int", 1.0, "1", "checkpoint", False)
    assert fallback["empty"] == ("json", None, "{}", "checkpoint", False)
    assert fallback["huge"][:3] == ("str", None, "an integer of 2001 bits")
    deep_names = [n for n in fallback if n.startswith("deep.")]
    assert len(deep_names) == 1 and deep_names[0].count(".") == 15
    _invoke(db_url, "convert", "--outputs-dir", str(tmp_path))
    _invoke(db_url, "sync", "--full", str(tmp_path))
    back = _params(db_url)[str(ckpt)]
    assert back == {name: (*v[:3], "sidecar", v[4]) for name, v in fallback.items()}


# ---------------------------------------------------------------------------------------------
# Hostile configs: the sync succeeds, the row is bounded, warnings say what was dropped


def _warnings(db_url: str, ckpt: Path) -> str:
    row = _row(db_url, ckpt)
    assert row["status"] == "inferred", row["error"]
    return row["warnings"] or ""


def test_hostile_checkpoint_hparams(tmp_path: Path, db_url: str) -> None:
    many = crafted(
        tmp_path / "many" / "c.ckpt",
        {"epoch": 0, "hyper_parameters": {f"k{i:06d}": i for i in range(100_000)}},
    )
    huge_list = crafted(
        tmp_path / "list" / "c.ckpt",
        {"epoch": 0, "hyper_parameters": {"xs": list(range(1_000_000)), "ok": 1}},
    )
    not_mapping = crafted(tmp_path / "seq" / "c.ckpt", {"epoch": 0, "hyper_parameters": [1, 2]})
    odd = crafted(
        tmp_path / "odd" / "c.ckpt",
        {
            "epoch": 0,
            "hyper_parameters": {
                "nan": float("nan"),
                "pinf": float("inf"),
                "nul\x00key": "v\x00al",
                "long": "x" * 5000,
                "n" * 300: 1,
                "_wandb": {"kept": True},  # only W&B's config skips underscore keys
            },
        },
    )
    _sync(db_url, tmp_path)
    params = _params(db_url)

    assert len(params[str(many)]) == 2000
    assert params[str(many)]["k000000"] == ("int", 0.0, "0", "checkpoint", False)
    assert "k001999" in params[str(many)] and "k002000" not in params[str(many)]
    assert "more than 2000 parameters: dropped 'k002000' and 97999 more" in _warnings(db_url, many)

    # 1e6 items expand past the reader's node budget: the hparams are dropped, with the reason.
    assert params[str(huge_list)] == {}
    assert "hyper_parameters: expands to more than" in _warnings(db_url, huge_list)

    assert params[str(not_mapping)] == {}
    assert "hyper_parameters: not a mapping (list); ignored" in _warnings(db_url, not_mapping)

    got = params[str(odd)]
    assert got["nan"] == ("float", None, "nan", "checkpoint", False)
    assert got["pinf"] == ("float", None, "inf", "checkpoint", False)
    assert got["nulkey"] == ("str", None, "val", "checkpoint", False)
    assert got["_wandb.kept"] == ("bool", None, "true", "checkpoint", False)
    assert "long" not in got and "n" * 300 not in got
    warnings = _warnings(db_url, odd)
    assert "a value longer than 2048 bytes: dropped 'long'" in warnings
    assert "a name longer than 200 characters: dropped 'nnnn" in warnings


def test_hostile_hydra_configs(tmp_path: Path, db_url: str) -> None:
    canary = tmp_path / "canary"

    def run_with(name: str, config: Any, overrides: Any = None) -> Path:
        run_dir = tmp_path / name
        _write_hydra(run_dir, config, overrides)
        return crafted(run_dir / "checkpoints" / "c.ckpt", {"epoch": 0, "global_step": 1})

    deep = run_with("deep", "a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n")
    python_tag = run_with(
        "tag",
        f"lr: 0.1\nevil: !!python/object/apply:os.system ['touch {canary}']\n",
        ["lr=0.1"],
    )
    keys = run_with("keys", "".join(f"k{i:06d}: {i}\n" for i in range(100_000)))
    huge_list = run_with("list", "xs: [" + ",".join(["1"] * 1_000_000) + "]\n")
    moderate = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}
    for _ in range(12):  # 21 levels below "deep"
        moderate = {"m": moderate}
    nested = run_with("nested", {"ok": 1, "deep": moderate}, "- ok=1\n- !!python/name:os.system\n")
    bad_overrides = run_with("bad_overrides", {"ok": 1}, None)
    (tmp_path / "bad_overrides" / ".hydra" / "overrides.yaml").write_text(
        "- " + "[" * 10_000 + "\n"
    )

    _sync(db_url, tmp_path)
    params = _params(db_url)
    assert not canary.exists()

    assert params[str(deep)] == {}
    assert "nests deeper than 64 levels" in _warnings(db_url, deep)

    assert params[str(python_tag)] == {}
    assert "hydra config" in _warnings(db_url, python_tag)
    assert "unusable" in _warnings(db_url, python_tag)

    assert len(params[str(keys)]) == 2000
    assert "hydra hyperparameters: more than 2000 parameters: dropped 'k002000'" in _warnings(
        db_url, keys
    )

    assert params[str(huge_list)] == {}
    assert "hydra config" in _warnings(db_url, huge_list)

    # Within the parser's bounds, a mapping past 16 levels is one JSON value.
    assert params[str(nested)]["ok"] == ("int", 1.0, "1", "hydra", False)
    (name,) = [n for n in params[str(nested)] if n.startswith("deep.")]
    assert name.count(".") == 15 and params[str(nested)][name][0] == "json"
    assert "hydra overrides" in _warnings(db_url, nested)  # the python tag: not read

    assert params[str(bad_overrides)] == {"ok": ("int", 1.0, "1", "hydra", False)}
    assert "hydra overrides" in _warnings(db_url, bad_overrides)


def test_wandb_underscore_keys_from_the_sdk(tmp_path: Path, wandb_env: Path, db_url: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _wandb_offline_run(run_dir, {"lr": 0.1, "_private": 1, "opt": {"_x": 1, "momentum": 0.9}})
    ckpt = crafted(run_dir / "checkpoints" / "c.ckpt", {"epoch": 0, "global_step": 1})
    _sync(db_url, tmp_path)
    assert _params(db_url)[str(ckpt)] == {
        "lr": ("float", 0.1, "0.1", "wandb", False),
        "opt.momentum": ("float", 0.9, "0.9", "wandb", False),
    }


def test_nothing_runs_from_hparams(tmp_path: Path, db_url: str) -> None:
    from helpers.pickles import payloads

    canary = tmp_path / "canary"
    ckpt = crafted(
        tmp_path / "run" / "c.ckpt",
        {"epoch": 0, "hyper_parameters": {"evil": payloads(canary)["posix.system"], "lr": 0.1}},
    )
    _sync(db_url, tmp_path)
    assert not canary.exists()
    got = _params(db_url)[str(ckpt)]
    assert got["lr"] == ("float", 0.1, "0.1", "checkpoint", False)
    # The call is an inert stand-in, shown by the name of what it would have called.
    assert got["evil"] == ("str", None, "<posix.system>", "checkpoint", False)


def _deep_hparams_pickle(levels: int) -> bytes:
    """A protocol-2 pickle of ``{"epoch": 0, "hyper_parameters": {"a": {"a": ... 1}}}``, written
    opcode by opcode (pickling a 10,000-level dict would need a raised recursion limit)."""

    def string(value: str) -> bytes:
        data = value.encode()
        return b"X" + len(data).to_bytes(4, "little") + data

    body = [b"\x80\x02}", string("epoch"), b"K\x00s", string("hyper_parameters")]
    body += [b"}" + string("a")] * levels
    body += [b"K\x01", b"s" * levels, b"s."]
    return b"".join(body)


def test_hostile_deep_checkpoint_hparams(tmp_path: Path, db_url: str) -> None:
    import zipfile

    ckpt = tmp_path / "deep" / "c.ckpt"
    ckpt.parent.mkdir()
    with zipfile.ZipFile(ckpt, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", _deep_hparams_pickle(10_000))
        archive.writestr("archive/byteorder", "little")
    _write_hydra(tmp_path / "deep", {"lr": 0.1}, None)
    _sync(db_url, tmp_path)
    # The checkpoint's hparams are dropped with the reason; the Hydra config still gives its own.
    assert _params(db_url)[str(ckpt)] == {"lr": ("float", 0.1, "0.1", "hydra", False)}
    assert "hyper_parameters: nested deeper than" in _warnings(db_url, ckpt)


def test_hostile_wandb_files_config(tmp_path: Path, db_url: str) -> None:
    run_dir = tmp_path / "exp" / "wandb" / "run-20251015_120000-hostile0"
    (run_dir / "files").mkdir(parents=True)
    keys = "".join(f"k{i:06d}: {i}\n" for i in range(100_000))  # unwrapped: older wandb
    (run_dir / "files" / "config.yaml").write_text(
        "_wandb:\n  value: {m: []}\n"
        + "deep:\n  value: "
        + "{a: " * 40
        + "1"
        + "}" * 40
        + "\n"
        + keys
    )
    ckpt = crafted(tmp_path / "exp" / "checkpoints" / "epoch-00_step-000010.ckpt", {"epoch": 0})
    _sync(db_url, tmp_path)
    got = _params(db_url)[str(ckpt)]
    assert len(got) == 2000 and not any(name.startswith("_") for name in got)
    (deep,) = [name for name in got if name.startswith("deep.")]
    assert deep.count(".") == 15 and got[deep][0] == "json" and got[deep][3] == "wandb"
    assert "wandb hyperparameters: more than 2000 parameters: dropped" in _warnings(db_url, ckpt)


def test_unreadable_wandb_config_is_reported(tmp_path: Path, db_url: str) -> None:
    run_dir = tmp_path / "exp" / "wandb" / "run-20251015_120000-hostile1"
    (run_dir / "files").mkdir(parents=True)
    (run_dir / "files" / "config.yaml").write_text("xs: [" + ",".join(["1"] * 1_000_000) + "]\n")
    ckpt = crafted(tmp_path / "exp" / "checkpoints" / "epoch-00_step-000010.ckpt", {"epoch": 0})
    _sync(db_url, tmp_path)
    assert _params(db_url)[str(ckpt)] == {}
    assert "W&B run: " in _warnings(db_url, ckpt) and "config.yaml" in _warnings(db_url, ckpt)
