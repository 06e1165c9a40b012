"""Every script in scripts/ runs: a rename or an API change cannot silently break one.

Each runs for real on a tiny input (its figures are not checked: speed lives in the scripts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

#: script -> arguments for a small real run
RUNS = {
    "bench_index.py": ["--n", "120", "--repeat", "1", "--skip-naive-above", "0"],
    "bench_fallback_sync.py": ["--count", "10", "--per-run", "5", "--repeat", "1"],
    "bench_gc.py": ["--n", "200", "--repeat", "1"],
    "bench_checkpoint_reader.py": ["--size-gb", "0.01", "--repeat", "1", "--many-tensors", "200"],
    "bench_callback.py": ["--saves", "3", "--top-k", "1"],
    "bench_params_query.py": ["--n", "2000", "--repeat", "2"],
    "bench_params_sync.py": ["--count", "30", "--params", "40", "--repeat", "1"],
    "bench_params_varying.py": ["--n", "200", "--params", "20", "--repeat", "1"],
    "bench_web.py": ["--n", "60", "--repeat", "1"],
    "bench_du.py": ["--n", "300", "--repeat", "1"],
    "convert_legacy_checkpoints.py": ["--outputs-dir", "{tmp}", "--dry-run"],
    "migrate_checkpoints.py": ["{tmp}", "--dry-run"],
}


def test_every_script_is_covered() -> None:
    assert {p.name for p in SCRIPTS.glob("*.py")} == set(RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_script_runs(script: str, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in RUNS[script]]
    for argv in (
        [sys.executable, str(SCRIPTS / script), "--help"],
        [sys.executable, str(SCRIPTS / script), *args],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        # A benchmark exits 1 when a target is missed, which toy sizes on a loaded machine may
        # do: it ran to the end when it printed its verdict and raised nothing.
        verdict = "target" in result.stdout or "checks pass" in result.stdout
        missed = result.returncode == 1 and verdict and "Traceback" not in result.stderr
        finished = result.returncode == 0 or missed
        assert finished, f"{' '.join(argv)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_demo_sh_runs_the_main_job(tmp_path: Path) -> None:
    """The README's first command: a demo tree synced into ./ckpt_index.db, then queried (best by
    hmean, the top ten, the best per learning rate of the demo's sweep). Run in a temporary
    folder through a venv of links to this interpreter (its stamps say "installed", so the
    script installs nothing)."""
    import os
    import shutil

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "ckpt-index"):
        target = shutil.which(name, path=str(Path(sys.executable).parent))
        assert target is not None, name
        (venv / "bin" / name).symlink_to(target)
    for stamp in (".ckpt-index-installed",):
        (venv / stamp).touch()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "CKPT_INDEX_VENV": str(venv), "CKPT_INDEX_DEMO_DIR": str(work)}
    env.pop("CKPT_INDEX_DB", None)
    result = subprocess.run(
        ["bash", str(SCRIPTS / "demo.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (work / "ckpt_index.db").is_file() and (work / "demo_outputs").is_dir()
    lines = result.stdout.splitlines()
    assert lines[0] == "wrote 64 checkpoints under demo_outputs", result.stdout
    assert sum(line.startswith("hmean") for line in lines) == 3, result.stdout  # three queries
    # The last query: one row per learning rate of the sweep (and one for the checkpoint whose
    # fallbacks give none), its column shown.
    last_header = [line for line in lines if line.startswith("hmean")][-1]
    assert "model.optimizer.lr" in last_header.split(), last_header
    assert "synced 64 checkpoints" in result.stderr + result.stdout
