"""Restoring sessions out of a pack: one session by name (``unpack PACK::ID``), or every
session that still reads from a damaged pack. Both go through engine/restore.py's
extraction (member rules, temp dir, one rename, never overwrite); the pack is only read.
Kept apart from packfile.py and packsalvage.py so the dependency runs one way: this module
needs both (a damaged pack is opened through the salvage scan), neither needs it."""

from __future__ import annotations

import os

from archive_tool.engine import restore
from archive_tool.errors import ArchiveError, BadArgument, UnsafeArchive
from archive_tool.names import is_session_name
from archive_tool.pack.packsalvage import Salvage, SalvagedPack, open_pack


def restore_session(pack: str | os.PathLike[str], session: str,
                    dest: str | os.PathLike[str] | None = None, *,
                    keep_special: bool = False, fd: int | None = None,
                    root: str | None = None) -> str:
    """Restore one session of *pack* as a session dir (default: beside the pack, under the
    session's name), through engine/restore.py's extraction (same member rules, temp dir, one
    rename, never overwrite). The pack is only read: it is never rewritten. *fd*: the
    pack opened by the caller (taken over); *root*: the pack is below it (a catalog
    row), so the destination dir is reached below it by dir fds too."""
    if keep_special and os.geteuid() != 0:
        raise BadArgument("keeping setuid/setgid/sticky bits needs root")

    pack = os.path.abspath(os.fspath(pack))
    # A pack whose seek table or index is damaged is read through the salvage scan: its
    # other sessions must still come back (issue 26).
    with open_pack(pack, fd) as p:
        name = p.names[p.find(session)]
        # The name comes from the file and becomes a path: a hostile index ("ID-/../x")
        # must not choose where the restore lands.
        if not is_session_name(name):
            raise UnsafeArchive(pack, f"index names {name!r}, not a session dir name; refused")
        ast = os.fstat(p.fd)
        fd = p.session_fd(session)
    label = f"{pack}::{name}"
    target = os.path.abspath(os.fspath(dest)) if dest is not None else \
        os.path.join(os.path.dirname(pack), name)
    try:
        if root is None:
            os.makedirs(os.path.dirname(target), exist_ok=True)  # as restore_one does
        with restore.open_parent(target, root, ArchiveError(target, "no such directory")) \
                as (parent_fd, dname):
            _total, tree_fd = restore.restore_at(label, fd, parent_fd, dname, target, ast,
                                                  None, keep_special)
            os.close(tree_fd)
    finally:
        os.close(fd)
    return target



def restore_readable(pack: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None,
                     *, keep_special: bool = False) -> tuple[list[str], Salvage]:
    """``unpack`` of a damaged pack: each session whose frame reads becomes its own dir
    below *dest* (default: the pack's name without ``.tar.zst``, as for a whole pack),
    through engine/restore.py's extraction (member rules, temp dir, one rename, never over an
    existing dir); returns (restored dirs, the salvage found)."""
    pack = os.path.abspath(os.fspath(pack))
    target = os.path.abspath(os.fspath(dest)) if dest is not None else \
        restore.default_dest(pack)
    os.makedirs(target, exist_ok=True)
    done = []
    with SalvagedPack(pack) as p:
        ast = os.fstat(p.fd)
        for i, name in enumerate(p.names):
            where = os.path.join(target, name)
            fd = p.frame_fd(i)
            try:
                with restore.open_parent(where, None, ArchiveError(where, "no such directory")) \
                        as (parent_fd, dname):
                    _total, tree_fd = restore.restore_at(f"{pack}::{name}", fd, parent_fd,
                                                          dname, where, ast, None,
                                                          keep_special)
                    os.close(tree_fd)
            finally:
                os.close(fd)
            done.append(where)
        return done, p.salvage

