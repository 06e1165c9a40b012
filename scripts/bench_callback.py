#!/usr/bin/env python
"""How much time MetadataCallback adds to each checkpoint save (target: median <= 5 ms).

Trains a tiny model on the CPU with a ModelCheckpoint saving every step and measures, per save:

- Lightning's own save (``ModelCheckpoint._save_checkpoint``), for scale;
- what the callback adds on the training thread (build the metadata, write the sidecar, queue the
  index row): this is what training waits for;
- the index upsert on the background writer thread (per batch and per checkpoint);
- "sidecar + upsert" with the upsert made synchronously on the training thread, as a callback
  without the background writer would;
- the whole fit with and without the callback.

Example::

    python scripts/bench_callback.py --saves 200
    python scripts/bench_callback.py --saves 500 --top-k 5 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any


def _quiet() -> None:
    warnings.simplefilter("ignore")
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "alembic",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "n": len(values),
        "median_ms": statistics.median(values) * 1e3,
        "p95_ms": p95 * 1e3,
        "max_ms": ordered[-1] * 1e3,
        "mean_ms": statistics.fmean(values) * 1e3,
    }


def model_class() -> type:
    """A tiny LightningModule logging the metrics a sidecar records, every step."""
    import lightning.pytorch as pl
    import torch
    from torch import nn

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(
                {"architecture_name": "dbnet", "encoder": {"model_name": "resnet18"}}
            )
            self.layer = nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            self.log_dict(
                {
                    "train/loss": loss,
                    "val/hmean": torch.rand(()),
                    "val/precision": torch.rand(()),
                    "val/recall": torch.rand(()),
                    "val/loss": loss,
                }
            )
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Model


def timed_checkpoint_class() -> type:
    """A ModelCheckpoint that times Lightning's own save, for scale."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class TimedCheckpoint(ModelCheckpoint):
        lightning_save: list[float] = []

        def _save_checkpoint(self, trainer, filepath):
            started = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            self.lightning_save.append(time.perf_counter() - started)

    return TimedCheckpoint


def timed_callback_class(mode: str) -> type:
    """A MetadataCallback timing what it adds on the training thread; ``synchronous`` mode
    applies each index write at once instead of on the background thread."""
    from ckpt_index.lightning import MetadataCallback
    from ckpt_index.lightning._index_writer import IndexWriter

    class SynchronousWriter(IndexWriter):
        def submit(self, op):
            self._apply([op])

        def close(self, timeout=None):
            if self._engine is not None:
                self._engine.dispose()
            return True

    class TimedCallback(MetadataCallback):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.added: list[float] = []
            self.added_cpu: list[float] = []
            self.writers: list[IndexWriter] = []

        def _after_save(self, trainer, callback, filepath):
            started, cpu = time.perf_counter(), time.thread_time()
            super()._after_save(trainer, callback, filepath)
            self.added.append(time.perf_counter() - started)
            self.added_cpu.append(time.thread_time() - cpu)

        def _after_remove(self, filepath):
            started, cpu = time.perf_counter(), time.thread_time()
            super()._after_remove(filepath)
            # Charged to the save that pushed the checkpoint out of the top k.
            self.added[-1] += time.perf_counter() - started
            self.added_cpu[-1] += time.thread_time() - cpu

        def _index(self):
            if self._writer is None:
                cls = SynchronousWriter if mode == "synchronous" else IndexWriter
                self._writer = cls(
                    self.db, busy_timeout=self.busy_timeout, report=self._failures.report
                )
                self.writers.append(self._writer)
            return self._writer

    return TimedCallback


def run(saves: int, top_k: int, root: Path, mode: str) -> dict[str, Any]:
    """One fit; ``mode`` is ``none`` (no callback), ``background`` (default) or ``synchronous``."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(
        TensorDataset(torch.randn(saves * 4, 16), torch.randn(saves * 4, 1)), batch_size=4
    )
    checkpoint = timed_checkpoint_class()(
        dirpath=root / mode / "checkpoints",
        monitor="val/hmean",
        mode="max",
        save_top_k=top_k,
        every_n_train_steps=1,
        save_last=True,
    )
    checkpoint.lightning_save = []
    callbacks: list[Any] = [checkpoint]
    meta = None
    if mode != "none":
        meta = timed_callback_class(mode)(db=root / f"{mode}.db")
        callbacks.append(meta)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=saves,
        limit_val_batches=0,
        logger=False,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
    )
    started = time.perf_counter()
    trainer.fit(model_class()(), data)
    result: dict[str, Any] = {
        "fit_s": time.perf_counter() - started,
        "lightning_save": _ms(checkpoint.lightning_save),
    }
    if meta is not None:
        result.update(callback_figures(meta, mode))
    return result


def callback_figures(meta: Any, mode: str) -> dict[str, Any]:
    """What the callback cost: on the training thread, and in the index writer's batches."""
    result: dict[str, Any] = {}
    result["callback_on_training_thread"] = _ms(meta.added[1:])
    result["callback_cpu_on_training_thread"] = _ms(meta.added_cpu[1:])
    result["first_save_ms"] = meta.added[0] * 1e3 if meta.added else None
    batches = [s for w in meta.writers for s in w.batch_seconds]
    applied = sum(w.applied for w in meta.writers)
    if mode == "background":
        result["background_batches"] = _ms(batches)
        result["background_ops"] = applied
        result["background_per_op_ms"] = (sum(batches) / applied * 1e3) if applied else None
    else:
        result["upsert_synchronous"] = _ms(batches[1:])
    result["failures"] = meta._failures.count
    return result


def print_report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """The figures as a table (``--json`` prints ``summary`` instead)."""
    figures = summary["runs"]
    background, synchronous = figures["background"], figures["synchronous"]
    added = summary["median_added_per_save_ms"]
    sync_total = summary["median_sidecar_plus_synchronous_upsert_ms"]

    def line(label: str, stats: dict[str, Any]) -> None:
        if stats.get("n"):
            print(
                f"  {label:<46} median {stats['median_ms']:7.2f} ms"
                f"   p95 {stats['p95_ms']:7.2f} ms"
                f"   max {stats['max_ms']:7.2f} ms   (n={stats['n']})"
            )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"MetadataCallback overhead: {args.saves} saves, save_top_k={args.top_k}, "
        "save_last=True, CPU; "
        f"{os.cpu_count()} cores, load average {load:.1f}"
    )
    line("Lightning's own save (for scale)", background["lightning_save"])
    line("added on the training thread (default)", background["callback_on_training_thread"])
    line(
        "  CPU time of it (excludes waiting on I/O)",
        background["callback_cpu_on_training_thread"],
    )
    line("index upsert, background thread, per batch", background["background_batches"])
    if background.get("background_per_op_ms") is not None:
        print(
            f"  {'index upsert, background thread, per checkpoint':<46} mean   "
            f"{background['background_per_op_ms']:7.2f} ms"
            f"   ({background['background_ops']} ops in "
            f"{background['background_batches']['n']} batches)"
        )
    line("sidecar + synchronous upsert (no thread)", synchronous["callback_on_training_thread"])
    line("  of which the upsert transaction", synchronous["upsert_synchronous"])
    print(
        "  first save (opens the index; background: off-thread)   "
        f"{background['first_save_ms']:.1f} ms"
        f" / synchronous {synchronous['first_save_ms']:.1f} ms"
    )
    print(
        f"  fit wall time: without callback {figures['none']['fit_s']:.2f} s, with "
        f"{background['fit_s']:.2f} s (background), {synchronous['fit_s']:.2f} s (synchronous)"
    )
    verdict = "within" if summary["within_target"] else "OVER"
    print(
        f"median added per save {added:.2f} ms; sidecar + upsert {sync_total:.2f} ms: "
        f"{verdict} the {args.target_ms:g} ms target"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--saves", type=int, default=200, help="checkpoint saves per fit (one per step)"
    )
    parser.add_argument(
        "--top-k", type=int, default=3, help="ModelCheckpoint save_top_k (deletions count too)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--target-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    _quiet()
    with tempfile.TemporaryDirectory(prefix="bench_callback_") as tmp:
        root = Path(tmp)
        run(10, args.top_k, root / "warmup", "background")  # imports, first-use costs
        figures = {
            mode: run(args.saves, args.top_k, root, mode)
            for mode in ("none", "background", "synchronous")
        }
    background, synchronous = figures["background"], figures["synchronous"]
    added = background["callback_on_training_thread"]["median_ms"]
    sync_total = synchronous["callback_on_training_thread"]["median_ms"]
    summary = {
        "saves": args.saves,
        "save_top_k": args.top_k,
        "median_added_per_save_ms": added,
        "median_sidecar_plus_synchronous_upsert_ms": sync_total,
        "target_ms": args.target_ms,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "within_target": added <= args.target_ms and sync_total <= args.target_ms,
        "runs": figures,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(args, summary)
    return 0 if summary["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
