#!/usr/bin/env bash
# The quality gates: `bash scripts/check.sh`. Creates ./.venv with the dev tools on first use.
#   ruff check            lint (rules E, W, F, I, B, UP; line length 100) of the package, tests,
#                         scripts and examples
#   ruff format --check   the same files as `ruff format` would write them
#   mypy                  the package, with check_untyped_defs (settings in pyproject.toml)
#   lint-imports          the layer contracts in pyproject.toml ([tool.importlinter])
# Every gate runs and prints its figure; the exit status is 1 when any of them failed. `ruff
# format PATHS` and `ruff check --fix PATHS` repair most of what the first two report.
extras=dev source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$repo"
paths=(ckpt_index tests scripts examples)
failed=()
summary='^(All checks passed|Found [0-9]+ error|[0-9]+ files? (already formatted|would be)|Success:|Contracts:)'

gate() {
    local name="$1" output status
    shift
    set +e
    output="$("$@" 2>&1)"
    status=$?
    set -e
    if [ "$status" -ne 0 ]; then
        printf '%s\n' "$output"
        failed+=("$name")
    fi
    # The figure: the tool's own summary line ("Found 3 errors.", "Success: ...", "Contracts: ...").
    local figure
    figure="$(printf '%s\n' "$output" | grep -E "$summary" | tail -n 1 || true)"
    [ -n "$figure" ] || figure="$(printf '%s\n' "$output" | grep -v '^[[:space:]]*$' | tail -n 1)"
    printf '%-22s %s\n' "$name:" "$figure"
}

gate "ruff check" ruff check "${paths[@]}"
gate "ruff format --check" ruff format --check "${paths[@]}"
gate "mypy" mypy
gate "lint-imports" lint-imports --no-cache

if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all gates passed"
