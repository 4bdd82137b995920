"""Retention inside packs (prune.py's candidates and deletions for sessions in packs).

A session inside ``<period>.pack.tar.zst`` is a candidate like a session's own archive:
``path`` is ``PACK::SESSION``, ``bytes`` its compressed frame, age from its ID. Deleting it
is a repack of its pack without it (repack.py: the other frames copied unchanged, the new
pack verified, durable and catalogued before the old one is unlinked).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from archive_tool.retention.archived import Archived, started_at
from archive_tool.retention.repack import repack
from archive_tool.retention.repackplan import pack_listings
from archive_tool.summary import record_failure


def scan_packs(root: str, now: float) -> list[Archived]:
    """Every session inside a pack of a FINISHED_* dir, as a candidate like a session's
    own archive (its bytes: its compressed frame). Read by fds from the root, seek table
    and index only; a pack that does not read is skipped here (``repack`` and ``verify``
    report it) and so never pruned."""
    out = []
    for rel, pack, mtime, sessions in pack_listings(root):
        path = os.path.join(root, rel, pack) if rel else os.path.join(root, pack)
        for entry, csize in sessions:
            # A spanning pack's entry (--pack auto) is the session's path below the pack:
            # its script and state are the dirs it came from, not the pack's.
            d, _, name = entry.rpartition("/")
            srel = "/".join(p for p in (rel, d) if p)
            finished = os.path.join(root, srel) if srel else root
            script = os.path.dirname(srel) if srel else os.path.dirname(finished)
            t = started_at(name)
            t = mtime if t is None else t
            out.append(Archived(
                path=f"{path}::{entry}", script=script or ".",
                state=os.path.basename(finished), started=t,
                age_days=(now - t) / 86400, bytes=csize, pack=path))
    return out


def drop_from_packs(chosen: list[Archived], s: dict[str, Any], root: str,
                    done_one: Callable[[Archived], None]) -> None:
    """Sessions inside packs go by a repack of each pack holding one, without them
    (repack.py: the new pack durable and catalogued before the old one is unlinked)."""
    want: dict[tuple[str, str], Archived] = {}
    for a in chosen:
        rel = os.path.relpath(os.path.dirname(a.pack), root)
        want[("" if rel == "." else rel, a.path.rpartition("::")[2])] = a

    def drop_fn(rel: str, name: str) -> str | None:
        return "pruned" if (rel, name) in want else None

    r = repack(root, dry_run=False, drop_fn=drop_fn, only_dropped=True, lock=False)
    for f in r["failures"]:
        record_failure(s, f["path"], f["reason"])
    done = set()
    for g in r["groups"]:
        rel = os.path.relpath(g["dir"], root)
        for d in g["dropped"]:
            a = want.get(("" if rel == "." else rel, d["session"]))
            if a is not None and d["reason"] == "pruned" and id(a) not in done:
                done.add(id(a))
                done_one(a)
