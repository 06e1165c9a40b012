"""The safe checkpoint reader: metadata of a checkpoint without running its pickle.

Malicious pickles never run and never import what they name; real Lightning checkpoints read the
same as ``torch.load``; malformed files fail with a one-line reason; only the pickle is read.
"""

from __future__ import annotations

import argparse
import collections
import enum
import io
import json
import os
import pathlib
import pickle
import posix
import random
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from helpers.pickles import PAYLOAD_NAMES, Call, Global, dumps, payloads

from ckpt_index.sources.checkpoint.reader import (
    CheckpointReadError,
    Placeholder,
    TensorDescriptor,
    read_checkpoint,
    to_plain,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Writing checkpoint archives (pickles naming arbitrary globals: helpers.pickles)


def zip_checkpoint(
    path: Path,
    data_pkl: bytes,
    *,
    prefix: str = "archive",
    byteorder: bytes = b"little",
    members: dict[str, bytes] | None = None,
) -> Path:
    """A torch-style zip: ``<prefix>/data.pkl`` plus ``members`` under the prefix."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for name, data in (members or {}).items():
            archive.writestr(f"{prefix}/{name}", data)
    return path


def rewrite_zip(
    src: Path, dst: Path, *, prefix: str | None = None, replace: dict[str, bytes] | None = None
) -> Path:
    """Copy a zip, renaming its top-level directory and replacing member bytes (``replace`` keys
    are paths below the prefix)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            top, _, rest = info.filename.partition("/")
            data = (replace or {}).get(rest, old.read(info))
            new.writestr(f"{prefix or top}/{rest}", data)
    return dst


def expect_unreadable(path: Path, *fragments: str) -> CheckpointReadError:
    with pytest.raises(CheckpointReadError) as caught:
        read_checkpoint(path)
    error = caught.value
    assert error.path == path
    assert "\n" not in error.reason
    assert str(error) == f"{path}: {error.reason}"
    for fragment in fragments:
        assert fragment in error.reason
    return error


# ---------------------------------------------------------------------------------------------
# Malicious checkpoints


def _wait_for(canary: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if canary.exists():
            return True
        time.sleep(0.05)
    return canary.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_stock_unpickler_would_run_the_payload(name: str, tmp_path: Path) -> None:
    # The control: these payloads are live, so the canary tests below prove something.
    canary = tmp_path / "canary"
    data = tmp_path / "payload.pkl"
    data.write_bytes(dumps(payloads(canary)[name]))
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", data],
        capture_output=True,
        timeout=60,
    )
    if name != "NEWOBJ and BUILD":  # os.system.__new__ raises before BUILD: inert even for pickle
        assert _wait_for(canary, 5)


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payload_never_runs(name: str, protocol: int, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = payloads(canary)[name]
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "hyper_parameters": {"architecture_name": "dbnet", "evil": payload},
        "cleval_metrics": {"hmean": 0.5, "evil": payload},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max'}": {"monitor": payload}
        },
        "state_dict": {"w": payload},
    }
    path = zip_checkpoint(tmp_path / "evil.ckpt", dumps(checkpoint, protocol))
    try:
        contents = read_checkpoint(path)
    except CheckpointReadError as exc:
        assert "not a valid pickle" in exc.reason
    else:
        assert contents.epoch == 3 and contents.global_step == 120
        assert contents.hyper_parameters["architecture_name"] == "dbnet"
        assert isinstance(contents.raw["hyper_parameters"]["evil"], Placeholder)
        assert contents.cleval_metrics == {"hmean": 0.5}
        rendered = contents.hyper_parameters["evil"]
        assert isinstance(rendered, str) and rendered.startswith("<") and rendered.endswith(">")
    assert not _wait_for(canary, 0.3 if name == "subprocess.Popen" else 0)


@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "builtins.exec"])
def test_payload_renders_as_its_name(name: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = zip_checkpoint(
        tmp_path / "evil.ckpt", dumps({"hyper_parameters": {"x": payloads(canary)[name]}})
    )
    contents = read_checkpoint(path)
    assert contents.hyper_parameters == {"x": f"<{name}>"}
    placeholder = contents.raw["hyper_parameters"]["x"]
    assert (type(placeholder).module, type(placeholder).name) == tuple(name.split("."))
    assert placeholder.args and "canary" in str(placeholder.args[0])
    assert not canary.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payload_as_the_whole_pickle(name: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = zip_checkpoint(tmp_path / "evil.ckpt", dumps(payloads(canary)[name]))
    with pytest.raises(CheckpointReadError):
        read_checkpoint(path)
    assert not _wait_for(canary, 0.3 if name == "subprocess.Popen" else 0)


def _text_pickle(cmd: str, opcode: str) -> bytes:
    """Protocol 0/1 checkpoints whose value is built by INST or OBJ (no REDUCE involved)."""
    arg = f"S{cmd!r}\n"
    if opcode == "INST":
        call = f"({arg}ios\nsystem\n"
    else:
        call = f"(cos\nsystem\n{arg}o"
    return f"(dS'epoch'\nI7\nsS'hyper_parameters'\n{call}s.".encode()


@pytest.mark.parametrize("opcode", ["INST", "OBJ"])
def test_inst_and_obj_opcodes_build_placeholders(opcode: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    data = _text_pickle(f"touch {canary}", opcode)
    path = zip_checkpoint(tmp_path / "evil.ckpt", data)
    contents = read_checkpoint(path)
    assert contents.epoch == 7
    assert isinstance(contents.raw["hyper_parameters"], Placeholder)
    assert contents.raw["hyper_parameters"].args == (f"touch {canary}",)
    assert not canary.exists()


def test_extension_opcode_and_payload_persistent_ids_are_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    ext = zip_checkpoint(tmp_path / "ext.ckpt", b"\x80\x02\x82\x01.")
    expect_unreadable(ext, "not a valid pickle")
    weight = object()
    evil_id = ("storage", Call(posix.system, f"touch {canary}"), "0", "cpu", 1)
    pid = zip_checkpoint(
        tmp_path / "pid.ckpt",
        dumps({"state_dict": {"w": weight}}, persistent={id(weight): evil_id}),
    )
    expect_unreadable(pid, "not a valid pickle", "unsupported storage reference")
    text_pid = zip_checkpoint(tmp_path / "pid0.ckpt", b"(dS'w'\nPos.system\ns.")
    expect_unreadable(text_pid, "unsupported persistent id")
    assert not canary.exists()


@pytest.mark.parametrize(
    "target",
    [
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("_codecs", "encode"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("numpy.core.multiarray", "scalar"),
        ("copyreg", "_reconstructor"),
    ],
)
def test_allow_listed_globals_given_payloads_fall_back_to_placeholders(
    target: tuple[str, str], tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    evil = Call(posix.system, f"touch {canary}")
    call = Call(Global(*target), evil, evil, evil, evil)
    path = zip_checkpoint(tmp_path / "evil.ckpt", dumps({"hyper_parameters": {"x": call}}))
    contents = read_checkpoint(path)
    assert contents.hyper_parameters == {"x": f"<{'.'.join(target)}>"}
    assert not canary.exists()


def test_module_with_import_side_effect_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = tmp_path / "imported"
    module_dir = tmp_path / "modules"
    module_dir.mkdir()
    (module_dir / "evil_side_effect_mod.py").write_text(
        textwrap.dedent(f"""
        open({str(canary)!r}, "w").close()

        class Evil:
            def __setstate__(self, state):
                open({str(canary)!r} + ".setstate", "w").close()
    """)
    )
    monkeypatch.syspath_prepend(str(module_dir))
    evil_cls = Global("evil_side_effect_mod", "Evil")
    checkpoint = {
        "epoch": 1,
        "hyper_parameters": {"model": Call(evil_cls, newobj=True, state={"a": 1}), "cls": evil_cls},
        "callbacks": {evil_cls: {"x": 1}},
    }
    for protocol in (0, 2, 4):
        path = zip_checkpoint(tmp_path / f"evil{protocol}.ckpt", dumps(checkpoint, protocol))
        contents = read_checkpoint(path)
        assert contents.epoch == 1
        assert contents.hyper_parameters == {
            "model": "<evil_side_effect_mod.Evil>",
            "cls": "<evil_side_effect_mod.Evil>",
        }
        assert contents.raw["hyper_parameters"]["model"].state == {"a": 1}
    assert not canary.exists()
    assert not Path(f"{canary}.setstate").exists()
    assert "evil_side_effect_mod" not in sys.modules

    # Control: the stock unpickler imports it (in a child process, to keep this one clean).
    (tmp_path / "evil.pkl").write_bytes(dumps(checkpoint))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
            tmp_path / "evil.pkl",
        ],
        env={**os.environ, "PYTHONPATH": str(module_dir)},
        capture_output=True,
        timeout=60,
    )
    assert canary.exists()


def test_conversion_bombs_degrade_to_warnings(tmp_path: Path) -> None:
    shared: list[Any] = [1]
    for _ in range(40):  # a few hundred bytes of pickle, 2**40 nodes when expanded
        shared = [shared, shared]
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    path = zip_checkpoint(
        tmp_path / "bomb.ckpt",
        pickle.dumps(
            {
                "epoch": 2,
                "hyper_parameters": {"x": shared},
                "cleval_metrics": deep,
                "callbacks": {
                    "ModelCheckpoint{'monitor': 'm', 'mode': 'max'}": {"best_k_models": cyclic}
                },
            },
            protocol=2,
        ),
    )
    started = time.perf_counter()
    contents = read_checkpoint(path)
    assert time.perf_counter() - started < 10
    assert contents.epoch == 2
    assert contents.hyper_parameters is None and contents.cleval_metrics is None
    assert contents.checkpoint_callbacks == []
    assert len(contents.warnings) == 3
    assert "nodes" in contents.warnings[0] and "deeper" in contents.warnings[1]


@pytest.mark.parametrize(
    "put", [b"r" + (1 << 26).to_bytes(4, "little"), b"p67108864\n"], ids=["LONG_BINPUT", "PUT"]
)
def test_memo_index_bomb_is_refused_before_allocating(put: bytes, tmp_path: Path) -> None:
    # CPython's C unpickler would allocate and zero a 1 GiB memo for this 10-byte pickle.
    path = zip_checkpoint(tmp_path / "memo.ckpt", b"\x80\x02}" + put + b".")
    script = textwrap.dedent("""
        import resource, sys
        from ckpt_index.sources.checkpoint.reader import CheckpointReadError, read_checkpoint
        try:
            read_checkpoint(sys.argv[1])
        except CheckpointReadError as exc:
            print(exc.reason)
        # VmHWM, not ru_maxrss: with vfork the child's ru_maxrss starts at the parent's peak.
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
        print(int(hwm.split()[1]) // 1024)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    reason, peak_mb = result.stdout.splitlines()
    assert "memo index out of range" in reason
    assert int(peak_mb) < 200


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_scan_pickle_walks_every_opcode_of_real_pickles(protocol: int) -> None:
    from ckpt_index.sources.checkpoint.scan import scan_pickle

    shared: dict[str, Any] = {}
    obj = {
        "text": "line\nbreak 'quoted' \"double\"",
        "unicode": "ünïcødé \u2603",
        "bytes": b"\x00\n\xff",
        "bytearray": bytearray(b"\n\n"),
        "ints": [0, 255, 65535, -1, 2**31, 2**70, -(2**70)],
        "floats": [1.5, float("inf"), -0.0],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
        "none": None,
        "bools": [True, False],
        "set": {1, 2},
        "frozenset": frozenset({3}),
        "memo": [shared] * 3 + [{"k": i} for i in range(300)],  # > 256 memo entries: LONG_BINPUT
        "long": "x" * 70_000,
        "longbytes": b"y" * 70_000,
        "ordered": collections.OrderedDict(a=1),
        "path": pathlib.PurePosixPath("/a"),
        "complex": 1j,
    }
    data = pickle.dumps(obj, protocol)
    assert scan_pickle(data) == len(data)
    assert scan_pickle(data + data, len(data)) == 2 * len(data)
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        scan_pickle(data[:-1])


def test_scan_pickle_agrees_with_pickle_on_generated_data() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    from ckpt_index.sources.checkpoint.scan import scan_pickle

    atoms = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary()
    )
    values = st.recursive(
        atoms,
        lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner),
        max_leaves=30,
    )

    @hypothesis.settings(max_examples=100, deadline=None)
    @hypothesis.given(values, st.integers(0, pickle.HIGHEST_PROTOCOL))
    def check(value: Any, protocol: int) -> None:
        data = pickle.dumps(value, protocol)
        assert scan_pickle(data) == len(data)

    check()


# ---------------------------------------------------------------------------------------------
# Plain data from placeholders


class Color(enum.Enum):
    RED = 1


def test_to_plain_of_pure_data_globals(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    hparams = {
        "root": pathlib.PurePosixPath("/data/ocr"),
        "rel": pathlib.PurePosixPath("a/b"),
        "win": pathlib.PureWindowsPath("C:/data/x"),
        "args": argparse.Namespace(lr=0.1, name="dbnet"),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "default": collections.defaultdict(list, {"k": [1]}),
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "complex": 1 + 2j,
        "bytes": b"\x00\xff",
        "empty": b"",
        "f8": np.float64(0.25),
        "f4": np.float32(0.5),
        "i8": np.int64(-3),
        "u1": np.uint8(200),
        "b1": np.bool_(True),
        "f8be": np.dtype(">f8").type(1.5),
        "f2": np.float16(0.75),
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "scalar_array": np.array(2.5),
        "big_array": np.zeros(10_000),
        "strings": np.array(["a"]),
        "color": Color.RED,
    }
    path = zip_checkpoint(
        tmp_path / "c.ckpt", pickle.dumps({"hyper_parameters": hparams}, protocol=2)
    )
    plain = read_checkpoint(path).hyper_parameters
    assert plain["root"] == "/data/ocr" and plain["rel"] == "a/b" and plain["win"] == "C:\\data\\x"
    assert plain["args"] == {"lr": 0.1, "name": "dbnet"}
    assert plain["ordered"] == {"b": 1, "a": 2} and type(plain["ordered"]) is dict
    assert list(plain["ordered"]) == ["b", "a"]
    assert plain["default"] == {"k": [1]}
    assert plain["set"] == {1, 2} and plain["frozen"] == frozenset({"x"})
    assert plain["complex"] == 1 + 2j and plain["bytes"] == b"\x00\xff" and plain["empty"] == b""
    assert plain["f8"] == 0.25 and plain["f4"] == 0.5 and plain["i8"] == -3 and plain["u1"] == 200
    assert plain["b1"] is True and plain["f8be"] == 1.5 and plain["f2"] == 0.75
    assert plain["array"] == [[0, 1, 2], [3, 4, 5]] and plain["scalar_array"] == 2.5
    assert plain["big_array"].endswith("multiarray._reconstruct>")
    assert plain["strings"].endswith("_reconstruct>")
    assert plain["color"] == f"<{__name__}.Color>"
    assert (
        "numpy" in sys.modules
    )  # (imported by this test, not by the reader: see the subprocess test)


def test_omegaconf_containers_become_plain_without_resolving(tmp_path: Path) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {
            "model": {"architecture": "dbnet", "encoder": {"model_name": "resnet50"}},
            "lr": 0.001,
            "lr2": "${lr}",
            "now": "${now:%Y}",
            "missing": "???",
            "none": None,
            "list": [1, {"a": [True, None]}, "${model.architecture}"],
            "color": Color.RED,
            "empty": {},
            "path": "x",
        }
    )
    cfg_none = omegaconf.OmegaConf.create({"child": None})
    path = zip_checkpoint(
        tmp_path / "c.ckpt",
        pickle.dumps(
            {
                "hyper_parameters": cfg,
                "other": omegaconf.OmegaConf.create([1, "???"]),
                "n": cfg_none,
            },
            protocol=2,
        ),
    )
    contents = read_checkpoint(path)
    expected = omegaconf.OmegaConf.to_container(cfg, resolve=False)
    expected["color"] = f"<{__name__}.Color>"
    assert contents.hyper_parameters == expected
    assert to_plain(contents.raw["other"]) == [1, "???"]
    assert to_plain(contents.raw["n"]) == {"child": None}


# ---------------------------------------------------------------------------------------------
# Real Lightning checkpoints

SCORES = (0.3, 0.7, 0.5)  # val/hmean per epoch: top-2 keeps epochs 1 and 2
VARIANTS = [("dict", True), ("dictconfig", True), ("dict", False), ("dictconfig", False)]
HPARAMS = {
    "architecture_name": "dbnet",
    "encoder": {"model_name": "resnet18", "pretrained": True, "frozen": False},
    "decoder": {"name": "unet", "in_channels": [64, 128, 256, 512], "inner_channels": 256},
    "head": {"name": "db_head", "params": {"k": 50}},
    "loss": {"name": "db_loss", "params": {}},
    "optimizer": {"lr": 0.001, "lr_min": "${optimizer.lr}"},
}


def _train(root: Path, hparams_kind: str, cleval: bool) -> list[Path]:
    torch = pytest.importorskip("torch")
    lightning = pytest.importorskip("lightning")
    np = pytest.importorskip("numpy")
    omegaconf = pytest.importorskip("omegaconf")
    from lightning.pytorch.callbacks import ModelCheckpoint

    class TinyModule(lightning.LightningModule):
        def __init__(self, hparams: Any) -> None:
            super().__init__()
            self.save_hyperparameters(hparams)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
            )

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.net(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val/hmean", SCORES[self.current_epoch])

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            if cleval:  # CLEval hands back numpy and tensor values as often as floats
                checkpoint["cleval_metrics"] = {
                    "precision": np.float64(0.88),
                    "recall": torch.tensor(0.71, dtype=torch.float64),
                    "hmean": 0.77 + self.current_epoch / 100,
                }

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    hparams = dict(HPARAMS) if hparams_kind == "dict" else omegaconf.OmegaConf.create(HPARAMS)
    if hparams_kind == "dict":
        hparams["data_root"] = pathlib.Path("/data/ocr")
        hparams["sizes"] = (640, 640)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4
    )
    checkpoint_cb = ModelCheckpoint(
        dirpath=root / "checkpoints", monitor="val/hmean", mode="max", save_top_k=2, save_last=True
    )
    trainer = lightning.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_epochs=len(SCORES),
        callbacks=[checkpoint_cb],
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyModule(hparams), data, data)
    return sorted((root / "checkpoints").glob("*.ckpt"))


@pytest.fixture(scope="module")
def lightning_checkpoints(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, bool], list[Path]]:
    return {
        variant: _train(tmp_path_factory.mktemp(f"{variant[0]}-{variant[1]}"), *variant)
        for variant in VARIANTS
    }


def _plain_torch(value: Any) -> Any:
    """What ``to_plain`` should give for a value ``torch.load`` returned."""
    import numpy as np
    import torch
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain_torch(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_torch(v) for v in value)
    return value


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: f"{v[0]}-{'cleval' if v[1] else 'nocleval'}"
)
def test_real_checkpoints_read_like_torch_load(
    variant: tuple[str, bool], lightning_checkpoints: Any
) -> None:
    import lightning
    import torch

    paths = lightning_checkpoints[variant]
    assert [p.name for p in paths] == ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"]
    for path in paths:
        contents = read_checkpoint(path)
        loaded = torch.load(path, weights_only=False, map_location="cpu")
        assert contents.format == "zip"
        assert (contents.epoch, contents.global_step) == (loaded["epoch"], loaded["global_step"])
        assert (
            contents.lightning_version
            == loaded["pytorch-lightning_version"]
            == lightning.__version__
        )
        assert contents.hyper_parameters == _plain_torch(loaded["hyper_parameters"])
        assert contents.hyper_parameters["encoder"]["model_name"] == "resnet18"
        assert contents.hyper_parameters["optimizer"]["lr_min"] == "${optimizer.lr}"
        if variant[1]:
            assert contents.cleval_metrics == {
                k: float(v) for k, v in _plain_torch(loaded["cleval_metrics"]).items()
            }
            assert contents.cleval_metrics["precision"] == 0.88
        else:
            assert contents.cleval_metrics is None and "cleval_metrics" not in loaded

        (key,) = [k for k in loaded["callbacks"] if k.startswith("ModelCheckpoint")]
        state = loaded["callbacks"][key]
        assert isinstance(state["best_model_score"], torch.Tensor)  # decoded from its bytes below
        (ours,) = contents.checkpoint_callbacks
        assert ours["state_key"] == key
        assert (ours["monitor"], ours["mode"]) == ("val/hmean", "max")
        assert ours["best_model_score"] == state["best_model_score"].item()
        assert ours["current_score"] == state["current_score"].item()
        assert ours["current_score"] == pytest.approx(SCORES[contents.epoch])
        assert ours["best_k_models"] == {k: v.item() for k, v in state["best_k_models"].items()}
        for name in ("best_model_path", "kth_best_model_path", "last_model_path", "dirpath"):
            assert ours[name] == state[name]
        assert ours["config"]["every_n_epochs"] == 1

        shapes = {k: tuple(v.shape) for k, v in loaded["state_dict"].items()}
        assert contents.state_dict_shapes == shapes
        assert shapes["net.1.num_batches_tracked"] == ()
        assert contents.warnings == []


def _member_data_ranges(path: Path) -> dict[str, range]:
    """Byte range of each zip member's data in the file."""
    ranges = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            raw.seek(info.header_offset + 26)
            name_len, extra_len = (
                int.from_bytes(raw.read(2), "little"),
                int.from_bytes(raw.read(2), "little"),
            )
            start = info.header_offset + 30 + name_len + extra_len
            ranges[info.filename] = range(start, start + info.compress_size)
    return ranges


def test_weights_are_never_read(
    lightning_checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from ckpt_index.sources.checkpoint import formats

    path = tmp_path / "weights.ckpt"
    checkpoint = torch.load(lightning_checkpoints[("dict", True)][-1], weights_only=False)
    checkpoint["state_dict"]["big"] = torch.ones(1 << 20)
    checkpoint["callbacks"][next(iter(checkpoint["callbacks"]))]["current_score"] = torch.arange(
        64.0
    )[5]
    torch.save(checkpoint, path)
    reads: list[range] = []
    original_read = formats.CountingFile.read

    def logging_read(self: Any, size: int | None = -1) -> bytes:
        start = self.tell()
        data = original_read(self, size)
        reads.append(range(start, start + len(data)))
        return data

    monkeypatch.setattr(formats.CountingFile, "read", logging_read)
    contents = read_checkpoint(path)
    assert contents.checkpoint_callbacks[0]["current_score"] == 5.0
    assert contents.state_dict_shapes["big"] == (1 << 20,)
    assert contents.bytes_read == sum(len(r) for r in reads) < 32 << 10

    ranges = _member_data_ranges(path)

    def overlaps(a: range, b: range) -> bool:
        return a.start < b.stop and b.start < a.stop

    touched = {name for name, span in ranges.items() if any(overlaps(span, r) for r in reads)}
    assert f"{path.stem}/data.pkl" in touched  # torch.save names the archive after the file
    # Of the storages bigger than a scalar's, only the 64-float one holding current_score is
    # touched, and only the 4 bytes of its element 5.
    (member,) = [
        n for n in touched if "/data/" in n and len(ranges[n]) > formats.MAX_SCALAR_STORAGE_BYTES
    ]
    element = range(ranges[member].start + 5 * 4, ranges[member].start + 6 * 4)
    assert [r for r in reads if overlaps(r, ranges[member])] == [element]


def test_big_state_dict_costs_the_same(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    small, big = tmp_path / "small.ckpt", tmp_path / "big.ckpt"
    meta = {
        "epoch": 1,
        "global_step": 10,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'l', 'mode': 'min'}": {
                "monitor": "l",
                "best_model_score": torch.tensor(0.5),
                "current_score": torch.arange(100.0)[42],
                "best_k_models": {"a.ckpt": torch.tensor(0.5)},
            }
        },
    }
    torch.save({**meta, "state_dict": {"w": torch.zeros(4)}}, small)
    torch.save({**meta, "state_dict": {"w": torch.zeros(8 << 20)}}, big)  # 32 MiB
    a, b = read_checkpoint(small), read_checkpoint(big)
    assert b.state_dict_shapes == {"w": (8 << 20,)}
    assert b.checkpoint_callbacks[0]["current_score"] == 42.0  # one element of a 400-byte storage
    assert b.checkpoint_callbacks[0]["best_model_score"] == 0.5
    assert abs(b.bytes_read - a.bytes_read) < 256
    assert b.bytes_read < 16 << 10


def test_scalars_in_a_big_endian_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    source = tmp_path / "little.ckpt"
    torch.save(
        {
            "cleval_metrics": {
                "hmean": torch.tensor(0.8125, dtype=torch.float64),
                "step": torch.tensor(7),
            }
        },
        source,
    )
    with zipfile.ZipFile(source) as archive:
        swapped = {
            n.partition("/")[2]: archive.read(n)[::-1] for n in archive.namelist() if "/data/" in n
        }
    big = rewrite_zip(source, tmp_path / "big.ckpt", replace={"byteorder": b"big", **swapped})
    assert read_checkpoint(source).cleval_metrics == {"hmean": 0.8125, "step": 7.0}
    assert read_checkpoint(big).cleval_metrics == {"hmean": 0.8125, "step": 7.0}


def test_custom_archive_prefix(lightning_checkpoints: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    source = lightning_checkpoints[("dictconfig", True)][0]
    renamed = rewrite_zip(source, tmp_path / "renamed.ckpt", prefix="epoch=1-step=4")
    with zipfile.ZipFile(renamed) as archive:
        assert "epoch=1-step=4/data.pkl" in archive.namelist()
    assert torch.load(renamed, weights_only=False)["epoch"] == 1  # still a valid torch checkpoint
    ours, original = read_checkpoint(renamed), read_checkpoint(source)
    assert ours.hyper_parameters == original.hyper_parameters
    assert ours.checkpoint_callbacks == original.checkpoint_callbacks
    assert ours.state_dict_shapes == original.state_dict_shapes


def test_legacy_format_reads_like_the_zip_format(
    lightning_checkpoints: Any, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    source = lightning_checkpoints[("dictconfig", True)][1]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(torch.load(source, weights_only=False), legacy, _use_new_zipfile_serialization=False)
    ours, original = read_checkpoint(legacy), read_checkpoint(source)
    assert ours.format == "legacy"
    for name in (
        "epoch",
        "global_step",
        "hyper_parameters",
        "cleval_metrics",
        "checkpoint_callbacks",
        "state_dict_shapes",
        "lightning_version",
    ):
        assert getattr(ours, name) == getattr(original, name), name
    assert ours.checkpoint_callbacks[0]["best_model_score"] == pytest.approx(0.7)


@pytest.mark.parametrize("blocked", [False, True], ids=["importable", "blocked"])
def test_reader_needs_neither_torch_nor_omegaconf(
    blocked: bool, lightning_checkpoints: Any, tmp_path: Path
) -> None:
    path = lightning_checkpoints[("dictconfig", True)][1]
    script = textwrap.dedent("""
        import json, sys
        HEAVY = ("omegaconf", "torch", "numpy", "lightning", "yaml")
        if sys.argv[2] == "blocked":
            for name in HEAVY:
                sys.modules[name] = None  # any import of these now raises ImportError
        from ckpt_index.sources.checkpoint.reader import read_checkpoint
        c = read_checkpoint(sys.argv[1])
        loaded = sorted(
            m for m in sys.modules if m.split(".")[0] in HEAVY and sys.modules[m] is not None
        )
        print(json.dumps({"epoch": c.epoch, "global_step": c.global_step,
                          "hparams": c.hyper_parameters, "cleval": c.cleval_metrics,
                          "callbacks": c.checkpoint_callbacks, "shapes": c.state_dict_shapes,
                          "loaded": loaded}))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), "blocked" if blocked else "ok"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)
    here = read_checkpoint(path)
    expected = json.loads(
        json.dumps(
            {
                "epoch": here.epoch,
                "global_step": here.global_step,
                "hparams": here.hyper_parameters,
                "cleval": here.cleval_metrics,
                "callbacks": here.checkpoint_callbacks,
                "shapes": here.state_dict_shapes,
                "loaded": [],
            }
        )
    )
    assert child == expected
    assert child["hparams"]["encoder"] == {
        "model_name": "resnet18",
        "pretrained": True,
        "frozen": False,
    }


# ---------------------------------------------------------------------------------------------
# Callback states


def test_state_key_that_literal_eval_cannot_parse(tmp_path: Path) -> None:
    key = (
        "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0, "
        "'every_n_epochs': None, 'train_time_interval': datetime.timedelta(seconds=3600)}"
    )
    state = {
        "monitor": "val/loss",
        "best_model_score": 0.25,
        "best_model_path": "a.ckpt",
        "best_k_models": {"a.ckpt": 0.25},
        "current_score": 0.3,
    }
    other = {
        "EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}": {"wait_count": 0, "best_score": 0.1}
    }
    path = zip_checkpoint(
        tmp_path / "c.ckpt", pickle.dumps({"callbacks": {**other, key: state}}, protocol=2)
    )
    (ours,) = read_checkpoint(path).checkpoint_callbacks
    assert (ours["monitor"], ours["mode"], ours["config"]) == ("val/loss", "min", {})
    assert ours["state_key"] == key
    assert (ours["best_model_score"], ours["current_score"]) == (0.25, 0.3)
    assert ours["best_k_models"] == {"a.ckpt": 0.25}


def test_old_lightning_keys_callbacks_by_class(tmp_path: Path) -> None:
    cls = Global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
    data = dumps(
        {
            "epoch": 4,
            "callbacks": {
                cls: {"monitor": "val_loss", "best_model_score": 0.5, "best_model_path": "x.ckpt"}
            },
        }
    )
    (ours,) = read_checkpoint(zip_checkpoint(tmp_path / "c.ckpt", data)).checkpoint_callbacks
    assert ours["state_key"] == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert (ours["monitor"], ours["mode"], ours["best_model_score"]) == ("val_loss", None, 0.5)
    assert "pytorch_lightning" not in sys.modules


def test_subclass_of_model_checkpoint_is_recognised(tmp_path: Path) -> None:
    key = "NamingModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max'}"
    path = zip_checkpoint(
        tmp_path / "c.ckpt", pickle.dumps({"callbacks": {key: {"monitor": "val/hmean"}}})
    )
    (ours,) = read_checkpoint(path).checkpoint_callbacks
    assert (ours["monitor"], ours["mode"], ours["best_k_models"]) == ("val/hmean", "max", {})


def test_tensor_descriptors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "t.ckpt"
    param = torch.nn.Parameter(torch.zeros(3, 5, dtype=torch.bfloat16))
    torch.save(
        {
            "state_dict": {
                "p": param,
                "u": torch.zeros(2, dtype=torch.uint16),
                "view": torch.zeros(10, 10)[2:4, 1:3],
                "s": torch.tensor(3),
            }
        },
        path,
    )
    raw = read_checkpoint(path).raw["state_dict"]
    assert isinstance(raw["p"], TensorDescriptor)
    assert (raw["p"].dtype, raw["p"].shape, raw["p"].kind, raw["p"].requires_grad) == (
        "bfloat16",
        (3, 5),
        "parameter",
        True,
    )
    assert (raw["u"].dtype, raw["u"].shape) == ("uint16", (2,))
    assert (raw["view"].shape, raw["view"].storage_offset, raw["view"].stride) == (
        (2, 2),
        21,
        (10, 1),
    )
    assert raw["s"].value is None  # weights are not decoded, not even 0-d ones
    assert to_plain(raw["view"]) == "<tensor float32 [2, 2]>"


# ---------------------------------------------------------------------------------------------
# Malformed files


def test_truncated_checkpoint(lightning_checkpoints: Any, tmp_path: Path) -> None:
    source = lightning_checkpoints[("dict", True)][0]
    data = source.read_bytes()
    for size in (len(data) // 2, len(data) - 1, 200):
        cut = tmp_path / f"cut{size}.ckpt"
        cut.write_bytes(data[:size])
        expect_unreadable(cut, "truncated or corrupt zip archive")


def test_legacy_files_truncated_or_tar(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    legacy = tmp_path / "legacy.ckpt"
    torch.save(
        {"epoch": 1, "state_dict": {"w": torch.zeros(1000)}},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    assert read_checkpoint(legacy).state_dict_shapes == {"w": (1000,)}
    data = legacy.read_bytes()
    for size, reason in (
        (60, "pickles end early"),
        (len(data) // 2, "storages end at byte"),
        (len(data) - 1, "storages end at byte"),
    ):
        cut = tmp_path / f"cut{size}.ckpt"
        cut.write_bytes(data[:size])
        expect_unreadable(cut, "truncated legacy torch file", reason)
    tar_path = tmp_path / "tar.ckpt"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("sys_info", "pickle", "tensors", "storages"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    expect_unreadable(tar_path, "unsupported legacy format", "tar archive")


def test_corrupt_data_pkl_bytes(lightning_checkpoints: Any, tmp_path: Path) -> None:
    source = lightning_checkpoints[("dict", True)][0]
    data = bytearray(source.read_bytes())
    start = data.index(b"data.pkl") + len(b"data.pkl") + 100
    data[start : start + 50] = b"\x00" * 50  # inside the pickle; the zip directory is intact
    corrupt = tmp_path / "crc.ckpt"
    corrupt.write_bytes(bytes(data))
    expect_unreadable(corrupt, "corrupt zip member archive/data.pkl", "CRC")


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("empty", ("empty file",)),
        ("random", ("not a PyTorch checkpoint",)),
        ("text", ("not a PyTorch checkpoint",)),
        ("missing", ("cannot open", "No such file")),
        ("directory", ("is a directory",)),
        ("zip without data.pkl", ("no <prefix>/data.pkl",)),
        ("data.pkl at the root", ("no <prefix>/data.pkl",)),
        ("two data.pkl", ("several data.pkl", "a/data.pkl, b/data.pkl")),
        ("garbage data.pkl", ("archive/data.pkl is not a valid pickle",)),
        ("truncated data.pkl", ("archive/data.pkl is not a valid pickle", "truncated")),
        ("list data.pkl", ("archive/data.pkl holds a list, not a checkpoint dict",)),
        ("placeholder data.pkl", ("holds a torch.nn.Linear",)),
        ("bad byteorder", ("byteorder is b'middle'",)),
    ],
)
def test_malformed_files(case: str, fragments: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "bad.ckpt"
    good = pickle.dumps({"epoch": 1}, protocol=2)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif case == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    elif case == "missing":
        path = tmp_path / "missing.ckpt"
    elif case == "directory":
        path.mkdir()
    elif case == "zip without data.pkl":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/version", "3")
    elif case == "data.pkl at the root":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("data.pkl", good)
    elif case == "two data.pkl":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a/data.pkl", good)
            archive.writestr("b/data.pkl", good)
    elif case == "garbage data.pkl":
        zip_checkpoint(path, random.Random(1).randbytes(1000))
    elif case == "truncated data.pkl":
        zip_checkpoint(path, pickle.dumps({"epoch": 1, "x": "y" * 100}, protocol=2)[:40])
    elif case == "list data.pkl":
        zip_checkpoint(path, pickle.dumps([1, 2], protocol=2))
    elif case == "placeholder data.pkl":
        zip_checkpoint(path, dumps(Call(Global("torch.nn", "Linear"), newobj=True)))
    elif case == "bad byteorder":
        zip_checkpoint(path, good, prefix="p", byteorder=b"middle")
    expect_unreadable(path, *fragments)


def test_damaged_files_fail_cleanly(tmp_path: Path) -> None:
    """Random truncations and byte flips: each read succeeds or raises CheckpointReadError,
    nothing else."""
    torch = pytest.importorskip("torch")
    checkpoint = {
        "epoch": 3,
        "global_step": 30,
        "hyper_parameters": {"encoder": {"model_name": "resnet18"}, "lr": 0.1},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/hmean', 'mode': 'max'}": {
                "monitor": "val/hmean",
                "best_model_score": torch.tensor(0.5),
                "current_score": torch.arange(40.0)[3],
                "best_k_models": {"a.ckpt": torch.tensor(0.5)},
            }
        },
        "state_dict": {"w": torch.zeros(64, 64), "b": torch.zeros(64)},
    }
    sources = []
    for legacy in (False, True):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer, _use_new_zipfile_serialization=not legacy)
        sources.append(buffer.getvalue())
    rng = random.Random(1234)
    path = tmp_path / "damaged.ckpt"
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(800):
        data = bytearray(rng.choice(sources))
        how = rng.randrange(3)
        if how == 0:
            del data[rng.randrange(len(data)) :]
        else:  # flip bytes anywhere, or in the last 1.5 KB where the zip directory lives
            window = len(data) if how == 1 else min(len(data), 1500)
            for _ in range(rng.randrange(1, 6)):
                data[len(data) - 1 - rng.randrange(window)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            read_checkpoint(path)
            outcomes["ok"] += 1
        except CheckpointReadError as exc:
            assert "\n" not in exc.reason and exc.reason
            outcomes["error"] += 1
    assert outcomes["ok"] and outcomes["error"]


def test_size_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpt_index.sources.checkpoint import formats

    monkeypatch.setattr(formats, "MAX_PICKLE_BYTES", 1000)
    path = zip_checkpoint(tmp_path / "big.ckpt", pickle.dumps({"x": "y" * 2000}, protocol=2))
    expect_unreadable(path, "archive/data.pkl is", "more than the 1000 byte limit")
    torch = pytest.importorskip("torch")
    legacy = tmp_path / "legacy.ckpt"
    torch.save(
        {"x": "y" * 2000, "w": torch.zeros(10)}, legacy, _use_new_zipfile_serialization=False
    )
    expect_unreadable(legacy, "legacy torch pickle larger than 1000 bytes")

    monkeypatch.setattr(formats, "MAX_PICKLE_BYTES", 1 << 20)
    monkeypatch.setattr(formats, "MAX_READ_BYTES", 200)
    many = tmp_path / "many.ckpt"
    zip_checkpoint(many, pickle.dumps({}), members={f"data/{i}": b"" for i in range(20)})
    expect_unreadable(many, "refusing to read", "bytes at once")


# ---------------------------------------------------------------------------------------------
# Limits of the pre-scan: nesting, object counts, shapes (issue 8)


def _scan_error(data: bytes) -> str | None:
    from ckpt_index.sources.checkpoint.scan import scan_pickle

    try:
        scan_pickle(data)
    except pickle.UnpicklingError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02}N" + b"\x85" * 101 + b"Ns.",  # TUPLE1 chain as a dict key
        b"\x80\x02(N"
        + b"\x86" * 0
        + b"\x85" * 60
        + b"q\x01\x85" * 1
        + b"0h\x01"
        + b"\x85" * 41
        + b".",  # via the memo
        b"\x80\x02N" + b"\x85" * 60 + b"2\x86" + b"\x85" * 41 + b".",  # via DUP
        b"\x80\x04(N"
        + b"\x85" * 50
        + b"\x91"
        + b"("
        + b"\x85" * 0
        + b"0"
        + b"\x85" * 51
        + b".",  # frozenset then tuples
        b"\x80\x02N"
        + b"\x85" * 60
        + b"p7\n0g7\n"
        + b"\x85" * 41
        + b".",  # protocol 0 PUT/GET lines
        b"\x80\x02(" + b"(" * 101 + b"N" + b"t" * 101 + b"t.",  # TUPLE with marks
    ],
    ids=["TUPLE1", "memo", "DUP", "frozenset", "PUT-GET", "TUPLE"],
)
def test_tuples_nested_past_the_limit_are_refused_before_unpickling(data: bytes) -> None:
    assert "nested deeper than 100" in (_scan_error(data) or "")


def test_tuples_nested_within_the_limit_pass() -> None:
    value: Any = None
    for _ in range(100):
        value = (value,)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert _scan_error(pickle.dumps({value: [value]}, protocol)) is None
        assert _scan_error(pickle.dumps({(value,): 1}, protocol)) is not None


def test_object_and_container_counts_are_refused_before_unpickling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ckpt_index.sources.checkpoint import scan

    monkeypatch.setattr(scan, "MAX_PICKLE_OBJECTS", 1000)
    monkeypatch.setattr(scan, "MAX_PICKLE_CONTAINERS", 100)
    assert "more than 100 containers" in _scan_error(b"\x80\x02" + b"]" * 101 + b".")
    for atom in (b"N", b"K\x01", b"X\x00\x00\x00\x00", b"h\x00", b"("):
        data = b"\x80\x02]q\x00" + atom * 1001 + b"."
        assert "more than 1,000 objects" in _scan_error(data), atom
    assert _scan_error(b"\x80\x02" + b"]" * 99 + b".") is None
    assert _scan_error(pickle.dumps(list(range(900)), 2)) is None


def test_empty_list_bomb_is_refused_by_the_object_count() -> None:
    from ckpt_index.sources.checkpoint.scan import MAX_PICKLE_CONTAINERS, MAX_PICKLE_OBJECTS

    assert "containers" in _scan_error(b"\x80\x02" + b"]" * (MAX_PICKLE_CONTAINERS + 1) + b".")
    assert "objects" in _scan_error(b"\x80\x02" + b"N" * (MAX_PICKLE_OBJECTS + 1) + b".")


def test_compressed_data_pkl_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + b"]" * (32 << 20) + b".")
    expect_unreadable(path, "compression bomb")


def test_shapes_are_bounded_before_any_product() -> None:
    from ckpt_index.sources.checkpoint.convert import _numpy_array
    from ckpt_index.sources.checkpoint.objects import StorageRef, bounded_product
    from ckpt_index.sources.checkpoint.standins import _StandIn, resolve_global

    huge = (1 << 63) - 1
    assert bounded_product((huge,) * 1_000_000, 1 << 63) == -1  # stops at the second dim
    assert bounded_product((2, -1), 10) == -1 and bounded_product((3, 4), 12) == 12
    dtype = resolve_global("numpy", "dtype")("f8", False, True)
    dtype.__setstate__((3, "<", None, None, None, -1, -1, 0))
    assert _numpy_array((1, (huge,) * 1_000_000, dtype, False, b"")) is None
    assert _numpy_array((1, (2,) * 65, dtype, False, b"")) is None
    assert _numpy_array((1, (2,), dtype, False, struct.pack("<2d", 1.5, 2.5))) == [1.5, 2.5]
    rebuild = resolve_global("torch._utils", "_rebuild_tensor_v2")
    assert isinstance(rebuild, _StandIn)
    storage = StorageRef("0", "float32", "cpu", 4)
    assert isinstance(rebuild(storage, 0, (2, 2), (2, 1)), TensorDescriptor)
    for shape in [(1 << 63,), (2,) * 65, (1 << 200,)]:
        assert isinstance(rebuild(storage, 0, shape, None), Placeholder)
    assert TensorDescriptor("float32", ((1 << 62),) * 3).numel == -1


def test_pickled_counters_out_of_range_are_none_with_a_warning(tmp_path: Path) -> None:
    path = zip_checkpoint(tmp_path / "e.ckpt", pickle.dumps({"epoch": 2**64, "global_step": -1}, 2))
    contents = read_checkpoint(path)
    assert contents.epoch is None and contents.global_step is None
    assert contents.warnings == [
        "epoch: 18446744073709551616 is outside the range of a counter",
        "global_step: -1 is outside the range of a counter",
    ]


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_special_files_are_refused_without_blocking(kind: str, tmp_path: Path) -> None:
    import socket

    path = tmp_path / "x.ckpt"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    script = (
        "import sys; from ckpt_index.sources.checkpoint.reader import *\n"
        "try: read_checkpoint(sys.argv[1])\nexcept CheckpointReadError as e: print(e.reason)\n"
        "print(check_integrity(sys.argv[1]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] != "None", result
    # Opening a socket fails with ENXIO before fstat could say what it is.
    assert lines[0] in (
        "is a FIFO, not a regular file"
        if kind == "fifo"
        else "cannot open: No such device or address"
    )


# ---------------------------------------------------------------------------------------------
# Integrity: the end of the zip only


def _count_preads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from ckpt_index.sources.checkpoint import integrity

    sizes: list[int] = []
    real = integrity.pread

    def counting(handle: Any, offset: int, size: int) -> bytes:
        data = real(handle, offset, size)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(integrity, "pread", counting)
    return sizes


def test_integrity_of_real_checkpoints_reads_only_their_end(
    lightning_checkpoints: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from ckpt_index.sources.checkpoint.reader import check_integrity

    for paths in lightning_checkpoints.values():
        for path in paths:
            assert check_integrity(path) is None, path
    big = tmp_path / "big.ckpt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(8 << 20)}}, big)  # 32 MiB of weights
    sizes = _count_preads(monkeypatch)
    assert check_integrity(big) is None
    assert sum(sizes) < 80_000
    zip64 = tmp_path / "zip64.ckpt"
    with zipfile.ZipFile(big) as old, zipfile.ZipFile(zip64, "w") as new:
        for info in old.infolist():
            with new.open(info.filename, "w", force_zip64=True) as member:
                member.write(old.read(info))
    assert check_integrity(zip64) is None
    prefixed = tmp_path / "prefixed.ckpt"
    prefixed.write_bytes(b"junk" * 100 + lightning_checkpoints[("dict", True)][0].read_bytes())
    assert check_integrity(prefixed) is None


def test_integrity_finds_truncation_and_missing_data_pkl(
    lightning_checkpoints: Any, tmp_path: Path
) -> None:
    from ckpt_index.sources.checkpoint.reader import check_integrity

    data = lightning_checkpoints[("dict", True)][0].read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        directory_start = min(i.header_offset for i in archive.infolist())
        last = max(archive.infolist(), key=lambda i: i.header_offset)
    cut = tmp_path / "cut.ckpt"
    for size in sorted(
        {1, 200, directory_start + 10, last.header_offset + 40, len(data) // 2, len(data) - 1}
    ):
        cut.write_bytes(data[:size])
        reason = check_integrity(cut)
        assert reason is not None and "\n" not in reason, size
    # A member whose data runs past the directory (bytes cut from the middle of the file).
    middle = len(data) // 2
    spliced = tmp_path / "spliced.ckpt"
    spliced.write_bytes(data[: middle - 512] + data[middle:])
    assert check_integrity(spliced) is not None
    no_pickle = tmp_path / "no_pickle.ckpt"
    with zipfile.ZipFile(no_pickle, "w") as archive:
        archive.writestr("archive/byteorder", b"little")
    assert "no <prefix>/data.pkl" in check_integrity(no_pickle)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert check_integrity(empty) == "empty file"
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    assert "not a PyTorch checkpoint" in check_integrity(text)
    assert "cannot open" in check_integrity(tmp_path / "missing.ckpt")


def test_integrity_of_legacy_files(tmp_path: Path) -> None:
    import torch

    from ckpt_index.sources.checkpoint.reader import check_integrity

    path = tmp_path / "legacy.ckpt"
    torch.save({"epoch": 1}, path, _use_new_zipfile_serialization=False)
    assert check_integrity(path) is None


# ---------------------------------------------------------------------------------------------
# unsafe_globals against the real torch.load(weights_only=True)


class CustomConfig:
    def __init__(self) -> None:
        self.depth = 3


def test_weights_only_allow_list_is_torchs() -> None:
    from ckpt_index.sources.checkpoint.weights_only import WEIGHTS_ONLY_ALLOWED

    # In a fresh process: importing lightning (as this one has) registers DTensor classes too.
    script = textwrap.dedent("""
        import json, torch
        from torch._weights_only_unpickler import _get_allowed_globals
        names = set(_get_allowed_globals())
        safe = torch.serialization.get_safe_globals()
        names |= {f"{f.__module__}.{f.__qualname__}" for f in safe}
        print(json.dumps(sorted(names)))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert WEIGHTS_ONLY_ALLOWED == set(json.loads(out.stdout))


def _weights_only_verdict(path: Path) -> str | None:
    """None if torch.load(weights_only=True) loads the file, else its error message (in a child,
    so the globals torch registers or imports in this process change nothing)."""
    script = (
        "import sys, torch\ntry: torch.load(sys.argv[1], weights_only=True)\n"
        "except Exception as e: print(' '.join(str(e).split()))\nelse: print('OK')"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return None if out == "OK" else out


def _unsafe_cases() -> dict[str, Any]:
    import numpy as np
    import torch

    return {
        "plain": {
            "epoch": 1,
            "state_dict": collections.OrderedDict(w=torch.ones(2)),
            "n": collections.Counter("ab"),
            "b": bytearray(b"x"),
            "s": {1, 2},
            "c": 1j,
            "d": torch.device("cpu"),
            "dt": torch.float16,
        },
        "parameter": {"p": torch.nn.Parameter(torch.ones(2))},
        "namespace": {"hyper_parameters": argparse.Namespace(lr=0.1)},
        "custom class": {"hyper_parameters": {"cfg": CustomConfig()}},
        "pathlib": {"hyper_parameters": {"root": pathlib.PosixPath("/data")}},
        "numpy scalar": {"cleval_metrics": {"hmean": np.float64(0.5)}},
        "numpy array": {"a": np.arange(3)},
        "enum": {"color": Color.RED},
        "frozenset": {"f": frozenset({1})},
        "slice": {"s": slice(1, 2)},
    }


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "parameter",
        "namespace",
        "custom class",
        "pathlib",
        "numpy scalar",
        "numpy array",
        "enum",
        "frozenset",
        "slice",
    ],
)
def test_unsafe_globals_are_what_weights_only_refuses(case: str, tmp_path: Path) -> None:
    import torch

    path = tmp_path / "c.ckpt"
    torch.save(_unsafe_cases()[case], path)
    unsafe = read_checkpoint(path).unsafe_globals
    verdict = _weights_only_verdict(path)
    assert (unsafe == []) == (verdict is None), (unsafe, verdict)
    if verdict is not None:
        named = [g for g in unsafe if f"GLOBAL {g.removeprefix('builtins.')} " in verdict]
        assert named, (unsafe, verdict)
    assert unsafe == sorted(unsafe)


def test_unsafe_globals_of_real_lightning_checkpoints(lightning_checkpoints: Any) -> None:
    for variant, paths in lightning_checkpoints.items():
        path = paths[0]
        unsafe = read_checkpoint(path).unsafe_globals
        verdict = _weights_only_verdict(path)
        assert (unsafe == []) == (verdict is None), (variant, unsafe, verdict)
        if verdict is not None:
            assert any(f"GLOBAL {g.removeprefix('builtins.')} " in verdict for g in unsafe), (
                variant,
                unsafe,
                verdict,
            )
        if variant[0] == "dictconfig":
            assert "omegaconf.dictconfig.DictConfig" in unsafe
        else:
            assert "pathlib.PosixPath" in unsafe
