"""Fuzzing the checkpoint reader: any bytes give a result or a CheckpointReadError, nothing else.

Inputs are mutations of real ``torch.save`` checkpoints (bit flips, truncations, splices of the
file, and the same applied to ``data.pkl`` inside a valid zip so the pickle parser is reached) and
random opcode streams. ``check_integrity`` must answer None or a one-line reason for the same bytes,
and ``infer_encoder`` must accept whatever shapes come out. The number of examples per test comes
from ``CKPT_INDEX_FUZZ_EXAMPLES`` (default 200; CI raises it). Every crash found is kept in
``tests/data/fuzz_checkpoint/`` and replayed by ``test_regression_cases``.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from ckpt_index.sources.checkpoint.reader import (  # noqa: E402
    _UNEXPECTED,
    CheckpointReadError,
    check_integrity,
    read_checkpoint,
)
from ckpt_index.sources.state_dict import infer_encoder  # noqa: E402

EXAMPLES = int(os.environ.get("CKPT_INDEX_FUZZ_EXAMPLES", "200"))
REGRESSIONS = Path(__file__).parent / "data" / "fuzz_checkpoint"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeds() -> dict[str, bytes]:
    """Small real checkpoints: torch.save of a Lightning-shaped dict, zip and legacy formats."""
    torch = pytest.importorskip("torch")
    import argparse
    import collections
    import pathlib

    checkpoint = {
        "epoch": 2,
        "global_step": 30,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": collections.OrderedDict(
            (f"model.encoder.layer1.{i}.conv1.weight", torch.randn(2, 2, 1, 1)) for i in range(3)
        ),
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                "param_groups": [{"lr": 1e-3, "params": [0, 1, 2]}],
            }
        ],
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "a.ckpt",
                "best_k_models": {"a.ckpt": torch.tensor(0.25)},
                "current_score": torch.tensor(0.3),
            }
        },
        "hyper_parameters": {
            "lr": 0.1,
            "root": pathlib.PosixPath("/data"),
            "ns": argparse.Namespace(k=1),
            "sizes": (640, 640),
            "tags": {"a", "b"},
        },
    }
    seeds = {}
    for name, kwargs in {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}.items():
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer, **kwargs)
        seeds[name] = buffer.getvalue()
    return seeds


SEEDS = _seeds()
with zipfile.ZipFile(io.BytesIO(SEEDS["zip"])) as _archive:
    _PICKLE_NAME = next(n for n in _archive.namelist() if n.endswith("/data.pkl"))
    _MEMBERS = {info.filename: _archive.read(info) for info in _archive.infolist()}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-ckpt-") as name:
        yield Path(name)


def check(data: bytes, path: Path) -> None:
    """The property: a result or a one-line CheckpointReadError; integrity None or one line."""
    path.write_bytes(data)
    try:
        contents = read_checkpoint(path)
    except CheckpointReadError as exc:
        assert exc.reason and "\n" not in exc.reason
        assert not exc.reason.startswith(_UNEXPECTED), exc.reason  # the catch-all hides a bug
    else:
        infer_encoder(contents.state_dict_shapes)
        assert all(isinstance(name, str) for name in contents.unsafe_globals)
        assert contents.epoch is None or 0 <= contents.epoch < 2**63
    reason = check_integrity(path)
    assert reason is None or (isinstance(reason, str) and "\n" not in reason)


def with_pickle(data_pkl: bytes) -> bytes:
    """The zip seed with its data.pkl replaced (valid CRCs, so the pickle is what gets parsed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, member in _MEMBERS.items():
            archive.writestr(name, data_pkl if name == _PICKLE_NAME else member)
    return buffer.getvalue()


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["flip", "truncate", "delete", "duplicate", "insert", "overwrite"])
        )
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            chunk = data[at : at + draw(st.integers(1, 256))]
            data[at:at] = chunk * draw(st.integers(1, 8))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            value = draw(
                st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", b"(", b"\x85" * 8])
            )
            data[at : at + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_mutated_files(seed: str, workdir: Path) -> None:
    @FUZZ
    @given(mutated(SEEDS[seed]))
    def run(data: bytes) -> None:
        check(data, workdir / f"{seed}.ckpt")

    run()


def test_mutated_pickles_in_valid_zips(workdir: Path) -> None:
    @FUZZ
    @given(mutated(_MEMBERS[_PICKLE_NAME]))
    def run(data_pkl: bytes) -> None:
        check(with_pickle(data_pkl), workdir / "pickle.ckpt")

    run()


_OPCODES = [op for op in pickletools.opcodes if op.proto <= pickle.HIGHEST_PROTOCOL]


@st.composite
def opcode_stream(draw: st.DrawFn) -> bytes:
    """A random sequence of valid opcodes with plausible arguments."""
    out = bytearray(b"\x80\x02")
    for _ in range(draw(st.integers(0, 60))):
        op = draw(st.sampled_from(_OPCODES))
        out += op.code.encode("latin-1")
        arg = op.arg
        if arg is None:
            continue
        if arg.n > 0:
            out += draw(st.binary(min_size=arg.n, max_size=arg.n))
        elif arg.n == pickletools.UP_TO_NEWLINE:
            out += (
                draw(st.sampled_from([b"0", b"1", b"12", b"-3", b"'a'", b"7L", b"1.5", b"x"]))
                + b"\n"
            )
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT1:
            payload = draw(st.binary(max_size=20))
            out += bytes([len(payload)]) + payload
        elif arg.n in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
            payload = draw(st.binary(max_size=20))
            out += len(payload).to_bytes(4, "little") + payload
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT8U:
            payload = draw(st.binary(max_size=20))
            out += len(payload).to_bytes(8, "little") + payload
        else:  # GLOBAL and INST: two lines
            out += draw(
                st.sampled_from(
                    [
                        b"collections\nOrderedDict\n",
                        b"os\nsystem\n",
                        b"builtins\nset\n",
                        b"torch._utils\n_rebuild_tensor_v2\n",
                        b"numpy\ndtype\n",
                    ]
                )
            )
    if draw(st.booleans()):
        out += b"."
    return bytes(out)


def test_random_opcode_streams(workdir: Path) -> None:
    @FUZZ
    @given(opcode_stream())
    def run(data_pkl: bytes) -> None:
        check(with_pickle(data_pkl), workdir / "opcodes.ckpt")

    run()


def _regression_files() -> list[Path]:
    return sorted(p for p in REGRESSIONS.glob("*") if p.is_file() and p.suffix in (".ckpt", ".pkl"))


@pytest.mark.parametrize("case", _regression_files(), ids=lambda p: p.name)
def test_regression_cases(case: Path, workdir: Path) -> None:
    """Inputs the fuzzer once crashed on: a ``.ckpt`` is read as is, a ``.pkl`` as data.pkl."""
    data = case.read_bytes()
    check(with_pickle(data) if case.suffix == ".pkl" else data, workdir / "regression.ckpt")
