"""Synthetic outputs trees in the naming scheme, with seed-shaped sidecars.

Used by ``ckpt-index demo`` (a small realistic tree), by the benchmark (N checkpoints) and by
tests. Checkpoint files are tiny zips in torch's layout with Lightning's bookkeeping and no
weights, so the fallbacks have something real to read where a sidecar is missing.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

from ckpt_index.sidecar.files import dump_document, sidecar_path_for
from ckpt_index.vocabulary import PHASES

ARCHITECTURES = ("dbnet", "craft", "pan")
ENCODERS = {
    "resnet18": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "mobilenetv3_small_050": [16, 24, 48, 96],
    "efficientnet_b0": [24, 40, 112, 320],
}
#: Demo experiments train, and every seventh fine-tunes (none is a validation run).
DEMO_PHASES = tuple(p for p in PHASES if p != "validation")
TAGS = ("ocr_baseline_v1", "ocr_aug_v2", "ocr_lr_sweep", "ocr_long_run")
#: The demo's sweep: experiment e trains with LEARNING_RATES[e % 3] and BATCH_SIZES[e // 3 % 2].
LEARNING_RATES = (1e-3, 5e-4, 2e-4)
BATCH_SIZES = (8, 16)


def run_config(e: int, architecture: str, encoder: str, max_epochs: int) -> dict[str, Any]:
    """Experiment ``e``'s hyperparameters as its sidecars hold them (a Hydra-shaped config) and
    the overrides that set the swept ones."""
    lr, batch_size = LEARNING_RATES[e % 3], BATCH_SIZES[e // 3 % 2]
    return {
        "hyperparameters": {
            "model": {
                "architecture": architecture,
                "encoder": encoder,
                "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01},
            },
            "data": {"dataset": "icdar2015", "batch_size": batch_size, "image_size": 640},
            "trainer": {"max_epochs": max_epochs, "precision": "16-mixed"},
            "seed": 42,
        },
        "hydra_overrides": [f"model.optimizer.lr={lr}", f"data.batch_size={batch_size}"],
    }


def sidecar_document(
    *,
    checkpoint_path: str,
    exp_name: str,
    architecture: str,
    encoder: str,
    epoch: int,
    global_step: int,
    phase: str,
    max_epochs: int,
    hmean: float,
    rng: random.Random,
    created_at: _dt.datetime,
) -> dict[str, Any]:
    """A sidecar mapping shaped like the seed examples, with plausible values."""
    return {
        "schema_version": "1.0",
        "checkpoint_path": checkpoint_path,
        "exp_name": exp_name,
        "created_at": created_at.isoformat(),
        "training": {
            "epoch": epoch,
            "global_step": global_step,
            "training_phase": phase,
            "max_epochs": max_epochs,
        },
        "model": _model_section(architecture, encoder),
        "metrics": _metrics_section(hmean, rng),
        "checkpointing": {
            "monitor": "val/hmean",
            "mode": "max",
            "save_top_k": 3,
            "save_last": True,
        },
        "hydra_config_path": str(Path(checkpoint_path).parent.parent / ".hydra" / "config.yaml"),
    }


def _model_section(architecture: str, encoder: str) -> dict[str, Any]:
    """The sidecar's ``model``: the decoder's input channels are the encoder's stage widths."""
    return {
        "architecture": architecture,
        "encoder": {"model_name": encoder, "pretrained": True, "frozen": False},
        "decoder": {
            "name": "pan_decoder" if architecture == "pan" else "unet_decoder",
            "in_channels": ENCODERS[encoder],
            "inner_channels": 256,
            "output_channels": 128,
            "params": {},
        },
        "head": {"name": "db_head", "in_channels": 128, "params": {}},
        "loss": {"name": "db_loss", "params": {}},
    }


def _metrics_section(hmean: float, rng: random.Random) -> dict[str, Any]:
    """The sidecar's ``metrics``: precision a little above hmean, the recall that gives that
    hmean, a validation loss falling as hmean rises, and the logged names they come from."""
    precision = min(1.0, hmean + rng.uniform(0.0, 0.05))
    recall = max(0.0, min(1.0, hmean * precision / max(2 * precision - hmean, 1e-9)))
    val_loss = round(max(0.001, 0.12 * (1.0 - hmean) + rng.uniform(0, 0.01)), 6)
    return {
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "hmean": round(hmean, 6),
        "validation_loss": val_loss,
        "additional_metrics": {
            "val/precision": round(precision, 6),
            "val/recall": round(recall, 6),
            "val/hmean": round(hmean, 6),
            "val/loss": val_loss,
            "cleval/precision": round(precision, 6),
            "cleval/recall": round(recall, 6),
            "cleval/hmean": round(hmean, 6),
            "train/loss": round(val_loss * rng.uniform(0.7, 0.95), 6),
        },
    }


def checkpoint_bytes(document: dict[str, Any]) -> bytes:
    """A tiny checkpoint in torch's zip layout (``<prefix>/data.pkl``) holding what Lightning
    stores besides the weights: epoch, global_step, hyper_parameters, cleval_metrics and the
    ModelCheckpoint state. Plain data only, so it is written without torch."""
    training, model, metrics = document["training"], document["model"], document["metrics"]
    monitor = "val/hmean"
    state_key = (
        f"ModelCheckpoint{{'monitor': '{monitor}', 'mode': 'max', "
        "'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}"
    )
    contents = {
        "epoch": training["epoch"],
        "global_step": training["global_step"],
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": {
            "architecture_name": model["architecture"],
            "encoder": dict(model["encoder"]),
            "decoder": dict(model["decoder"]),
            "head": dict(model["head"]),
            "loss": dict(model["loss"]),
            "exp_name": document["exp_name"],
        },
        "cleval_metrics": {k: metrics[k] for k in ("precision", "recall", "hmean")},
        "callbacks": {
            state_key: {
                "monitor": monitor,
                "current_score": metrics["hmean"],
                "best_model_score": metrics["hmean"],
            }
        },
        "state_dict": {},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        # Fixed member times: the same document gives the same bytes (writestr(name) uses now).
        for name, data in (
            ("data.pkl", pickle.dumps(contents, protocol=2)),
            ("byteorder", b"little"),
            ("version", b"3\n"),
        ):
            archive.writestr(zipfile.ZipInfo(f"archive/{name}", (2025, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _write(ckpt: Path, document: dict[str, Any], with_sidecar: bool) -> None:
    ckpt.write_bytes(checkpoint_bytes(document))
    if with_sidecar:
        sidecar_path_for(ckpt).write_text(dump_document(document), encoding="utf-8")
    _date(ckpt, document["created_at"])
    if with_sidecar:
        _date(sidecar_path_for(ckpt), document["created_at"])


def _date(path: Path, created_at: str) -> None:
    """Give a demo file the modification time of its ``created_at`` (UTC), as if a run of that
    date had written it: a tree written now would look like runs still being written (``gc``
    keeps those) and its checkpoints would all be as new as each other."""
    moment = _dt.datetime.fromisoformat(created_at).replace(tzinfo=_dt.timezone.utc).timestamp()
    os.utime(path, (moment, moment))


def make_tree(
    root: str | Path,
    n_checkpoints: int,
    *,
    seed: int = 0,
    per_experiment: int = 20,
    without_sidecar: int = 0,
    invalid: int = 0,
    hyperparameters: bool = False,
) -> list[Path]:
    """Write ``n_checkpoints`` checkpoints in experiments of ``per_experiment``; return their paths.

    The first ``without_sidecar`` experiments' last checkpoints get no sidecar and the next
    ``invalid`` get a sidecar with an out-of-range hmean, so a demo shows both cases. With
    ``hyperparameters``, sidecars carry their experiment's :func:`run_config` (schema 1.1).
    """
    rng = random.Random(seed)
    root = Path(root)
    start = _dt.datetime(2025, 10, 1, 9, 0, 0)
    paths: list[Path] = []
    n_exp = max(1, -(-n_checkpoints // per_experiment))
    for e in range(n_exp):
        arch = ARCHITECTURES[e % len(ARCHITECTURES)]
        encoder = list(ENCODERS)[(e // len(ARCHITECTURES)) % len(ENCODERS)]
        phase = DEMO_PHASES[e % 7 == 6]
        stamp = start + _dt.timedelta(hours=7 * e, minutes=rng.randrange(60))
        exp_name = f"{TAGS[e % len(TAGS)]}-{arch}-{encoder}_{phase}_{stamp:%Y%m%d_%H%M%S}"
        ckpt_dir = root / exp_name / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        count = min(per_experiment, n_checkpoints - len(paths))
        ceiling = rng.uniform(0.62, 0.93)
        steps_per_epoch = rng.choice((88, 176, 205, 271))
        for i in range(count):
            epoch = i
            progress = (epoch + 1) / count
            hmean = max(
                0.0, min(1.0, ceiling * (1 - 0.55 * (1 - progress) ** 2) + rng.gauss(0, 0.01))
            )
            step = (epoch + 1) * steps_per_epoch
            ckpt = ckpt_dir / f"epoch-{epoch:02d}_step-{step:06d}.ckpt"
            doc = sidecar_document(
                checkpoint_path=str(ckpt.relative_to(root)),
                exp_name=exp_name,
                architecture=arch,
                encoder=encoder,
                epoch=epoch,
                global_step=step,
                phase=phase,
                max_epochs=count,
                hmean=hmean,
                rng=rng,
                created_at=stamp + _dt.timedelta(minutes=11 * (epoch + 1)),
            )
            if hyperparameters:
                doc.update(schema_version="1.1", **run_config(e, arch, encoder, count))
            last = i == count - 1
            _write(ckpt, doc, with_sidecar=not (last and e < without_sidecar))
            if last and without_sidecar <= e < without_sidecar + invalid:
                doc["metrics"]["hmean"] = 1.7  # rejected: out of range
                sidecar_path_for(ckpt).write_text(dump_document(doc), encoding="utf-8")
                _date(sidecar_path_for(ckpt), doc["created_at"])
            paths.append(ckpt)
        if paths and paths[-1].parent == ckpt_dir:
            _date(ckpt_dir, doc["created_at"])
            _date(ckpt_dir.parent, doc["created_at"])
    return paths


def make_demo_tree(root: str | Path, *, seed: int = 0) -> list[Path]:
    """The README's demo: 8 experiments of 8 epochs from a small sweep (learning rate x batch
    size, in the sidecars' hyperparameters), one checkpoint without a sidecar and one with an
    invalid sidecar."""
    return make_tree(
        root, 64, seed=seed, per_experiment=8, without_sidecar=1, invalid=1, hyperparameters=True
    )
