# Sourced by the scripts here: make ./.venv with the project and its test extras installed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CKPT_INDEX_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.ckpt-index-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The CPU build of torch first, so that lightning does not pull a multi-GB CUDA build.
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -e "$repo[test]"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
