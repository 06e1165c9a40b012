#!/usr/bin/env python
"""Rename checkpoints from older formats to the naming scheme (same as `ckpt-index rename`).

    python scripts/migrate_checkpoints.py outputs/ [--dry-run] [--delete-old --keep-from-epoch N] [-v]
"""

import sys

from ckpt_index.cli import cli

if __name__ == "__main__":
    cli.main(args=["rename", *sys.argv[1:]], prog_name="migrate_checkpoints.py")
