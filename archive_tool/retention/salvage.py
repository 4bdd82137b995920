"""``repack ROOT --salvage``: each damaged pack below the root is replaced by a clean pack
of the sessions whose frames still read (issue 26).

Every pack is read frame by frame (pack/packsalvage.py: by its seek table, or by a
scan for frame headers when the table is damaged). A damaged one becomes a group of one
for repack.py's run_group: its readable frames copied still compressed into a new pack,
verified as ``verify`` does, made durable and linked, the catalog rows swapped in one
transaction. The damaged file is then renamed aside to ``.<name>.damaged`` instead of
unlinked: its lost frames may still give something to a person with a hex editor, and
a dot name is read by no command as a pack. Nothing is dropped that still reads.
"""

from __future__ import annotations

import os
from typing import Any

from archive_tool import fs
from archive_tool.errors import ArchiveError
from archive_tool.pack import packfile
from archive_tool.pack.packsalvage import salvage
from archive_tool.retention.repackplan import Frame, Group, base_name, reason_of
from archive_tool.summary import record_failure


def plan_salvage(root: str, rel: str, dfd: int, s: dict[str, Any]) -> list[Group]:
    """A group per damaged pack of the dir at *rel*: keep its readable frames, drop (as
    lost) the sessions whose frames do not read."""
    where = os.path.join(root, rel)
    groups = []
    for e in fs.scandir_sorted(dfd):
        if not packfile.is_pack_entry(e):
            continue
        path = os.path.join(where, e.name)
        try:
            fd = fs.open_file(e.name, dfd)
        except OSError as ex:
            record_failure(s, path, f"cannot open: {ex.strerror}")
            continue
        try:
            st = os.fstat(fd)
            found = salvage(path, fd)
        except (ArchiveError, OSError) as ex:
            record_failure(s, path, f"not salvaged, left as it is: {reason_of(ex)}")
            continue
        finally:
            os.close(fd)
        s["packs_read"] += 1
        s["scanned"] += len(found.good) + len(found.lost)
        if found.clean:
            continue
        keep = [Frame(e.name, f.index, f.name, f.offset, f.csize, f.dsize) for f in found.good]
        why = "lost: its frame is damaged (" + "; ".join(found.damage) + ")"
        drops = [(Frame(e.name, -1, n, 0, 0, 0), why) for n in found.lost]
        g = Group(rel, [e.name], keep, drops, base_name(e.name))
        g.ids = {e.name: (st.st_dev, st.st_ino)}
        groups.append(g)
    return groups
