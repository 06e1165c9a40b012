"""Hostile checkpoints from issue 8, each read in a child process under bounds of time and memory.

Every case is a small file that used to crash, hang, or cost minutes or gigabytes. A child reads it
with ``read_checkpoint`` (and ``infer_encoder`` on what it found) and must exit 0 with either a
:class:`CheckpointReadError` reason or a result, within generous bounds of wall time and peak RSS,
and never die of a signal. The bounds are far above what the fixed reader needs (milliseconds and
~60 MB) and far below what the unfixed one took (minutes, gigabytes, SIGSEGV, forever).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WALL_LIMIT_S = 20.0
RSS_LIMIT_MB = 600
#: A child that escapes the reader's limits must not take the machine down with it.
CHILD_ADDRESS_SPACE = 3 << 30


def _zip(
    path: Path,
    data_pkl: bytes | Callable[[zipfile.ZipFile], None],
    *,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        if callable(data_pkl):
            data_pkl(archive)
        else:
            archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little", zipfile.ZIP_STORED)
    return path


def deep_tuple_key(path: Path) -> Path:
    """A dict whose key is a tuple nested a million deep: hashing it recursed in C (SIGSEGV)."""
    data = b"\x80\x02}N" + b"\x85" * 1_000_000 + b"Ns."
    return _zip(path, data, compression=zipfile.ZIP_BZIP2)


def deep_tuple_in_frozenset(path: Path) -> Path:
    """The same deep tuple as an element of a frozenset (FROZENSET hashes its elements)."""
    data = b"\x80\x04}" + b"\x8c\x01a" + b"(N" + b"\x85" * 1_000_000 + b"\x91" + b"s."
    return _zip(path, data, compression=zipfile.ZIP_BZIP2)


def deep_tuple_in_ordered_dict(path: Path) -> Path:
    """A deep tuple as a key handed to the OrderedDict stand-in, which builds a dict of the
    pairs."""
    deep = b"N" + b"\x85" * 1_000_000
    data = (
        b"\x80\x02}X\x01\x00\x00\x00a" + b"ccollections\nOrderedDict\n" + b"(((" + deep + b"NtltRs."
    )
    return _zip(path, data, compression=zipfile.ZIP_BZIP2)


def empty_list_bomb(path: Path) -> Path:
    """256 MiB of EMPTY_LIST opcodes in a bzip2 ``data.pkl`` of a few hundred bytes (10.7 GB
    of lists)."""
    chunk = b"]" * (16 << 20)

    def write(archive: zipfile.ZipFile) -> None:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
            member.write(b"\x80\x02")
            for _ in range(15):
                member.write(chunk)
            member.write(chunk[:-16] + b".")  # just under the old 256 MiB cap on data.pkl

    return _zip(path, write, compression=zipfile.ZIP_BZIP2)


def empty_list_stored(path: Path) -> Path:
    """7 million EMPTY_LIST opcodes stored uncompressed (7 MB): past the container count."""
    return _zip(path, b"\x80\x02" + b"]" * 7_000_000 + b".")


def numpy_huge_shape(path: Path) -> Path:
    """A numpy ``_reconstruct`` state whose shape is a million huge dims (products of bigints)."""
    dtype = (
        b"cnumpy\ndtype\nq\x01X\x02\x00\x00\x00f8q\x02\x89\x88\x87q\x03Rq\x04"
        b"(K\x03X\x01\x00\x00\x00<q\x05NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x06b"
    )
    huge = b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7fq\x07"  # 2**63 - 1, memoized
    shape = b"(" + huge + b"h\x07" * 1_000_000 + b"t"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x08cnumpy\nndarray\nq\tK\x00\x85C\x01b\x87R"
        b"(K\x01" + shape + dtype + b"\x89C\x00tb"
    )
    data = b"\x80\x02}X\x10\x00\x00\x00hyper_parameters}X\x01\x00\x00\x00a" + array + b"ss."
    return _zip(path, data, compression=zipfile.ZIP_BZIP2)


def resnet_probe_keys(path: Path) -> Path:
    """A state dict of 20k keys, 10k prefixes each looking like the start of a ResNet."""
    import torch

    weight = torch.zeros(1)
    keys = {}
    for i in range(10_000):
        keys[f"m{i}.layer1.0.conv1.weight"] = weight
        keys[f"m{i}.conv1.weight"] = weight
    torch.save({"state_dict": keys, "epoch": 1}, path)
    return path


def fifo(path: Path) -> Path:
    """A FIFO named like a checkpoint: opening it for reading used to wait for a writer forever."""
    os.mkfifo(path)
    return path


def huge_epoch(path: Path) -> Path:
    """``epoch`` and ``global_step`` of 2**64: must come out as None (flagged), not crash a row."""
    return _zip(path, pickle.dumps({"epoch": 2**64, "global_step": -(2**70), "state_dict": {}}, 2))


def truncated_zip(path: Path) -> Path:
    """A real torch.save checkpoint cut in half (an interrupted copy; Lightning #688)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"epoch": 3, "state_dict": {"w": torch.randn(64, 64)}}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def zip_without_data_pkl(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/data/0", b"\x00" * 16)
    return path


#: name -> (builder, what the child must report: "error" (a CheckpointReadError) or "result").
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "deep_tuple_key": (deep_tuple_key, "error"),
    "deep_tuple_in_frozenset": (deep_tuple_in_frozenset, "error"),
    "deep_tuple_in_ordered_dict": (deep_tuple_in_ordered_dict, "error"),
    "empty_list_bomb": (empty_list_bomb, "error"),
    "empty_list_stored": (empty_list_stored, "error"),
    "numpy_huge_shape": (numpy_huge_shape, "any"),
    "resnet_probe_keys": (resnet_probe_keys, "result"),
    "fifo": (fifo, "error"),
    "huge_epoch": (huge_epoch, "result"),
    "truncated_zip": (truncated_zip, "error"),
    "zip_without_data_pkl": (zip_without_data_pkl, "error"),
}

CHILD = """
import json, sys
from ckpt_index.sources.checkpoint.reader import CheckpointReadError, read_checkpoint
from ckpt_index.sources.state_dict import infer_encoder
try:
    contents = read_checkpoint(sys.argv[1])
except CheckpointReadError as exc:
    print(json.dumps({"error": exc.reason}))
else:
    print(json.dumps({"epoch": contents.epoch, "global_step": contents.global_step,
                      "encoder": infer_encoder(contents.state_dict_shapes),
                      "hyper_parameters": repr(contents.hyper_parameters)[:200],
                      "warnings": contents.warnings}))
"""


def run_child(path: Path, timeout: float = WALL_LIMIT_S * 3) -> dict[str, object]:
    """Read ``path`` in a child; its exit status, wall time, peak RSS (MB) and output."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))

    env = dict(os.environ, PYTHONPATH=os.environ.get("CKPT_INDEX_REPO", str(REPO)))
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=limit,
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        # wait4, not RUSAGE_CHILDREN: that is the maximum over every child this process ever had.
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = 0  # reaped by wait4 already
    wall = time.monotonic() - start
    return {
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "wall_s": wall,
        "rss_mb": usage.ru_maxrss / 1024,
        "output": json.loads(out) if out.strip() else None,
        "stderr": err.decode(errors="replace")[-2000:],
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {name: builder(root / f"{name}.ckpt") for name, (builder, _) in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_contained(name: str, built: dict[str, Path]) -> None:
    result = run_child(built[name])
    assert result["signal"] is None, (
        f"child died of {signal.Signals(result['signal']).name}: {result}"
    )
    assert result["exit"] == 0, result["stderr"]
    assert result["wall_s"] < WALL_LIMIT_S, result
    assert result["rss_mb"] < RSS_LIMIT_MB, result
    output = result["output"]
    assert isinstance(output, dict)
    expected = CASES[name][1]
    if expected == "error":
        assert "error" in output and output["error"] and "\n" not in output["error"], output
    elif expected == "result":
        assert "error" not in output, output


def test_deep_tuple_key_names_the_nesting(built: dict[str, Path]) -> None:
    assert "nested" in run_child(built["deep_tuple_key"])["output"]["error"]  # type: ignore[index]


def test_empty_list_bombs_are_refused_before_unpickling(built: dict[str, Path]) -> None:
    assert "compression bomb" in run_child(built["empty_list_bomb"])["output"]["error"]  # type: ignore[index]
    assert "containers" in run_child(built["empty_list_stored"])["output"]["error"]  # type: ignore[index]


def test_huge_epoch_comes_out_as_none_with_a_warning(built: dict[str, Path]) -> None:
    output = run_child(built["huge_epoch"])["output"]
    assert output["epoch"] is None and output["global_step"] is None  # type: ignore[index]
    assert any("epoch" in w for w in output["warnings"])  # type: ignore[index]


def test_fifo_is_refused_without_blocking(built: dict[str, Path]) -> None:
    assert "FIFO" in run_child(built["fifo"])["output"]["error"]  # type: ignore[index]


def test_numpy_huge_shape_is_not_converted(built: dict[str, Path]) -> None:
    output = run_child(built["numpy_huge_shape"])["output"]
    assert "error" in output or "_reconstruct" in output["hyper_parameters"]  # type: ignore[index]


if __name__ == "__main__":  # measure every case: python tests/test_hostile_pickles.py [dir]
    import tempfile

    root = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="hostile-"))
    for case, (builder, _) in CASES.items():
        file = root / f"{case}.ckpt"
        if not os.path.lexists(file):
            builder(file)
        size = os.lstat(file).st_size
        r = run_child(file, timeout=float(os.environ.get("HOSTILE_TIMEOUT", 60)))
        summary = (
            json.dumps(r["output"])[:150] if r["output"] else r["stderr"].strip().splitlines()[-1:]
        )
        print(
            f"{case:28} {size:>9} B  {r['wall_s']:7.2f} s  {r['rss_mb']:7.0f} MB  "
            f"signal={r['signal']} exit={r['exit']}  {summary}"
        )
