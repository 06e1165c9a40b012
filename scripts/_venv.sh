# Sourced by the scripts here: make ./.venv with the project installed (editable).
# Set `extras=test` before sourcing for the test dependencies (torch's CPU build first).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CKPT_INDEX_VENV:-$repo/.venv}"
extras="${extras:-}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.ckpt-index-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "$extras" ]; then
        # The CPU build of torch first, so that lightning does not pull a multi-GB CUDA build.
        "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
        "$venv/bin/python" -m pip install --quiet -e "$repo[$extras]"
    else
        "$venv/bin/python" -m pip install --quiet -e "$repo"
    fi
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
