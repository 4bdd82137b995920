"""What the engine reports: one Result per session from a worker, one Summary per run.

Workers return Results (plain data: they cross process pools and Dask); the driving
process folds them into a Summary dict, which the CLI prints and ``--json`` dumps as is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

ARCHIVED, SKIPPED, FAILED, RESUMED, CLEANED = "archived", "skipped", "failed", "resumed", "cleaned"
RESTORED = "restored"
MAX_FAILURES_LISTED = 1000


class Result(NamedTuple):
    """One session's (or archive's) outcome."""

    path: str
    status: str  # ARCHIVED, RESUMED, RESTORED, SKIPPED, FAILED, CLEANED
    reason: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    inodes: int = 0
    fatal: bool = False  # stop feeding work (disk full)


def new_summary(kind: str, root: str, dry_run: bool, **extra: Any) -> dict[str, Any]:
    """The one Summary shape; ``kind`` ("sweep", "restore" or "prune") says which run made it."""
    s: dict[str, Any] = {
        "kind": kind, "root": root, "dry_run": dry_run, "scanned": 0, "candidates": 0,
        "skipped": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0, "elapsed": 0.0,
        "failures": [], "skipped_reasons": {}, "stopped": None, "warnings": [],
    }
    s.update(extra)
    return s


def record_failure(summary: dict[str, Any], path: str, reason: str) -> None:
    # The list is capped so a run over millions with a systematic failure stays small.
    summary["failed"] += 1
    if len(summary["failures"]) < MAX_FAILURES_LISTED:
        summary["failures"].append({"path": path, "reason": reason})


def count_restore(summary: dict[str, Any], r: Result,
                  on_result: Callable[[Result], None] | None = None) -> None:
    """One restore result into a restore Summary (archives and pack sessions alike)."""
    if r.status == RESTORED:
        summary["restored"] += 1
        summary["bytes_out"] += r.bytes_out
    elif r.status == SKIPPED:
        summary["skipped"] += 1
    else:
        record_failure(summary, r.path, r.reason)
    if on_result is not None:
        on_result(r)
