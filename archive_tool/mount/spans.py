"""The sessions of ``--pack auto`` packs, by the dir they belong in (view.py's listing).

A spanning pack sits in a dir above its sessions and names each by its path below that
dir (pack/entrypath.py). Listing the pack's dir records its sessions here under their
own dirs; listing a FINISHED_* dir then finds the sessions packs above it hold. The mount
walks a path from ROOT down, so a pack's dir is always listed before the dirs below it;
relisting it (after the TTL, or when a source changed) replaces what it recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from archive_tool.pack import entrypath

# (pack file name, pack identity, frame, the pack's dir relative to ROOT, the pack's owner)
Where = tuple[str, Any, int, str, int]


class Spans:
    def __init__(self) -> None:
        # pack dir -> {session dir (relative to ROOT): {session name: Where}}
        self.by_pack_dir: dict[str, dict[str, dict[str, Where]]] = {}

    def forget(self, rel: str) -> None:
        """*rel* is being listed again: what its packs recorded goes."""
        self.by_pack_dir.pop(rel, None)

    def add(self, rel: str, name: str, idx: Any, uid: int) -> bool:  # noqa: ANN401
        """Record the pack *name* of dir *rel* (its PackIndex, None if it did not read;
        *uid* its owner); False if it is not a spanning pack (then listed as any file)."""
        dirs = entrypath.by_dir(idx.names) if idx is not None else None
        mine = self.by_pack_dir.setdefault(rel, {})
        for d, sessions in (dirs or {}).items():
            got = mine.setdefault(f"{rel}/{d}" if rel else d, {})
            got.update((s, (name, idx.ident, i, rel, uid)) for s, i in sessions.items())
        return dirs is not None

    def above(self, rel: str, uid: int) -> Iterator[tuple[str, Where]]:
        """(session name, where) of the sessions of dir *rel* (owned by *uid*) in packs
        above it: only packs of that owner (a pack a user planted in a shared dir must not
        make sessions appear in another user's dir)."""
        parts = rel.split("/") if rel else []
        for k in range(len(parts)):
            for s, w in self.by_pack_dir.get("/".join(parts[:k]), {}).get(rel, {}).items():
                if w[4] == uid:
                    yield s, w
