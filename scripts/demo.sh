#!/usr/bin/env bash
# The main job end to end on the embedded SQLite default: build a demo outputs tree, sync it into
# ./ckpt_index.db, and ask for the best checkpoint by hmean, the top ten, and the best per learning
# rate of the demo's sweep with the hyperparameters that differ.
# `bash scripts/demo.sh`. Creates ./.venv on first use; safe to run again. Works in the
# repository's folder, or in $CKPT_INDEX_DEMO_DIR when set (the smoke test's temporary folder).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "${CKPT_INDEX_DEMO_DIR:-$repo}"
set -x
[ -d demo_outputs ] || ckpt-index demo demo_outputs
ckpt-index sync demo_outputs
ckpt-index query --best-by hmean
ckpt-index query --sort hmean:desc --limit 10
ckpt-index query --group-by params.model.optimizer.lr --best-by hmean --varying
