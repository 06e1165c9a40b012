#!/usr/bin/env python
"""Benchmark ``sync`` over sidecar-less checkpoints with the fallbacks on (target: 1,000 in <= 5 s).

Trains a tiny model once with a real ``lightning.Trainer`` on the CPU (hparams naming the model,
``cleval_metrics`` stored, a ModelCheckpoint monitoring ``val/hmean``) to get one real checkpoint,
then copies it ``--count`` times into a tree laid out like a training project:

    outputs/<tag>-dbnet-<encoder>_training_<timestamp>/
        .hydra/config.yaml                      (saved by OmegaConf, interpolations unresolved)
        checkpoints/epoch-XX_step-XXXXXX.ckpt   (``--per-run`` of them)
        wandb/offline-run-*-<id>/               (with ``--wandb``: a run logged by WandbLogger)

Every file's mtime is set an hour back, as for checkpoints written earlier (files modified
within the last 2 s are deliberately re-read by every sync). Then, in one run:

- a cold sync into a fresh SQLite index with inference on (``sync_roots(..., infer=True)``),
  timed with and without opening the index (creating it at head), ``--repeat`` times, each into
  a new index file (the median is held against the target: the machine may be shared);
- a re-sync with nothing changed, after each cold sync.

The page cache is warm (the tree was just written); "cold" means the index has no rows yet.

    python scripts/bench_fallback_sync.py
    python scripts/bench_fallback_sync.py --count 5000 --wandb --dir /scratch --keep
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

TARGET_S = 5.0
HOUR_NS = 3600 * 10**9
ENCODERS = ("resnet18", "resnet50", "mobilenetv3_large", "efficientnet_b0")


def isolate_wandb(base: Path) -> None:
    """Offline W&B with every directory it writes under ``base``, and no credentials."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID"):
        os.environ.pop(var, None)
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONSOLE="off",
        WANDB_DISABLE_GIT="true",
        WANDB_DISABLE_CODE="true",
        NETRC=str(base / "no-netrc"),
    )
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
        path = base / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        os.environ[f"WANDB_{name}"] = str(path)


def module_class() -> type:
    """A tiny LightningModule with the hparams, metrics and CLEval results a real run has."""
    import lightning as L
    import torch

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(
                {
                    "architecture_name": "dbnet",
                    "encoder": {"model_name": "resnet18"},
                    "decoder": {"name": "unet"},
                    "lr": 0.1,
                }
            )
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("val/loss", loss)
            self.log("val/hmean", 1 / (1 + loss))

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["cleval_metrics"] = {"precision": 0.88, "recall": 0.71, "hmean": 0.78}

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Module


def train(work: Path, with_wandb: bool) -> tuple[Path, Path | None, float]:
    """One real checkpoint (and the W&B run directory that logged it); also the seconds spent."""
    started = time.perf_counter()
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    logger: Any = False
    if with_wandb:
        from lightning.pytorch.loggers import WandbLogger

        isolate_wandb(work / "wandb_env")
        logger = WandbLogger(save_dir=str(work / "train"), project="bench", offline=True)
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8
    )
    checkpointing = ModelCheckpoint(
        dirpath=work / "train" / "ckpts", monitor="val/hmean", mode="max"
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        callbacks=[checkpointing],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module_class()(), data, data)
    run_dir = None
    if with_wandb:
        import wandb

        run_id = logger.version
        wandb.finish()
        (run_dir,) = (work / "train" / "wandb").glob(f"offline-run-*-{run_id}")
    (ckpt,) = (work / "train" / "ckpts").glob("*.ckpt")
    return ckpt, run_dir, time.perf_counter() - started


def hydra_config(tag: str, encoder: str) -> dict[str, Any]:
    return {
        "exp_name": tag,
        "seed": 42,
        "output_dir": "${hydra:runtime.output_dir}",
        "model": {
            "architecture": "dbnet",
            "component_overrides": {
                "encoder": {"model_name": encoder, "pretrained": True},
                "decoder": {"name": "unet", "inner_channels": 256},
                "head": {"name": "db_head", "k": 50},
                "loss": {"name": "db_loss"},
            },
        },
        "trainer": {"max_epochs": 100, "precision": 32},
        "data": {"root": "/data/ocr", "batch_size": 16},
    }


def make_tree(outputs: Path, source: Path, wandb_run: Path | None, count: int, per_run: int) -> int:
    """``count`` copies of ``source`` under run directories; returns the bytes written."""
    from omegaconf import OmegaConf

    written = 0
    runs = (count + per_run - 1) // per_run
    for r in range(runs):
        encoder = ENCODERS[r % len(ENCODERS)]
        tag = f"ocr_v{r:03d}"
        run_dir = outputs / f"{tag}-dbnet-{encoder}_training_20251{r % 10}15_{r % 24:02d}0000"
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(
            OmegaConf.create(hydra_config(tag, encoder)), run_dir / ".hydra" / "config.yaml"
        )
        if wandb_run is not None:
            shutil.copytree(wandb_run, run_dir / "wandb" / wandb_run.name, symlinks=True)
        for i in range(min(per_run, count - r * per_run)):
            ckpt = run_dir / "checkpoints" / f"epoch-{i:02d}_step-{(i + 1) * 205:06d}.ckpt"
            shutil.copyfile(source, ckpt)
            written += ckpt.stat().st_size
    for path in outputs.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
    return written


def timed_sync(outputs: Path, db: Path) -> tuple[float, float, Any]:
    """(seconds including opening the index, seconds in sync_roots, summary)."""
    from ckpt_index.index.engine import open_engine
    from ckpt_index.sync.roots import sync_roots

    started = time.perf_counter()
    engine = open_engine(db)
    try:
        summary = sync_roots(engine, [outputs], infer=True)
    finally:
        engine.dispose()
    return time.perf_counter() - started, summary.elapsed_s, summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="checkpoints to sync [1000]")
    parser.add_argument(
        "--per-run", type=int, default=20, help="checkpoints per run directory [20]"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="cold syncs, each into a new index [3]"
    )
    parser.add_argument(
        "--wandb", action="store_true", help="put an offline W&B run in every run directory"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to build the tree [a temp dir]"
    )
    parser.add_argument("--keep", action="store_true", help="keep the tree and the index")
    return parser


def cold_and_warm_syncs(
    outputs: Path, work: Path, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """``--repeat`` cold syncs, each into a new index and followed by a no-change re-sync;
    returns the seconds spent in sync_roots by each."""
    cold, warm = [], []
    for i in range(args.repeat):
        db = work / f"index-{i}.db"
        total_s, sync_s, summary = timed_sync(outputs, db)
        assert summary.inferred == args.count, summary.one_line()
        print(
            f"cold sync #{i + 1} (fresh index, inference on): {total_s:.2f} s total, "
            f"{sync_s:.2f} s in sync_roots, {1e3 * sync_s / args.count:.2f} ms per checkpoint"
        )
        total2_s, sync2_s, summary2 = timed_sync(outputs, db)
        assert summary2.unchanged == args.count and summary2.inferred == args.count, (
            summary2.one_line()
        )
        print(f"  re-sync, nothing changed: {total2_s:.2f} s total, {sync2_s:.2f} s in sync_roots")
        cold.append(sync_s)
        warm.append(sync2_s)
    print(f"  last cold: {summary.one_line()}")
    print(f"  last re-sync: {summary2.one_line()}")
    return cold, warm


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_fallback_sync_", dir=args.dir))
    try:
        source, wandb_run, train_s = train(work, args.wandb)
        outputs = work / "outputs"
        started = time.perf_counter()
        size = make_tree(outputs, source, wandb_run, args.count, args.per_run)
        tree_s = time.perf_counter() - started

        import lightning
        import torch

        import ckpt_index

        print(
            f"python {platform.python_version()}, torch {torch.__version__}, lightning "
            f"{lightning.__version__}, ckpt-index {ckpt_index.__version__}, {os.cpu_count()} CPUs"
        )
        print(
            f"trained one checkpoint in {train_s:.1f} s ({source.stat().st_size / 1024:.1f} KiB: "
            f"{source.name})"
        )
        print(
            f"tree: {args.count} copies in {(args.count + args.per_run - 1) // args.per_run} run "
            f"directories with .hydra/config.yaml{' and a W&B offline run' if wandb_run else ''}, "
            f"{size / 1e6:.1f} MB, built in {tree_s:.1f} s"
        )

        cold, warm = cold_and_warm_syncs(outputs, work, args)
        median = statistics.median(cold)
        print(
            f"cold sync median {median:.2f} s (min {min(cold):.2f}); re-sync median "
            f"{statistics.median(warm):.3f} s"
        )
        verdict = "PASS" if median <= TARGET_S else "FAIL"
        print(
            f"target: cold sync of {args.count} sidecar-less checkpoints <= {TARGET_S:.0f} s: "
            f"{verdict} (median {median:.2f} s)"
        )
        if args.keep:
            print(f"kept: {work}")
        return 0 if verdict == "PASS" else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
