"""Tests for reading and writing ``X.metadata.yaml`` sidecars, the file beside ``X.ckpt``.

Naming, atomic and alias-free writing, and above all defensive reading: every hostile or broken
file is rejected with a one-line reason, in bounded time and memory, with nothing executed, and a
sync over a tree full of them indexes the good checkpoint and records the bad ones as invalid.

Inputs that could crash or hang the test process itself (very deep nesting, a FIFO) and reads that
need a real permission failure (tests run as root) run in a child Python process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from helpers.checkpoints import write_checkpoint
from helpers.sidecars import SEED_SIDECARS, seed_document
from hypothesis import given
from hypothesis import strategies as st

from ckpt_index import api
from ckpt_index.sidecar.files import (
    MAX_SIDECAR_BYTES,
    SidecarError,
    checkpoint_path_for,
    dump_document,
    dump_metadata,
    load_metadata,
    read_sidecar,
    save_metadata,
    sidecar_path_for,
)
from ckpt_index.sidecar.schema import CheckpointMetadataV1

MiB = 1 << 20
#: Generous ceiling on memory a rejection may allocate; an alias bomb would need gigabytes.
MEMORY_BOUND = 64 * MiB
NOBODY = 65534

# --------------------------------------------------------------------------------------------
# Helpers


def seed_meta(name: str = "seed_callback") -> CheckpointMetadataV1:
    return CheckpointMetadataV1.model_validate(seed_document(name))


def seed_yaml(**changes: object) -> str:
    """The seed callback sidecar as YAML text, with top-level keys replaced by raw YAML."""
    doc = seed_document()
    for key in changes:
        del doc[key]
    extra = "".join(f"{key}: {value}\n" for key, value in changes.items())
    return dump_document(doc) + extra


def leftovers(directory: Path) -> list[str]:
    """Temporary files a writer left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def has_anchors_or_aliases(text: str) -> bool:
    return any(
        isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None)
        for event in yaml.parse(text)
    )


def assert_one_line(reason: str) -> None:
    assert reason and "\n" not in reason and "\r" not in reason, repr(reason)


def rejected(path: Path) -> str:
    """``read_sidecar(path)``'s rejection reason; checks memory stayed bounded."""
    tracemalloc.start()
    try:
        with pytest.raises(SidecarError) as info:
            read_sidecar(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"rejecting {path.name} allocated {peak:,} bytes"
    assert info.value.path == path
    assert_one_line(info.value.reason)
    return info.value.reason


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (crashes and hangs stay out of the test process)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process did not finish within {timeout}s (blocked or looping)")


#: Imports everything first, then (when root) becomes ``nobody``: /root, where the interpreter
#: lives, is closed to that user, so nothing may be imported after the switch.
CHILD_PRELUDE = """
    import json, os, sys
    from ckpt_index import api
    from ckpt_index.sidecar.files import SidecarError, read_sidecar
    sync = getattr(api, "sync_index", None) or api.sync

    def drop_privileges():
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
""".replace("NOBODY", str(NOBODY))

READ_IN_CHILD = (
    CHILD_PRELUDE
    + """
    if "--drop" in sys.argv:
        drop_privileges()
        try:
            open(sys.argv[1], "rb").close()
            print("CONTROL readable")
        except PermissionError:
            print("CONTROL denied")
    try:
        read_sidecar(sys.argv[1])
        print("ACCEPTED")
    except SidecarError as exc:
        print("REASON " + exc.reason)
"""
)

SYNC_IN_CHILD = (
    CHILD_PRELUDE
    + """
    root, db = sys.argv[1], sys.argv[2]
    if "--drop" in sys.argv:
        sync(sys.argv[4], db=sys.argv[3])  # warm-up: load every lazy import while root
        drop_privileges()
    print(json.dumps(sync(root, db=db).to_dict()))
"""
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-traversable temporary directory (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ckpt-index-test-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        for p in path.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(path)


def run_sync(root: Path, db_path: Path):
    """The library's sync: ``api.sync_index`` (called ``api.sync`` before a rename)."""
    sync = getattr(api, "sync_index", None) or api.sync
    return sync(root, db=db_path)


def rows(db_path: Path) -> dict[str, sqlite3.Row]:
    """The index rows by checkpoint file name."""
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT checkpoint_path, status, error, hmean FROM checkpoints")
        return {Path(row["checkpoint_path"]).name: row for row in found}


# --------------------------------------------------------------------------------------------
# Naming


NAMES = [
    ("run/checkpoints/best.ckpt", "run/checkpoints/best.metadata.yaml"),
    ("epoch=10.ckpt", "epoch=10.metadata.yaml"),
    ("x/epoch-10_step-005420.ckpt", "x/epoch-10_step-005420.metadata.yaml"),
    ("x/model.v1.2.final.ckpt", "x/model.v1.2.final.metadata.yaml"),
    ("x/epoch=3-val_hmean=0.8430.ckpt", "x/epoch=3-val_hmean=0.8430.metadata.yaml"),
    ("x/last.ckpt.ckpt", "x/last.ckpt.metadata.yaml"),
    ("runs.ckpt/last.ckpt", "runs.ckpt/last.metadata.yaml"),
    ("/abs/dir.metadata.yaml/a.ckpt", "/abs/dir.metadata.yaml/a.metadata.yaml"),
]


@pytest.mark.parametrize("ckpt, sidecar", NAMES)
def test_sidecar_path_for(ckpt: str, sidecar: str) -> None:
    assert sidecar_path_for(ckpt) == Path(sidecar)
    assert sidecar_path_for(Path(ckpt)) == Path(sidecar)
    assert sidecar_path_for(ckpt).parent == Path(ckpt).parent


@pytest.mark.parametrize("ckpt, sidecar", NAMES)
def test_checkpoint_path_for(ckpt: str, sidecar: str) -> None:
    assert checkpoint_path_for(sidecar) == Path(ckpt)
    assert checkpoint_path_for(Path(sidecar)).parent == Path(sidecar).parent


@pytest.mark.parametrize("name", ["x.yaml", "x.metadata.yml", "x.ckpt", "metadata.yaml.bak"])
def test_checkpoint_path_for_refuses_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a sidecar name"):
        checkpoint_path_for(name)


@given(
    st.text(
        st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=40,
    )
)
def test_naming_round_trips(stem: str) -> None:
    ckpt = Path("outputs/run") / f"{stem}.ckpt"
    sidecar = sidecar_path_for(ckpt)
    assert sidecar.parent == ckpt.parent
    assert sidecar.name == f"{stem}.metadata.yaml"
    assert checkpoint_path_for(sidecar) == ckpt


# --------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("name", [p.name.split(".")[0] for p in SEED_SIDECARS])
def test_save_then_load_round_trips(tmp_path: Path, name: str) -> None:
    meta = seed_meta(name)
    ckpt = tmp_path / "epoch=10-step=5420.ckpt"
    written = save_metadata(meta, ckpt)
    assert written == tmp_path / "epoch=10-step=5420.metadata.yaml"
    assert load_metadata(ckpt) == meta
    assert leftovers(tmp_path) == []


def test_load_metadata_without_sidecar_is_none(tmp_path: Path) -> None:
    assert load_metadata(tmp_path / "nothing.ckpt") is None
    write_checkpoint(tmp_path / "bare.ckpt")
    assert load_metadata(tmp_path / "bare.ckpt") is None


def test_load_metadata_of_invalid_sidecar_raises(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "bad.ckpt", "- just\n- a list\n")
    with pytest.raises(SidecarError, match="mapping"):
        load_metadata(tmp_path / "bad.ckpt")


def test_written_yaml_has_no_anchors_even_for_shared_objects(tmp_path: Path) -> None:
    shared_list, shared_map = [256, 512], {"k": [1, 2]}
    doc = seed_document()
    doc["model"]["decoder"]["params"] = {"a": shared_list, "b": shared_list, "c": shared_map}
    doc["model"]["head"]["params"] = {"d": shared_map}
    doc["extra_one"], doc["extra_two"] = shared_list, shared_map
    meta = CheckpointMetadataV1.model_validate(doc)

    assert not has_anchors_or_aliases(dump_document(doc))
    assert not has_anchors_or_aliases(dump_metadata(meta))
    path = save_metadata(meta, tmp_path / "run.ckpt")
    text = path.read_text()
    assert not has_anchors_or_aliases(text)
    assert yaml.safe_load(text)["extra_two"] == {"k": [1, 2]}


TOP_LEVEL_ORDER = [
    "schema_version",
    "checkpoint_path",
    "exp_name",
    "created_at",
    "training",
    "model",
    "metrics",
    "checkpointing",
    "hydra_config_path",
    "wandb_run_id",
]


def reversed_mapping(value: object) -> object:
    """``value`` with schema mappings in reverse key order (user-keyed maps keep theirs)."""
    if isinstance(value, dict):
        return {
            k: v if k in ("additional_metrics", "params") else reversed_mapping(v)
            for k, v in reversed(list(value.items()))
        }
    return value


def test_key_order_is_stable_whatever_the_input_order(tmp_path: Path) -> None:
    doc = seed_document()
    doc["zz_extra"] = 1
    doc["training"]["zz_extra"] = 2
    text = save_metadata(CheckpointMetadataV1.model_validate(doc), tmp_path / "a.ckpt").read_text()
    shuffled = CheckpointMetadataV1.model_validate(reversed_mapping(doc))
    assert save_metadata(shuffled, tmp_path / "b.ckpt").read_text() == text

    loaded = yaml.safe_load(text)
    assert list(loaded) == TOP_LEVEL_ORDER + ["zz_extra"]
    assert list(loaded["training"]) == [
        "epoch",
        "global_step",
        "training_phase",
        "max_epochs",
        "zz_extra",
    ]
    assert list(loaded["model"]) == ["architecture", "encoder", "decoder", "head", "loss"]
    assert list(loaded["model"]["encoder"]) == ["model_name", "pretrained", "frozen"]
    assert list(loaded["metrics"])[:4] == ["precision", "recall", "hmean", "validation_loss"]
    assert list(loaded["checkpointing"]) == ["monitor", "mode", "save_top_k", "save_last"]


def test_written_yaml_is_human_readable(tmp_path: Path) -> None:
    text = save_metadata(seed_meta("seed_design"), tmp_path / "a.ckpt").read_text()
    assert text.startswith("schema_version: '1.0'\n")
    assert "in_channels: [256, 512, 1024, 2048]\n" in text
    assert "null" not in text and "!!" not in text and "{" not in text.replace("{}", "")
    assert "\n  epoch: 10\n" in text


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    path = save_metadata(seed_meta("seed_callback"), ckpt)
    before = path.read_bytes()
    with pytest.raises(FileExistsError) as raised:
        save_metadata(seed_meta("seed_converted"), ckpt)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    # The error names the sidecar the user has, not the temporary file that was removed.
    assert raised.value.filename == str(path)
    assert str(path) in str(raised.value) and ".tmp" not in str(raised.value)


def test_save_with_force_replaces_the_file_atomically(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    path = save_metadata(seed_meta("seed_callback"), ckpt)
    with open(path, "rb") as old_reader:
        save_metadata(seed_meta("seed_converted"), ckpt, force=True)
        # A rename swaps in a new file; a reader of the old one still sees it whole.
        assert yaml.safe_load(old_reader.read())["exp_name"] == "dbnet-resnet50-pan-20251018"
    assert load_metadata(ckpt) == seed_meta("seed_converted")
    assert leftovers(tmp_path) == []


def test_saved_sidecar_honours_the_umask(tmp_path: Path) -> None:
    # Sidecars are shared with teammates and read by other users' syncs: a private 0600 file
    # (mkstemp's default) would make them invalid for everyone else.
    old = os.umask(0o022)
    try:
        path = save_metadata(seed_meta(), tmp_path / "run.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_save_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        save_metadata(seed_meta(), tmp_path / "missing" / "run.ckpt")
    assert not (tmp_path / "missing").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "failing, force",
    [("link", False), ("replace", True), ("fsync", False), ("fsync", True)],
)
def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, force: bool
) -> None:
    ckpt = tmp_path / "run.ckpt"
    if force:
        save_metadata(seed_meta("seed_callback"), ckpt)
    before = sidecar_path_for(ckpt).read_bytes() if force else None
    seen: list[str] = []

    def fail(*args: object, **kwargs: object) -> None:
        seen.extend(leftovers(tmp_path))  # the temporary file exists when the failure strikes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space left"):
        save_metadata(seed_meta("seed_converted"), ckpt, force=force)
    monkeypatch.undo()

    assert len(seen) == 1 and seen[0].startswith(".run.metadata.yaml.")
    assert leftovers(tmp_path) == []
    if force:
        assert sidecar_path_for(ckpt).read_bytes() == before
    else:
        assert not sidecar_path_for(ckpt).exists()


# --------------------------------------------------------------------------------------------
# Reading hostile and broken files


def alias_bomb(levels: int = 9, width: int = 10) -> bytes:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return ("\n".join(lines) + "\n").encode()


def canary_tag(tag: str) -> Callable[[Path], bytes]:
    return lambda canary: f'{tag} ["touch {canary}"]\n'.encode()


RNG_BYTES = random.Random(20251018).randbytes(4096)

#: (id, content given the canary path, a word the reason must contain or None)
BAD_SIDECARS: list[tuple[str, Callable[[Path], bytes], str | None]] = [
    ("malformed", lambda c: b"exp_name: [1, 2\ntraining: }\n", "YAML error"),
    ("bad-indent", lambda c: b"training:\n  epoch: 1\n global_step: 2\n", "YAML error"),
    ("tab-indent", lambda c: b"training:\n\tepoch: 1\n", "YAML error"),
    ("two-documents", lambda c: seed_yaml().encode() + b"---\nexp_name: x\n", "YAML error"),
    ("list", lambda c: b"- exp_name\n- training\n", "mapping"),
    ("scalar", lambda c: b"42\n", "mapping"),
    ("string", lambda c: b"just some text\n", "mapping"),
    ("null", lambda c: b"~\n", "mapping"),
    ("empty", lambda c: b"", "empty"),
    ("comment-only", lambda c: b"# nothing here\n", "empty"),
    (
        "wrong-type",
        lambda c: seed_yaml(training="{epoch: ten, global_step: 1}").encode(),
        "training.epoch",
    ),
    ("metric-above-1", lambda c: seed_yaml(metrics="{hmean: 1.5}").encode(), "metrics.hmean"),
    ("metric-below-0", lambda c: seed_yaml(metrics="{recall: -0.2}").encode(), "metrics.recall"),
    ("metric-nan", lambda c: seed_yaml(metrics="{precision: .nan}").encode(), "metrics.precision"),
    (
        "negative-epoch",
        lambda c: seed_yaml(training="{epoch: -1, global_step: 1}").encode(),
        "training.epoch",
    ),
    ("schema-2", lambda c: seed_yaml(schema_version="'2.0'").encode(), "schema version"),
    ("python-apply", canary_tag("!!python/object/apply:os.system"), "python/object/apply"),
    ("python-new", canary_tag("!!python/object/new:os.system"), "python/object/new"),
    ("python-name", lambda c: b"exp_name: !!python/name:os.system\n", "python/name"),
    ("python-module", lambda c: b"exp_name: !!python/module:os\n", "python/module"),
    (
        "python-in-field",
        lambda c: seed_yaml(wandb_run_id=f'!!python/object/apply:os.system ["touch {c}"]').encode(),
        "python/object/apply",
    ),
    ("alias-bomb", lambda c: alias_bomb(), "alias"),
    ("alias-bomb-in-seed", lambda c: seed_yaml().encode() + alias_bomb(), "alias"),
    ("cyclic-alias", lambda c: b"&a [*a]\n", "cycle"),
    ("cyclic-mapping", lambda c: b"exp_name: &a {x: *a}\n", "cycle"),
    ("undefined-alias", lambda c: b"exp_name: *nowhere\n", "YAML error"),
    ("deep-open", lambda c: b"[" * 10_000, "YAML"),
    ("deep-closed", lambda c: b"[" * 10_000 + b"]" * 10_000, "YAML"),
    ("deep-mapping", lambda c: b"a: " + b"{b: " * 5_000 + b"1" + b"}" * 5_000, "YAML"),
    ("binary-with-nul", lambda c: RNG_BYTES + b"\x00", "binary"),
    ("invalid-utf8", lambda c: bytes(b for b in RNG_BYTES if b), "UTF-8"),
    ("latin1-text", lambda c: "exp_name: caf\xe9\n".encode("latin-1"), "UTF-8"),
    (
        "oversized",
        lambda c: b"# " + b"x" * MAX_SIDECAR_BYTES + b"\n" + seed_yaml().encode(),
        "limit",
    ),
    # The YAML constructor raises plain Python errors for these, not YAMLError.
    ("impossible-date", lambda c: seed_yaml(created_at="2025-02-30").encode(), "range"),
    ("impossible-month", lambda c: seed_yaml(created_at="2025-13-01T10:00:00").encode(), "month"),
    ("huge-integer", lambda c: seed_yaml(wandb_run_id="1" * 5_000).encode(), "digit"),
    # Parses (hex is exempt from the digit limit), but showing it in decimal is not.
    ("huge-hex", lambda c: seed_yaml(exp_name="0x" + "f" * 5_000).encode(), "exp_name"),
    ("bad-timestamp-tag", lambda c: b"created_at: !!timestamp yesterday\n", None),
    ("bad-int-tag", lambda c: b"exp_name: !!int ten\n", None),
    ("bad-float-tag", lambda c: b"exp_name: !!float ten\n", None),
]
BAD_IDS = [case[0] for case in BAD_SIDECARS]


@pytest.mark.parametrize("make, word", [c[1:] for c in BAD_SIDECARS], ids=BAD_IDS)
def test_bad_sidecar_is_rejected_with_a_reason(
    tmp_path: Path, make: Callable[[Path], bytes], word: str | None
) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "run.metadata.yaml"
    path.write_bytes(make(canary))
    reason = rejected(path)
    if word is not None:
        assert word.lower() in reason.lower(), reason
    assert not canary.exists(), "a YAML tag executed code"


def test_sparse_huge_file_is_rejected_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "run.metadata.yaml"
    with open(path, "wb") as handle:
        handle.truncate(2 * 1024 * MiB)
    assert "limit" in rejected(path)  # rejected() bounds memory well below 2 GB


def test_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "run.metadata.yaml"
    path.mkdir()
    assert "directory" in rejected(path).lower()
    with pytest.raises(SidecarError):
        load_metadata(tmp_path / "run.ckpt")


def test_unreadable_file_is_rejected(shared_dir: Path) -> None:
    path = shared_dir / "run.metadata.yaml"
    path.write_text(seed_yaml())
    path.chmod(0)
    result = run_python(READ_IN_CHILD, str(path), "--drop")
    assert result.returncode == 0, result.stderr
    assert "CONTROL denied" in result.stdout, "the setup failed: the child could read the file"
    assert "REASON sidecar cannot open: Permission denied" in result.stdout, result.stdout


@pytest.mark.parametrize("depth", [30_000, 500_000])
@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_very_deep_nesting_is_rejected_without_crashing(
    tmp_path: Path, depth: int, closed: bool
) -> None:
    # Still under the size limit; the composer must not recurse once per level.
    path = tmp_path / "run.metadata.yaml"
    path.write_bytes(b"[" * depth + (b"]" * depth if closed else b""))
    assert path.stat().st_size <= MAX_SIDECAR_BYTES
    result = run_python(READ_IN_CHILD, str(path))
    assert result.returncode == 0, f"reader crashed (exit {result.returncode}): {result.stderr}"
    assert "REASON " in result.stdout and "YAML" in result.stdout


def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "run.metadata.yaml"
    os.mkfifo(path)
    result = run_python(READ_IN_CHILD, str(path), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "REASON " in result.stdout


# --------------------------------------------------------------------------------------------
# A sync survives them all


def plant(root: Path, case_id: str, content: bytes) -> Path:
    """``root/<case_id>/bad.ckpt`` with ``content`` as its sidecar; return the sidecar path."""
    ckpt = write_checkpoint(root / case_id / "bad.ckpt")
    sidecar = sidecar_path_for(ckpt)
    sidecar.write_bytes(content)
    return sidecar


def plant_good(root: Path) -> None:
    write_checkpoint(root / "good" / "epoch=10.ckpt", seed_document())


@pytest.mark.parametrize("make, word", [c[1:] for c in BAD_SIDECARS], ids=BAD_IDS)
def test_sync_survives_a_bad_sidecar(
    outputs: Path, db_path: Path, invoke, make: Callable[[Path], bytes], word: str | None
) -> None:
    plant_good(outputs)
    bad = plant(outputs, "case", make(outputs / "CANARY"))

    summary = run_sync(outputs, db_path)
    assert (summary.valid, summary.invalid) == (1, 1)
    [(path, reason)] = summary.invalid_files
    assert path == str(bad)
    assert_one_line(reason)
    if word is not None:
        assert word.lower() in reason.lower()
    indexed = rows(db_path)
    assert indexed["epoch=10.ckpt"]["status"] == "valid"
    assert indexed["epoch=10.ckpt"]["hmean"] == 0.8430
    assert (indexed["bad.ckpt"]["status"], indexed["bad.ckpt"]["error"]) == ("invalid", reason)
    assert not (outputs / "CANARY").exists()

    assert invoke("sync", str(outputs)).exit_code == 0
    assert invoke("sync", str(outputs), "--strict").exit_code == 1


def test_sync_survives_every_bad_sidecar_in_one_tree(outputs: Path, db_path: Path, invoke) -> None:
    plant_good(outputs)
    planted = {
        str(plant(outputs, case_id, make(outputs / "CANARY"))) for case_id, make, _ in BAD_SIDECARS
    }
    big = plant(outputs, "sparse-2gb", b"")
    os.truncate(big, 2 * 1024 * MiB)
    planted.add(str(big))
    # A directory where the sidecar should be: the sync must carry on regardless.
    write_checkpoint(outputs / "dir-sidecar" / "bad.ckpt")
    (outputs / "dir-sidecar" / "bad.metadata.yaml").mkdir()
    planted.add(str(outputs / "dir-sidecar" / "bad.metadata.yaml"))

    summary = run_sync(outputs, db_path)
    assert summary.valid == 1
    assert summary.invalid == len(planted)
    assert {path for path, _ in summary.invalid_files} == planted
    for _, reason in summary.invalid_files:
        assert_one_line(reason)
    statuses = {
        Path(row["checkpoint_path"]).parent.name: row["status"] for row in rows_all(db_path)
    }
    assert statuses.pop("good") == "valid"
    assert set(statuses.values()) == {"invalid"}
    assert not (outputs / "CANARY").exists()

    result = invoke("sync", str(outputs))
    assert result.exit_code == 0
    assert f"{len(planted)} invalid" in result.output
    strict = invoke("sync", str(outputs), "--strict")
    assert strict.exit_code == 1
    assert f"{len(planted)} invalid sidecar(s)" in strict.output
    report = json.loads(invoke("sync", str(outputs), "--format", "json").stdout)
    assert {item["path"] for item in report["invalid_files"]} == planted


def rows_all(db_path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT checkpoint_path, status FROM checkpoints").fetchall()


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_deep(path: Path) -> None:
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("make", [make_fifo, make_deep], ids=["fifo", "deep-100k"])
def test_sync_survives_a_sidecar_that_could_crash_or_hang_it(
    outputs: Path, db_path: Path, make: Callable[[Path], None]
) -> None:
    plant_good(outputs)
    ckpt = write_checkpoint(outputs / "case" / "bad.ckpt")
    make(sidecar_path_for(ckpt))
    result = run_python(SYNC_IN_CHILD, str(outputs), str(db_path), timeout=30)
    assert result.returncode == 0, f"sync died (exit {result.returncode}): {result.stderr[-2000:]}"
    summary = json.loads(result.stdout)
    assert (summary["valid"], summary["invalid"]) == (1, 1)
    assert summary["invalid_files"][0]["path"] == str(sidecar_path_for(ckpt))


def test_sync_records_an_unreadable_sidecar(shared_dir: Path) -> None:
    root, warmup = shared_dir / "outputs", shared_dir / "warmup"
    plant_good(warmup)  # the warm-up reads a checkpoint too: every lazy import (a zip codec) loads
    plant_good(root)
    sidecar = plant(root, "case", seed_yaml().encode())
    sidecar.chmod(0)
    result = run_python(
        SYNC_IN_CHILD,
        str(root),
        str(shared_dir / "index.db"),
        str(shared_dir / "warmup.db"),
        str(warmup),
        "--drop",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert (summary["valid"], summary["invalid"]) == (1, 1)
    assert summary["invalid_files"] == [
        {"path": str(sidecar), "reason": "sidecar cannot open: Permission denied"}
    ]
