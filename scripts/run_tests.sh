#!/usr/bin/env bash
# Run the test suite: `bash scripts/run_tests.sh [pytest args]`. Creates ./.venv on first use.
# Index tests run on SQLite and on PostgreSQL ($CKPT_INDEX_TEST_PG, default the local server);
# without a reachable server those are skipped, except under CI=true, where they fail.
extras=test source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$repo"
exec python -m pytest -n "${CKPT_INDEX_TEST_WORKERS:-2}" "$@"
