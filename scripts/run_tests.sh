#!/usr/bin/env bash
# Run the test suite: `bash scripts/run_tests.sh [pytest args]`. Creates ./.venv on first use.
extras=test source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$repo"
exec python -m pytest "$@"
