#!/usr/bin/env bash
# The main job end to end on the embedded SQLite default: build a demo outputs tree, sync it into
# ./ckpt_index.db, and ask for the best checkpoint by hmean and the top ten.
# `bash scripts/demo.sh`. Creates ./.venv on first use; safe to run again.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$repo"
set -x
[ -d demo_outputs ] || ckpt-index demo demo_outputs
ckpt-index sync demo_outputs
ckpt-index query --best-by hmean
ckpt-index query --sort hmean:desc --limit 10
