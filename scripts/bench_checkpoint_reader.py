#!/usr/bin/env python
"""Benchmark the safe checkpoint reader against ``torch.load`` on a checkpoint of over 1 GB.

Writes a Lightning-shaped checkpoint (epoch, global_step, hyper_parameters, a ModelCheckpoint
callback state with scalar-tensor scores, optimizer param groups, and a state dict of ~1.1 GB of
float32 tensors laid out like a wide ResNet) with ``torch.save`` into a temporary directory, then
measures in one run:

- ``read_checkpoint``: one cold-ish first read (the file's pages dropped from the page cache with
  ``posix_fadvise(DONTNEED)`` first), then the median of 5 reads after a warm-up; bytes read;
- ``torch.load(path, weights_only=False)`` and ``torch.load(path, mmap=True, weights_only=False)``
  (median of ``--repeat``, page cache warm) and their ratios to the reader.

The file is deleted at the end unless ``--keep``. Target: metadata of a >= 1 GB checkpoint read in
<= 20 ms.

``--many-tensors N`` also writes a checkpoint of N tiny parameters with their Adam state (the
pickle, not the weights, is then what costs) and reports ``read_checkpoint`` and the share of it
spent in ``scan_pickle``'s pre-pass (CPU time, best of 3). A Lightning checkpoint of 100k tensors
is about the largest the reader's object limits are sized for.

    python scripts/bench_checkpoint_reader.py
    python scripts/bench_checkpoint_reader.py --size-gb 2 --dir /scratch
    python scripts/bench_checkpoint_reader.py --many-tensors 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_MS = 20.0


def make_checkpoint(size_gb: float) -> dict[str, Any]:
    import torch

    channels = 1024
    conv_bytes = channels * channels * 3 * 3 * 4
    blocks = max(1, round(size_gb * 1e9 / conv_bytes))
    state_dict: dict[str, Any] = {"model.stem.weight": torch.randn(channels, 3, 7, 7)}
    for i in range(blocks):
        prefix = f"model.encoder.layer{i // 8 + 1}.{i % 8}"
        state_dict[f"{prefix}.conv.weight"] = torch.empty(channels, channels, 3, 3).uniform_()
        for name in ("weight", "bias", "running_mean", "running_var"):
            state_dict[f"{prefix}.bn.{name}"] = torch.rand(channels)
        state_dict[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(1234)
    state_dict["model.head.weight"] = torch.randn(2, channels)
    key = (
        "ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max', 'every_n_train_steps': 0, "
        "'every_n_epochs': 1, 'train_time_interval': None}"
    )
    paths = [f"outputs/run/checkpoints/epoch-{e:02d}_step-{e * 205:06d}.ckpt" for e in (17, 18, 19)]
    return {
        "epoch": 19,
        "global_step": 4100,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 20, "completed": 19}}}},
        "callbacks": {
            key: {
                "monitor": "val/hmean",
                "best_model_score": torch.tensor(0.8431),
                "best_model_path": paths[1],
                "current_score": torch.tensor(0.8402),
                "dirpath": "outputs/run/checkpoints",
                "best_k_models": {
                    p: torch.tensor(s) for p, s in zip(paths, (0.8399, 0.8431, 0.8402), strict=True)
                },
                "kth_best_model_path": paths[0],
                "kth_value": torch.tensor(0.8399),
                "last_model_path": "outputs/run/checkpoints/last.ckpt",
            }
        },
        "optimizer_states": [
            {"state": {}, "param_groups": [{"lr": 1e-3, "params": list(range(len(state_dict)))}]}
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "architecture_name": "dbnet",
            "encoder": {"model_name": "resnet50", "pretrained": True, "frozen": False},
            "decoder": {
                "name": "unet",
                "in_channels": [256, 512, 1024, 2048],
                "inner_channels": 256,
            },
            "head": {"name": "db_head", "in_channels": 256, "params": {"k": 50}},
            "loss": {"name": "db_loss", "params": {"negative_ratio": 3.0}},
        },
        "cleval_metrics": {"precision": 0.854, "recall": 0.832, "hmean": 0.843},
    }


def many_tensors_checkpoint(n: int) -> dict[str, Any]:
    import torch

    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(n)]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    for param in params:
        param.grad = torch.ones(2)
    optimizer.step()
    return {
        "epoch": 3,
        "global_step": 100,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {
            f"model.block{i // 100}.layer{i % 100}.weight": p.data for i, p in enumerate(params)
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 1e-3},
    }


def bench_many_tensors(n: int, workdir: Path) -> None:
    import zipfile

    import torch

    from ckpt_index.sources.checkpoint.reader import read_checkpoint
    from ckpt_index.sources.checkpoint.unpickler import scan_pickle

    path = workdir / f"many-{n}.ckpt"
    try:
        torch.save(many_tensors_checkpoint(n), path)
        with zipfile.ZipFile(path) as archive:
            data = archive.read(
                next(name for name in archive.namelist() if name.endswith("/data.pkl"))
            )

        def cpu(func: Callable[[], Any]) -> float:
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                func()
                best = min(best, time.process_time() - start)
            return best

        read_s, scan_s = cpu(lambda: read_checkpoint(path)), cpu(lambda: scan_pickle(data))
        print(
            f"\n{n} tensors with Adam state: data.pkl {len(data) / 1e6:.1f} MB; read_checkpoint "
            f"{read_s:.2f} s CPU, of which scan_pickle {scan_s:.2f} s (best of 3)"
        )
    finally:
        path.unlink(missing_ok=True)


def drop_from_page_cache(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def timed(func: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return times, result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.1, help="state dict size (default 1.1)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoint")
    parser.add_argument("--repeat", type=int, default=3, help="torch.load repetitions (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    parser.add_argument(
        "--many-tensors",
        type=int,
        default=0,
        metavar="N",
        help="also time a checkpoint of N tiny tensors with Adam state",
    )
    return parser


def write_checkpoint(size_gb: float, path: Path) -> int:
    """Write the checkpoint with ``torch.save``, print what it is; returns its size in bytes."""
    import torch

    start = time.perf_counter()
    checkpoint = make_checkpoint(size_gb)
    torch.save(checkpoint, path)
    n_tensors = len(checkpoint["state_dict"])
    del checkpoint
    write_s = time.perf_counter() - start
    size = path.stat().st_size
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"checkpoint: {path}")
    print(
        f"  size {size / 1e9:.3f} GB ({size} bytes), {n_tensors} state_dict tensors, "
        f"written in {write_s:.1f} s"
    )
    return size


def time_reader(path: Path, size: int) -> tuple[float, float]:
    """Time read_checkpoint, first read and warm; returns (warm median, first read) in ms."""
    from ckpt_index.sources.checkpoint.reader import read_checkpoint

    dropped = drop_from_page_cache(path)
    cold_times, _ = timed(lambda: read_checkpoint(path), 1)
    timed(lambda: read_checkpoint(path), 1)  # warm-up
    warm_times, contents = timed(lambda: read_checkpoint(path), 5)
    reader_ms = statistics.median(warm_times) * 1e3
    callback = contents.checkpoint_callbacks[0]
    print("\nread_checkpoint (no torch involved):")
    print(
        "  first read, "
        f"{'file dropped from page cache' if dropped else 'page cache not dropped'}: "
        f"{cold_times[0] * 1e3:.2f} ms"
    )
    print(
        f"  warm: median {reader_ms:.2f} ms of 5 (min {min(warm_times) * 1e3:.2f}, "
        f"max {max(warm_times) * 1e3:.2f})"
    )
    print(
        f"  bytes read: {contents.bytes_read} ({contents.bytes_read / size * 100:.5f}% of the file)"
    )
    print(
        f"  epoch {contents.epoch}, global_step {contents.global_step}, "
        f"encoder {contents.hyper_parameters['encoder']['model_name']}, "
        f"{callback['monitor']} current {callback['current_score']:.4f} "
        f"best {callback['best_model_score']:.4f}, "
        f"{len(contents.state_dict_shapes)} shapes"
    )
    return reader_ms, cold_times[0] * 1e3


def time_torch_load(path: Path, repeat: int, reader_ms: float) -> None:
    """torch.load of the whole file, with and without mmap, beside the reader."""
    import torch

    load_times, _ = timed(lambda: torch.load(path, weights_only=False), repeat)
    mmap_times, _ = timed(lambda: torch.load(path, mmap=True, weights_only=False), repeat)
    load_ms = statistics.median(load_times) * 1e3
    mmap_ms = statistics.median(mmap_times) * 1e3
    print(
        "\ntorch.load(weights_only=False):            "
        f"median {load_ms:9.1f} ms of {repeat} "
        f"-> {load_ms / reader_ms:8.0f}x the reader"
    )
    print(
        f"torch.load(mmap=True, weights_only=False): median {mmap_ms:9.1f} ms of {repeat} "
        f"-> {mmap_ms / reader_ms:8.0f}x the reader"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    path = workdir / "epoch-19_step-004100.ckpt"
    try:
        size = write_checkpoint(args.size_gb, path)
        reader_ms, first_ms = time_reader(path, size)
        time_torch_load(path, args.repeat, reader_ms)
        if args.many_tensors:
            bench_many_tensors(args.many_tensors, workdir)

        verdict = "PASS" if size >= 1e9 and reader_ms <= TARGET_MS else "FAIL"
        print(
            f"\ntarget: metadata of a >= 1 GB checkpoint in <= {TARGET_MS:.0f} ms: {verdict} "
            f"({reader_ms:.2f} ms warm median, {first_ms:.2f} ms first read, "
            f"{size / 1e9:.2f} GB)"
        )
        return 0 if verdict == "PASS" else 1
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            path.unlink(missing_ok=True)
            workdir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
