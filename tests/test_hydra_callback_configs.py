"""The Hydra snippets shipped in ckpt_index/configs compose, and instantiate the callbacks."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

pytest.importorskip("hydra")
pytest.importorskip("lightning.pytorch")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ckpt_index.lightning import MetadataCallback, UniqueModelCheckpoint  # noqa: E402

SHIPPED = Path(str(resources.files("ckpt_index.configs")))
SEARCHPATH = "hydra:\n  searchpath:\n    - pkg://ckpt_index.configs\n"


def project(tmp_path: Path, files: dict[str, str]) -> Path:
    """A Hydra project's config directory holding ``files``."""
    root = tmp_path / "conf"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def callbacks_of(cfg) -> dict:
    return {name: instantiate(node) for name, node in cfg.callbacks.items() if "_target_" in node}


def test_snippets_ship_inside_the_package():
    for name in ("metadata", "model_checkpoint"):
        text = (resources.files("ckpt_index.configs") / "callbacks" / f"{name}.yaml").read_text()
        assert "_target_: ckpt_index.lightning." in text


def test_one_defaults_entry_enables_both(tmp_path):
    conf = project(
        tmp_path,
        {
            "train.yaml": (
                "defaults:\n  - callbacks: [metadata, model_checkpoint]\n  - _self_\n"
                + SEARCHPATH
                + "exp_name: dbnet-resnet50\nexperiment_tag: ocr_v1\ntraining_phase: finetuning\n"
            )
        },
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[f"callbacks.metadata.db={tmp_path / 'index.db'}"])
    built = callbacks_of(cfg)
    assert list(built) == ["metadata", "model_checkpoint"]

    metadata = built["metadata"]
    assert isinstance(metadata, MetadataCallback)
    assert (metadata.exp_name, metadata.training_phase, metadata.db) == (
        "dbnet-resnet50",
        "finetuning",
        str(tmp_path / "index.db"),
    )

    checkpoint = built["model_checkpoint"]
    assert isinstance(checkpoint, UniqueModelCheckpoint)
    assert (checkpoint.experiment_tag, checkpoint.training_phase) == ("ocr_v1", "finetuning")
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_top_k, checkpoint.save_last) == (
        "val/hmean",
        "max",
        3,
        True,
    )
    assert checkpoint.filename == UniqueModelCheckpoint.SCHEME_FILENAME


def test_defaults_without_project_keys(tmp_path):
    conf = project(
        tmp_path,
        {
            "train.yaml": "defaults:\n  - callbacks: [metadata, model_checkpoint]\n  - _self_\n"
            + SEARCHPATH
        },
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train")
    built = callbacks_of(cfg)
    assert (built["metadata"].exp_name, built["metadata"].training_phase, built["metadata"].db) == (
        None,
        "training",
        None,
    )
    assert (built["model_checkpoint"].experiment_tag, built["model_checkpoint"].training_phase) == (
        "exp",
        "training",
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+callbacks=metadata", ["metadata"]),
        ("+callbacks=[metadata,model_checkpoint]", ["metadata", "model_checkpoint"]),
    ],
)
def test_command_line_override(tmp_path, override, expected):
    conf = project(tmp_path, {"train.yaml": SEARCHPATH + "seed: 0\n"})
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    assert list(callbacks_of(cfg)) == expected


def test_next_to_a_projects_own_callbacks(tmp_path):
    # A lightning-hydra-template style project lists the snippet in its own callbacks/default.yaml.
    conf = project(
        tmp_path,
        {
            "train.yaml": "defaults:\n  - callbacks: default\n  - _self_\n" + SEARCHPATH,
            "callbacks/default.yaml": "defaults:\n  - early_stopping\n  - metadata\n  - _self_\n",
            "callbacks/early_stopping.yaml": (
                "early_stopping:\n  _target_: lightning.pytorch.callbacks.EarlyStopping\n"
                "  monitor: val/loss\n"
            ),
        },
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["callbacks.metadata.db=false"])
    built = callbacks_of(cfg)
    assert list(built) == ["early_stopping", "metadata"]
    assert built["metadata"].db is False


def test_compose_from_the_shipped_directory():
    with initialize_config_dir(config_dir=str(SHIPPED), version_base="1.3"):
        cfg = compose(
            overrides=[
                "+callbacks=[metadata,model_checkpoint]",
                "callbacks.model_checkpoint.save_top_k=1",
            ]
        )
    assert (
        OmegaConf.select(cfg, "callbacks.model_checkpoint._target_")
        == "ckpt_index.lightning.UniqueModelCheckpoint"
    )
    assert callbacks_of(cfg)["model_checkpoint"].save_top_k == 1
