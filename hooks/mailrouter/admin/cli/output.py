"""What mailrouter-admin prints: tables and key/value pairs, or one JSON document.

stdout carries the answer only; errors and the progress bar go to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import IO, Any

from mailrouter.admin.session import Page
from mailrouter.exitcodes import EX_OK


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Columns padded to their widest cell, headers upper-cased; ``(none)`` for no rows."""
    if not rows:
        return "(none)"
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def human_bytes(count: int) -> str:
    """``512``, ``1.5K``, ``12.0M``: sizes the way the quota is written."""
    size = float(count)
    for unit in ("", "K", "M"):
        if size < 1024:
            return f"{count}" if not unit else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def quota_text(quota: dict[str, Any]) -> str:
    """A quota object (``limit``, ``limit_bytes``, ``used_bytes``) as one cell."""
    limit = quota.get("limit_bytes")
    used = quota.get("used_bytes")
    text = "unlimited" if limit == 0 else str(quota.get("limit"))
    if limit is None:
        text += " (unreadable)"
    if used is None:
        return text + ", use unknown here"
    text += f", {human_bytes(used)} used"
    if limit:
        text += f" ({min(100, round(100 * used / limit))}%)"
    return text


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) if isinstance(v, dict) else str(v) for v in value) or "-"
    if isinstance(value, dict):
        if "limit_bytes" in value:
            return quota_text(value)
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def pairs(data: dict[str, Any]) -> str:
    """``key  value`` lines, keys padded to the longest."""
    width = max(len(k) for k in data)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in data.items())


class Output:
    """Human text or, with ``--json``, one JSON document on ``out``."""

    def __init__(self, json_output: bool, out: IO[str]) -> None:
        self.json = json_output
        self.out = out

    def emit(self, data: Any, human: str | Callable[[], str]) -> None:
        if self.json:
            self.out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        else:
            text = human() if callable(human) else human
            if text:
                self.out.write(text if text.endswith("\n") else text + "\n")

    def page(self, page: Page, columns: Sequence[str]) -> int:
        """A list as a table (``--json``: a list of rows).  When --offset/--limit cut
        it, the table ends with ``rows A-B of TOTAL`` and the JSON document is
        ``{"items", "total", "offset", "limit"}`` instead."""
        paged = page.limit is not None or page.offset > 0

        def human() -> str:
            text = table(page.items, columns)
            if paged:
                start = page.offset + 1 if page.items else page.offset
                text += f"\nrows {start}-{page.offset + len(page.items)} of {page.total}"
            return text

        self.emit(page.to_json() if paged else page.items, human)
        return EX_OK

    def done(self, result: dict[str, Any]) -> int:
        """A change's result (``{"ok": True, "message": ..., ...}``): the message, or the JSON."""
        self.emit(result, str(result["message"]))
        return EX_OK


class Progress:
    """``[#####.....] 50/100 label`` redrawn in place on ``stream``; a callback for
    :func:`mailrouter.admin.imports.run_import`."""

    WIDTH = 30

    def __init__(self, stream: IO[str], forced: bool, threshold: int) -> None:
        self.stream = stream
        self.forced = forced
        self.threshold = threshold
        self.drawn = False

    def __call__(self, count: int, total: int, label: str) -> None:
        if not (self.forced or (self.stream.isatty() and total >= self.threshold)):
            return
        filled = self.WIDTH * count // total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {count}/{total} {label[:40]:<40}")
        self.stream.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
