"""Numbers for people: the one place that turns byte counts and counts into text.

Tables and text summaries use these; ``--json`` output keeps raw integers so scripts
never parse "1.2 GiB".
"""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units, as ``du -h`` and ``ls -lh`` use; None -> "-"."""
    if n is None:
        return "-"
    x = float(n)
    for unit in _UNITS:
        if abs(x) < 1024 or unit == _UNITS[-1]:
            return f"{int(n):,} B" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024
    raise AssertionError("unreachable")


def human_count(n: int | None) -> str:
    """``12345`` -> ``"12,345"``; None -> "-"."""
    return "-" if n is None else f"{n:,}"
