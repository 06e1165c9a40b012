#!/usr/bin/env python
"""Write metadata sidecars for legacy checkpoints (same flags as `ckpt-index convert`).

python scripts/convert_legacy_checkpoints.py --outputs-dir outputs/ [--force] [--dry-run]
    [--no-recursive] [-v]
"""

from ckpt_index.cli import cli

if __name__ == "__main__":
    cli.main(
        args=["convert", *__import__("sys").argv[1:]], prog_name="convert_legacy_checkpoints.py"
    )
