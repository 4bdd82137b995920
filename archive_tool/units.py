"""Numbers for people: the one place that turns byte counts and counts into text.

Tables and text summaries use these; ``--json`` output keeps raw integers so scripts
never parse "1.2 GiB".
"""

from __future__ import annotations

import re

from archive_tool.errors import BadArgument

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


_AGE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdwy]?)\s*$")
_UNIT_DAYS = {"s": 1 / 86400, "m": 1 / 1440, "h": 1 / 24, "d": 1.0, "": 1.0, "w": 7.0,
              "y": 365.0}


def parse_age(text: str) -> float:
    """``"180d"`` -> 180.0 days; ``s``, ``m`` (minutes), ``h``, ``d`` (default), ``w``,
    ``y`` units: the one age syntax of every command's --older-than and --stale-after."""
    m = _AGE.match(str(text))
    if not m:
        raise BadArgument(f"age must look like 180d, 12h, 30m, 2w or 1y, got {text!r}")
    return float(m.group(1)) * _UNIT_DAYS[m.group(2)]
