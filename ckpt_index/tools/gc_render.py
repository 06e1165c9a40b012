"""The plan of ``ckpt-index gc`` for a person: one line per checkpoint (KEEP/DELETE, size, value,
path relative to its root, reasons), then the bytes freed per experiment, the total and what
``--apply`` would do.

Paths come from the tree and are untrusted: control characters are escaped before they reach a
terminal. At a terminal width the path is elided in the middle (keeping its file name) and the
reasons at their end; piped, every value is whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ckpt_index.query.render import escape_control
from ckpt_index.query.table import elide, human_size
from ckpt_index.tools.gc_plan import DELETE, GcItem, GcPlan

_GAP = "  "
_ELLIPSIS = "\u2026"
_LEAST_PATH = 24
_LEAST_REASONS = 16


def relative_path(item: GcItem) -> str:
    """The checkpoint's path relative to its root (as the table shows it)."""
    path, root = item.checkpoint_path, item.root
    prefix = root if root.endswith("/") else root + "/"
    if path.startswith(prefix) and "/." not in path and "//" not in path:
        return path[len(prefix) :]  # what relpath gives for a normalised path, 30 times faster
    return os.path.relpath(path, root)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_plan(plan: GcPlan, *, width: int | None = None, trash: str | None = None) -> str:
    """The whole plan as text; ``width``: the terminal's (None: no line is cut)."""
    metric = plan.policy.by.rpartition(":")[0] if _has_direction(plan.policy.by) else plan.policy.by
    header = ["ACTION", "SIZE", metric.upper() if len(metric) <= 12 else "VALUE", "PATH", "REASONS"]
    lines: list[str] = []
    several = len(plan.roots) > 1
    for root in plan.roots:
        items = [item for item in plan.items if item.root == root]
        if several:
            lines.append(escape_control(f"{root}:"))
        rows = [
            [
                item.action.upper(),
                human_size(item.size),
                _value(item.value),
                escape_control(relative_path(item)),
                escape_control("; ".join(item.reasons)),
            ]
            for item in items
        ]
        lines += _table(header, rows, width)
        if several:
            lines.append("")
    if not plan.items:
        lines.append("no indexed checkpoint under the roots (run `ckpt-index sync` first?)")
    lines += summary_lines(plan, trash=trash, width=width)
    return "\n".join(lines)


def _has_direction(by: str) -> bool:
    return by.rpartition(":")[2].lower() in ("max", "min", "asc", "desc") and ":" in by


def _table(header: list[str], rows: Sequence[list[str]], width: int | None) -> list[str]:
    natural = [max([len(header[i]), *(len(r[i]) for r in rows)]) for i in range(len(header))]
    widths = list(natural)
    if width is not None:
        fixed = sum(natural[:3]) + len(_GAP) * 4
        room = max(width - fixed, _LEAST_PATH + _LEAST_REASONS)
        path = min(natural[3], max(_LEAST_PATH, room - min(natural[4], room // 2)))
        widths[3] = path
        widths[4] = max(_LEAST_REASONS, room - path)
    out = []
    for row in [header, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            row[1].rjust(widths[1]),
            row[2].rjust(widths[2]),
            elide(row[3], widths[3], _ELLIPSIS, path=True).ljust(widths[3]),
            _cut(row[4], widths[4]),
        ]
        line = _GAP.join(cells).rstrip()
        # Narrower than the least widths: cut the end rather than wrap (as the query table).
        out.append(_cut(line, width) if width is not None else line)
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + _ELLIPSIS


def summary_lines(plan: GcPlan, *, trash: str | None = None, width: int | None = None) -> list[str]:
    """Bytes freed per experiment, the total, and the dry-run footer (experiment names elided
    to ``width``)."""
    deletions = plan.deletions
    counts: dict[str, int] = {}
    deleted: dict[str, int] = {}
    for item in plan.items:
        name = item.exp_name or ""
        counts[name] = counts.get(name, 0) + 1
        deleted[name] = deleted.get(name, 0) + (item.action == DELETE)
    freed = plan.freed_by_group()
    lines = ["", "freed per experiment:"]
    name_width = max([10, *(len(escape_control(n or "-")) for n in counts)])
    if width is not None:
        name_width = max(10, min(name_width, width - 32))
    for name in sorted(counts, key=lambda n: (-freed.get(n, 0), n)):
        label = elide(escape_control(name or "-"), name_width, _ELLIPSIS)
        lines.append(
            f"  {label.ljust(name_width)}  delete {deleted[name]:>4} of {counts[name]:>4}  "
            f"{human_size(freed.get(name, 0)):>6}"
        )
    total = plan.bytes_freed
    lines.append(
        f"total: delete {len(deletions)} of {len(plan.items)} checkpoints, "
        f"free {human_size(total)} ({total} bytes)"
    )
    for marker in plan.interrupted:
        lines.append(
            f"interrupted: {escape_control(marker)} (a deletion an earlier gc --apply did not "
            "finish; the next --apply finishes it first)"
        )
    where = f" (moved to {escape_control(trash)})" if trash else ""
    lines.append(
        f"dry run: nothing deleted; run with --apply to delete {len(deletions)} "
        f"checkpoint{'s' if len(deletions) != 1 else ''} ({human_size(total)}){where}"
    )
    return lines
