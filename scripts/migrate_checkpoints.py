#!/usr/bin/env python
"""Rename checkpoints from older formats to the naming scheme (same as `ckpt-index rename`).

    python scripts/migrate_checkpoints.py outputs/ [--dry-run]
        [--delete-old --keep-from-epoch N] [-v]

Nothing is overwritten; best*/last* names and files that a link or hard link aliases are never
deleted; links follow their renamed target; an interrupted run completes when run again.
"""

import sys

from ckpt_index.cli import cli

if __name__ == "__main__":
    cli.main(args=["rename", *sys.argv[1:]], prog_name="migrate_checkpoints.py")
