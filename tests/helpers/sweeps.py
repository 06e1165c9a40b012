"""A small hyperparameter sweep of real sidecars (schema 1.1 ``hyperparameters``): three runs of
two checkpoints each, and one run without parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.checkpoints import write_checkpoint

#: Parameters every run shares, one of each stored type.
COMMON = {
    "model": {
        "name": "resnet",
        "layers": 3,
        "dropout": None,
        "pretrained": True,
        "sizes": [1, 2, 3],
        "optimizer": {"lr": 0.1, "betas": [0.9, 0.999]},
    },
    "data": {"batch_size": 8},
}

#: exp name -> (lr, batch_size, extra params)
RUNS: dict[str, tuple[float, int, dict[str, Any]]] = {
    "sweep-a": (0.1, 8, {}),
    "sweep-b": (0.01, 8, {}),
    "sweep-c": (0.01, 16, {"warmup": 5}),
}


def hparams(lr: float, batch_size: int, extra: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(COMMON))
    config["model"]["optimizer"]["lr"] = lr
    config["data"]["batch_size"] = batch_size
    config["model"].update(extra)
    return config


def expected_params(lr: float, batch_size: int, extra: dict[str, Any]) -> dict[str, Any]:
    out = {
        "data.batch_size": batch_size,
        "model.dropout": None,
        "model.layers": 3,
        "model.name": "resnet",
        "model.optimizer.betas": [0.9, 0.999],
        "model.optimizer.lr": lr,
        "model.pretrained": True,
        "model.sizes": [1, 2, 3],
    }
    out.update({f"model.{k}": v for k, v in extra.items()})
    return dict(sorted(out.items()))


def make_sweep(outputs: Path) -> dict[str, Path]:
    """Two checkpoints per sweep run, plus one run without hyperparameters ("plain")."""
    paths: dict[str, Path] = {}
    for index, (exp, (lr, bs, extra)) in enumerate(RUNS.items()):
        for epoch in (1, 2):
            ckpt = outputs / exp / "checkpoints" / f"epoch-{epoch}.ckpt"
            write_checkpoint(
                ckpt,
                schema_version="1.1",
                exp_name=exp,
                hyperparameters=hparams(lr, bs, extra),
                hydra_overrides=[f"model.optimizer.lr={lr}", f"data.batch_size={bs}"],
                **{
                    "training.epoch": epoch,
                    "metrics.hmean": 0.5 + 0.1 * index + 0.01 * epoch,
                    "metrics.additional_metrics": {},
                },
            )
            paths[f"{exp}/{epoch}"] = ckpt.resolve()
    plain = outputs / "plain" / "checkpoints" / "epoch-1.ckpt"
    write_checkpoint(
        plain,
        exp_name="plain",
        **{"training.epoch": 1, "metrics.hmean": 0.3, "metrics.additional_metrics": {}},
    )
    paths["plain"] = plain.resolve()
    return paths
