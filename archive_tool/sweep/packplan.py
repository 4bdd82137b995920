"""Which sessions go into which pack: ``--pack daily|weekly|N`` parsed, a session's
period from its ID's timestamp, and the packs of one sweep planned per FINISHED_* dir."""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections import defaultdict
from dataclasses import dataclass

from archive_tool.errors import BadArgument
from archive_tool.sweep.plan import Task

# A day's or week's sessions of one dir beyond this go to further packs (.2, .3 ...):
# bounds one worker's job and the index a reader loads.
MAX_PACK_SESSIONS = 10_000
_ID_DATE = re.compile(r"^(\d{4})Y-(\d{2})M-(\d{2})D-")
_ID_TIME = re.compile(r"^(\d{4})Y-(\d{2})M-(\d{2})D-(\d{2})h(\d{2})m(\d{2})s_")


def parse_pack(value: str | int) -> str | int:
    """``daily`` | ``weekly`` | N (sessions per pack) -> the mode; BadArgument otherwise."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        n = int(value)
        if not 1 <= n <= MAX_PACK_SESSIONS:
            raise BadArgument(f"--pack N wants 1..{MAX_PACK_SESSIONS}, got {n}")
        return n
    v = str(value).strip().lower()
    if v not in ("daily", "weekly"):
        raise BadArgument(f"--pack wants daily, weekly or a number of sessions, got {value!r}")
    return v


def period_of(name: str, mode: str | int) -> str:
    """The pack a session belongs to, from the date in its ID (when it started)."""
    m = _ID_DATE.match(name)
    if not m:
        return "undated"
    d = _dt.date(int(m[1]), int(m[2]), int(m[3]))
    if mode == "weekly":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return d.isoformat()


@dataclass
class PackJob:
    """One pack to write: sessions (paths) of one dir, one period."""

    dir: str
    period: str
    paths: list[str]
    # Pack files and named-tmp packs the planner listed in *dir* (Planner.dir_packs): the
    # worker opens these, not a fresh listing's; None: unknown, the worker lists the dir.
    packs: tuple[str, ...] | None = None


def plan_packs(tasks: list[Task], mode: str | int) -> list[PackJob]:
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in tasks:
        d, name = os.path.split(t.path)
        by[(d, "" if isinstance(mode, int) else period_of(name, mode))].append(t.path)
    jobs = []
    for (d, period), paths in sorted(by.items()):
        paths.sort()
        size = mode if isinstance(mode, int) else MAX_PACK_SESSIONS
        for i in range(0, len(paths), size):
            chunk = paths[i:i + size]
            # N-packs are named by their first session's date and ID: unique and sortable.
            jobs.append(PackJob(d, period or _n_name(chunk[0]), chunk))
    return jobs


def _n_name(first: str) -> str:
    """``2026-11-23T103158``: when the pack's first session started (never an ID, so no
    tool mistakes the pack for one session's archive)."""
    m = _ID_TIME.match(os.path.basename(first))
    return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}{m[5]}{m[6]}" if m else "undated"
