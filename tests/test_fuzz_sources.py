"""Fuzzing the untrusted readers other than the checkpoint reader (issue 8, item 9).

Targets: the sidecar loader (``parse_sidecar_bytes`` + validation), the W&B transaction-log
reader (``read_run`` on mutations of a real offline log written by the wandb SDK), a W&B run's
``files/`` (mutated ``config.yaml`` and ``wandb-summary.json``) and the Hydra config reader
(``load_config`` on mutated and generated YAML). Each may let only its documented
error escape: ``SidecarError`` for the first and the last, nothing at all for ``read_run``.

``CKPT_INDEX_FUZZ_EXAMPLES`` sets the examples per target (default 200). Every input that once
broke a reader is kept in ``tests/data/fuzz_sources/`` and replayed by
:func:`test_regression_case`.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from helpers.sidecars import SEED_SIDECARS
from helpers.wandb_log import frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt_index.sources.wandb as ws
from ckpt_index.sidecar.files import (
    SidecarError,
    parse_sidecar_bytes,
    parse_yaml_bytes,
    validate_document,
)
from ckpt_index.sources.hydra import load_config, model_fields
from ckpt_index.sources.wandb import files as wfiles
from ckpt_index.sources.wandb import log as wlog

EXAMPLES = int(os.environ.get("CKPT_INDEX_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
REGRESSIONS = Path(__file__).parent / "data" / "fuzz_sources"

# YAML fragments that reach the loader's corners: nesting, aliases, tags, odd scalars.
TOKENS = [
    b"[",
    b"]",
    b"{",
    b"}",
    b"- ",
    b"? ",
    b": ",
    b"\n",
    b"\n  ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"!!timestamp ",
    b"!!set ",
    b"!!omap ",
    b"!!python/object:os.system ",
    b"!!int ",
    b"!!float ",
    b"2024-01-01",
    b"2025-02-30",
    b"18446744073709551616",
    b"9" * 5000,
    b".nan",
    b"-.inf",
    b'"\\0"',
    b'"\\ud800"',
    b'"\\x00"',
    b"~",
    b"null",
    b"<<: *a",
    b"%YAML 1.1\n",
    b"---\n",
    b"...\n",
    b"\t",
    b"#",
    b"'",
    b'"',
    b"|",
    b">",
    b"\xff",
    b"\xed\xa0\x80",
    "é".encode(),
    b"epoch: ",
    b"global_step: ",
    b"metrics: ",
    b"hparams: ",
    b"${x}",
    b"_target_: ",
]


def mutate(data: bytes, rng: random.Random, tokens: list[bytes] = TOKENS) -> bytes:
    """A few random edits of ``data``: flips, cuts, duplicated slices, inserted tokens."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.choice(tokens) * rng.choice([1, 1, 2, 70, 1000])
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3 and buf:
            end = min(len(buf), pos + rng.randint(1, 256))
            buf[pos:pos] = buf[pos:end] * rng.randint(1, 4)
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del buf[pos:]
    return bytes(buf)


# Generated documents: plain data plus what YAML can add (dates, huge and odd numbers, odd keys).
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.dates()
    | st.datetimes()
    | st.sampled_from(["${a.b}", "<ocr.Net>", "a\x00b", "-1", "2**64"])
)
KEYS = st.text(max_size=12) | st.integers() | st.booleans() | st.none() | st.dates()
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=25,
)


def _dump(value: object) -> bytes | None:
    try:
        return yaml.safe_dump(value, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:
        return None


def _assert_plain(value: object) -> None:
    """JSON-able and storable: no dates or bytes, no lone surrogates."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------------------------
# The sidecar loader


def _load_sidecar(data: bytes) -> None:
    try:
        meta = validate_document(
            parse_sidecar_bytes(data, "fuzz.metadata.yaml"), "fuzz.metadata.yaml"
        )
    except SidecarError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    meta.model_dump(mode="json")  # what a valid sidecar becomes must be writable as a row


def _same_as_pyyaml(data: bytes) -> None:
    """The sidecar loader builds what PyYAML's safe loader builds, or refuses with a reason."""
    try:
        ours = parse_yaml_bytes(data, "fuzz.yaml")
    except SidecarError:
        return  # refused (a guard or a YAML error): the other properties cover the reason
    expected = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert ours == expected or (ours != ours and repr(ours) == repr(expected))  # NaN != NaN


@FUZZ
@given(value=st.dictionaries(KEYS, DOCUMENTS, max_size=6), flow=st.booleans())
def test_fuzz_plain_constructor_matches_pyyaml(value: dict, flow: bool) -> None:
    data = (
        _dump(value)
        if not flow
        else yaml.safe_dump(value, default_flow_style=True).encode("utf-8", "surrogatepass")
    )
    if data is not None:
        _same_as_pyyaml(data)


@FUZZ
@given(seed=st.sampled_from(SEED_SIDECARS), rng=st.randoms(use_true_random=False))
def test_fuzz_plain_constructor_matches_pyyaml_on_mutations(seed: Path, rng: random.Random) -> None:
    _same_as_pyyaml(mutate(seed.read_bytes(), rng))


def _same_sidecar_as_pyyaml(data: bytes) -> None:
    """parse_sidecar_bytes (whose ``hyperparameters`` block is parsed once per distinct text)
    builds what PyYAML builds, on a first read and on a repeated one, or refuses."""
    for _ in range(2):  # the second read takes the block from the cache
        try:
            ours = parse_sidecar_bytes(data, "fuzz.metadata.yaml")
        except SidecarError:
            return
        expected = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert ours == expected or (ours != ours and repr(ours) == repr(expected))


@FUZZ
@given(
    seed=st.sampled_from(SEED_SIDECARS),
    block=st.dictionaries(KEYS, DOCUMENTS, max_size=6),
    flow=st.booleans(),
    rng=st.randoms(use_true_random=False),
    mutated=st.booleans(),
)
def test_fuzz_sidecar_hyperparameters_block_matches_pyyaml(
    seed: Path, block: dict, flow: bool, rng: random.Random, mutated: bool
) -> None:
    # A seed sidecar with a hyperparameters block (block or flow style), as is or mutated: the
    # split parse must agree with PyYAML's whole parse, or refuse.
    try:
        dumped = yaml.safe_dump(
            {"hyperparameters": block}, default_flow_style=flow or None, allow_unicode=True
        )
    except yaml.YAMLError:
        return
    data = seed.read_bytes().rstrip(b"\n") + b"\n" + dumped.encode("utf-8", "surrogatepass")
    _same_sidecar_as_pyyaml(mutate(data, rng) if mutated else data)


@pytest.mark.parametrize(
    "text",
    [
        "<<: {a: 1}\nb: 2\n",
        "a: &x [1]\nb: *x\n",
        "a: !!str 1\n",
        "=: 3\n",
        "2024-01-01: x\n",
        "1: a\n1.5: b\nnull: c\ntrue: d\n",
        "a: !!set {x, y}\n",
        "a: !!omap [{b: 1}]\n",
        "a: !!binary aGk=\n",
        "a: [1, {b: [2, {c: .nan}]}]\n",
        "'1': x\n'true': y\n",
    ],
)
def test_plain_constructor_matches_pyyaml_on_yaml_corners(text: str) -> None:
    _same_as_pyyaml(text.encode())


@FUZZ
@given(seed=st.sampled_from(SEED_SIDECARS), rng=st.randoms(use_true_random=False))
def test_fuzz_sidecar_mutations(seed: Path, rng: random.Random) -> None:
    _load_sidecar(mutate(seed.read_bytes(), rng))


@FUZZ
@given(
    seed=st.sampled_from(SEED_SIDECARS),
    key=st.text(min_size=1, max_size=20)
    | st.sampled_from(
        [
            "epoch",
            "global_step",
            "metrics",
            "hparams",
            "monitor",
            "created_at",
            "schema_version",
            "checkpoint",
            "training",
            "model",
            "experiment",
        ]
    ),
    value=DOCUMENTS,
)
def test_fuzz_sidecar_generated_fields(seed: Path, key: str, value: object) -> None:
    document = yaml.safe_load(seed.read_text())
    document[key] = value
    data = _dump(document)
    if data is not None:
        _load_sidecar(data)


# --------------------------------------------------------------------------------------------
# The W&B transaction-log reader


@pytest.fixture(scope="session")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a log written by ``wandb.init(mode="offline")``: config, rows, summary."""
    base = tmp_path_factory.mktemp("fuzz_wandb")
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "WANDB_API_KEY",
            "WANDB_BASE_URL",
            "WANDB_ENTITY",
            "WANDB_PROJECT",
            "WANDB_RUN_ID",
        ):
            mp.delenv(var, raising=False)
        for var, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "NETRC": str(base / "no-netrc"),
        }.items():
            mp.setenv(var, value)
        for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
            (base / name.lower()).mkdir()
            mp.setenv(f"WANDB_{name}", str(base / name.lower()))
        import wandb

        run = wandb.init(
            mode="offline",
            dir=base,
            project="fuzz",
            config={
                "model": {
                    "architecture": "dbnet",
                    "component_overrides": {"encoder": {"model_name": "r50"}},
                },
                "exp_name": "fuzz",
                "lr": 0.001,
            },
        )
        run.define_metric("*", step_metric="trainer/global_step")
        for step in range(1, 41):
            row = {"train/loss": 1 / step, "trainer/global_step": step, "nested": {"a": step}}
            if step == 20:
                row["notes"] = "x" * 40_000  # a record split over several chunks
            run.log(row)
        run.summary["val/hmean"] = 0.9
        run.finish()
        wandb.teardown()
    (log,) = base.rglob("run-*.wandb")
    for _ in range(300):  # the service flushes after finish() returns
        problems: list[str] = []
        payloads = list(wlog._log_records(log, problems))
        if payloads and not problems:
            return log.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"the wandb log stayed incomplete: {problems}")


def read_log_bytes(data: bytes) -> ws.WandbRun:
    """``read_run`` on a run folder holding ``data`` as its log; asserts the reader's contract."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "wandb" / "offline-run-20250101_000000-fuzz0001"
        run_dir.mkdir(parents=True)
        (run_dir / "run-fuzz0001.wandb").write_bytes(data)
        wfiles._read_cache.clear()
        run = ws.read_run(ws.RunLocation("fuzz0001", run_dir))
    assert run is not None
    _assert_plain(run.config)
    _assert_plain(run.summary)
    assert all(isinstance(w, str) for w in run.warnings)
    ws.model_fields_from_config(run.config)
    for step in run.steps[:3]:
        run.checkpoint_metrics(step)
    return run


def test_the_real_log_reads_cleanly(real_log: bytes) -> None:
    run = read_log_bytes(real_log)
    assert run.warnings == []
    assert run.lightning_steps
    assert ws.model_fields_from_config(run.config) == {
        "architecture": "dbnet",
        "encoder": "r50",
        "exp_name": "fuzz",
    }
    assert run.checkpoint_metrics(11) == {"train/loss": 0.1, "nested.a": 10.0}
    # Reframing the real records gives the same run: the record-level fuzzing below is faithful.
    assert read_log_bytes(frame(_payloads(real_log))).history == run.history


def _payloads(data: bytes) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wandb"
        path.write_bytes(data)
        return list(wlog._log_records(path, []))


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_wandb_log_bytes(real_log: bytes, rng: random.Random) -> None:
    # Byte edits: mostly caught by the chunk checksums, which is the framing's job.
    read_log_bytes(mutate(real_log, rng, [b"\x00", b"\xff" * 7, real_log[7:200]]))


@FUZZ
@given(rng=st.randoms(use_true_random=False), data=st.data())
def test_fuzz_wandb_log_records(real_log: bytes, rng: random.Random, data: st.DataObject) -> None:
    # Record edits under valid checksums reach the protobuf decoder and the record handling.
    payloads = _payloads(real_log)
    for _ in range(data.draw(st.integers(1, 6))):
        i = rng.randrange(len(payloads))
        choice = rng.randrange(4)
        if choice == 0:
            payloads[i] = mutate(payloads[i], rng, [b"\x00", b"\xff", payloads[i][:32]])
        elif choice == 1:
            payloads.insert(i, payloads[rng.randrange(len(payloads))])
        elif choice == 2:
            payloads[i] = payloads[i][: rng.randrange(len(payloads[i]) + 1)]
        else:
            payloads[i] = data.draw(st.binary(max_size=64))
    read_log_bytes(frame(payloads))


WANDB_CONFIG_YAML = b"""\
wandb_version: 1
_wandb:
  desc: null
  value:
    m:
    - {1: trainer/global_step, 6: [3]}
    - {1: val/hmean, 5: 1, 6: [1, 3]}
model:
  desc: null
  value: {architecture: dbnet, component_overrides: {encoder: {model_name: resnet18}}}
exp_name: {value: ocr_v1}
created: {value: 2024-01-01}
"""
WANDB_SUMMARY = (
    b'{"val/hmean": 0.91, "_step": 40, "_wandb": {"runtime": 12}, "trainer/global_step": 399}'
)


def read_run_files(config: bytes, summary: bytes) -> ws.WandbRun:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "wandb" / "run-20250101_000000-fuzz0002"
        (run_dir / "files").mkdir(parents=True)
        (run_dir / "files" / "config.yaml").write_bytes(config)
        (run_dir / "files" / "wandb-summary.json").write_bytes(summary)
        wfiles._read_cache.clear()
        return ws.read_run(ws.RunLocation("fuzz0002", run_dir))


def test_the_seed_run_files_read() -> None:
    run = read_run_files(WANDB_CONFIG_YAML, WANDB_SUMMARY)
    assert (run.source, run.warnings, run.lightning_steps) == ("files", [], True)
    assert run.config["created"] == "2024-01-01"
    assert ws.model_fields_from_config(run.config) == {
        "architecture": "dbnet",
        "encoder": "resnet18",
        "exp_name": "ocr_v1",
    }


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_wandb_run_files(rng: random.Random) -> None:
    run = read_run_files(
        mutate(WANDB_CONFIG_YAML, rng),
        mutate(WANDB_SUMMARY, rng, [b"[", b"{", b'"\\ud800"', b"1e999", b"9" * 5000, b","]),
    )
    _assert_plain(run.config)
    _assert_plain(run.summary)
    ws.model_fields_from_config(run.config)


# --------------------------------------------------------------------------------------------
# The Hydra config reader

HYDRA_CONFIG = b"""\
exp_name: ocr_v1
created: 2024-01-01
paths:
  output_dir: ${hydra:runtime.output_dir}
model:
  architecture: dbnet
  component_overrides:
    encoder: {model_name: resnet50, pretrained: true}
    decoder: {_target_: ocr.models.decoders.PANDecoder, in_channels: [256, 512, 1024, 2048]}
    head: {name: db_head}
    loss: {name: db_loss}
trainer: {max_epochs: 100, precision: 16-mixed}
defaults: &defaults {lr: 0.001}
optimizer: {<<: *defaults, name: adam}
logger:
  wandb: {id: abc123}
"""


def _load_config_bytes(data: bytes, suffix: str = "config.yaml") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / suffix
        path.write_bytes(data)
        try:
            config = load_config(path)
        except SidecarError as exc:
            assert exc.reason and "\n" not in exc.reason
            return
    _assert_plain(config)
    assert all(isinstance(v, str) for v in model_fields(config).values())


def test_the_seed_config_loads() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(HYDRA_CONFIG)
        assert model_fields(load_config(path))["decoder"] == "PANDecoder"


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_fuzz_hydra_config_mutations(rng: random.Random) -> None:
    _load_config_bytes(mutate(HYDRA_CONFIG, rng))


@FUZZ
@given(value=DOCUMENTS, as_json=st.booleans())
def test_fuzz_hydra_config_generated(value: object, as_json: bool) -> None:
    if as_json:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            return
        _load_config_bytes(text.encode("utf-8", "surrogatepass"), "x.resolved.config.json")
    else:
        data = _dump(value if isinstance(value, dict) else {"value": value})
        if data is not None:
            _load_config_bytes(data)


# --------------------------------------------------------------------------------------------
# Regression cases: each input once broke a reader; <target>-<name>.<ext> names the reader.


def _cases() -> list[Path]:
    return (
        sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and p.name != "README.md")
        if REGRESSIONS.is_dir()
        else []
    )


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_regression_case(case: Path) -> None:
    data = case.read_bytes()
    target = case.name.split("-", 1)[0]
    if target == "sidecar":
        _load_sidecar(data)
    elif target == "hydra":
        _load_config_bytes(
            data, "x.resolved.config.json" if case.suffix == ".json" else "config.yaml"
        )
    elif target == "wandb":
        read_log_bytes(data)
    else:
        raise AssertionError(f"{case.name}: unknown target {target!r}")
