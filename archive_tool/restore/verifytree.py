"""``verify ROOT``: every session archive and pack of a tree read completely, on the
worker pool (issue 26: ``find -exec verify`` took 76 s serially with no progress).

The same checks as ``verify ARCHIVE`` (read.verify_archive, packfile.verify_pack); a bad
pack also gets the salvage line (which sessions are lost, packsalvage.py). Only reads:
the tree is listed once without following a symlink (restore.many.iter_session_archives)
and each file opened O_NOFOLLOW, so a file name swapped for a symlink after the walk is
reported, not followed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from archive_tool.engine.read import verify_archive
from archive_tool.errors import ArchiveError
from archive_tool.pack import packfile
from archive_tool.pack.packsalvage import salvage
from archive_tool.restore.walk import iter_session_archives
from archive_tool.sweep.executors import default_workers, run_batches
from archive_tool.sweep.plan import check_root


class Checked(NamedTuple):
    path: str
    error: str | None  # None: it verified
    members: int
    bytes: int
    pack: bool


def find_archives(root: str) -> list[str]:
    """Session archives (in FINISHED_* dirs) and packs (any dir) below *root*, sorted: one walk
    (a second one for the packs cost an lstat, an open, an fstat and a listing per dir
    again: issue 24), types from the listing (d_type), each file opened O_NOFOLLOW by
    check_one."""
    return sorted(e.path for e in iter_session_archives(root, packs=True))


def check_one(path: str) -> Checked:
    """verify of one archive or pack, as a result (never raises for a bad file)."""
    is_pack = packfile.is_pack_name(os.path.basename(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        return Checked(path, f"cannot open: {e.strerror or e}", 0, 0, is_pack)
    try:
        if is_pack:
            info = packfile.verify_pack(path, fd)
        else:
            info = verify_archive(path, os.dup(fd))
        return Checked(path, None, info.members, info.bytes, is_pack)
    except ArchiveError as e:
        why = e.reason
        if is_pack:
            try:
                why += "; salvage: " + salvage(path, fd).summary()
            except (ArchiveError, OSError):
                pass
        return Checked(path, why, 0, 0, is_pack)
    except OSError as e:
        return Checked(path, f"cannot read: {e.strerror or e}", 0, 0, is_pack)
    finally:
        os.close(fd)


def check_batch(paths: list[str]) -> list[Checked]:
    return [check_one(p) for p in paths]


def verify_tree(root: str | os.PathLike[str], *, workers: int | None = None,
                on_result: Callable[[Checked], None] | None = None,
                on_total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Verify every archive and pack below *root* on the pool; returns a summary:
    root, checked, ok, bad, packs, members, bytes, elapsed, failures [{path, reason}],
    stopped (a signal or a broken pool)."""
    t0 = time.monotonic()
    root_p = check_root(root)
    paths = find_archives(root_p)
    if on_total is not None:
        on_total(len(paths))
    s: dict[str, Any] = {"kind": "verify", "root": root_p, "checked": 0, "ok": 0, "bad": 0,
                         "packs": 0, "members": 0, "bytes": 0, "failures": [],
                         "stopped": None, "signal": None}
    n = workers or default_workers()
    size = max(1, min(16, -(-len(paths) // (4 * n)) if paths else 1))
    batches = [paths[i:i + size] for i in range(0, len(paths), size)]

    def absorb(results: list[Checked]) -> None:
        for r in results:
            s["checked"] += 1
            s["packs"] += r.pack
            if r.error is None:
                s["ok"] += 1
                s["members"] += r.members
                s["bytes"] += r.bytes
            else:
                s["bad"] += 1
                s["failures"].append({"path": r.path, "reason": r.error})
            if on_result is not None:
                on_result(r)

    def lost(batch: list[str], e: BaseException) -> list[Checked]:
        return [Checked(p, f"worker lost: {e!r}", 0, 0, False) for p in batch]

    out = run_batches(batches, check_batch, (), absorb=absorb, lost=lost, workers=n)
    s["stopped"], s["signal"] = out.stopped, out.signal
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s
