# Sourced by the scripts here: make ./.venv with the project installed (editable).
# Set `extras` before sourcing for optional dependencies, comma-separated: `extras=test` for the
# test dependencies (torch's CPU build first), `extras=dev` for the quality gates, `extras=test,dev`
# for both. Each extra has its own stamp, so installing `test,dev` once serves `test` and `dev`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CKPT_INDEX_VENV:-$repo/.venv}"
extras="${extras:-}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamps=("$venv/.ckpt-index-installed")
for extra in ${extras//,/ }; do
    stamps+=("$venv/.ckpt-index-installed-$extra")
done
stale=""
for stamp in "${stamps[@]}"; do
    if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
        stale=1
    fi
done
if [ -n "$stale" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    case ",$extras," in
        # The CPU build of torch first, so that lightning does not pull a multi-GB CUDA build.
        *,test,* | *,lightning,*) "$venv/bin/python" -m pip install --quiet "torch==2.13.0" ;;
    esac
    "$venv/bin/python" -m pip install --quiet -e "$repo${extras:+[$extras]}"
    touch "${stamps[@]}"
fi
export PATH="$venv/bin:$PATH"
