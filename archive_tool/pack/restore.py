"""Restoring sessions out of a pack: one session by name (``unpack PACK::ID``), or every
session that still reads from a damaged pack. Both go through engine/restore.py's
extraction (member rules, temp dir, one rename, never overwrite); the pack is only read.
Kept apart from packfile.py and packsalvage.py so the dependency runs one way: this module
needs both (a damaged pack is opened through the salvage scan), neither needs it."""

from __future__ import annotations

import os

from archive_tool.engine import restore
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.pack import entrypath
from archive_tool.pack.packsalvage import Salvage, SalvagedPack, open_pack


def restore_session(pack: str | os.PathLike[str], session: str,
                    dest: str | os.PathLike[str] | None = None, *,
                    keep_special: bool = False, fd: int | None = None,
                    root: str | None = None) -> str:
    """Restore one session of *pack* as a session dir (default: where it was, i.e. at its
    path below the pack's dir: beside it, or for a ``--pack auto`` pack in the dir below
    the pack it came from, reached by dir fds from the pack's dir, made if missing,
    never through a symlink: entrypath.py), through engine/restore.py's extraction (same member rules, temp dir, one
    rename, never overwrite). The pack is only read: it is never rewritten. *fd*: the
    pack opened by the caller (taken over); *root*: the pack is below it (a catalog
    row), so the destination dir is reached below it by dir fds too."""
    if keep_special and os.geteuid() != 0:
        raise BadArgument("keeping setuid/setgid/sticky bits needs root")

    pack = os.path.abspath(os.fspath(pack))
    # A pack whose seek table or index is damaged is read through the salvage scan: its
    # other sessions must still come back (issue 26).
    with open_pack(pack, fd) as p:
        entry = p.names[p.find(session)]
        # The name comes from the file and becomes a path: a hostile index ("ID-/../x")
        # must not choose where the restore lands.
        entrypath.check_entry(pack, entry)
        ast = os.fstat(p.fd)
        fd = p.session_fd(session)
    rel, name = entrypath.split(entry)
    prefix = entry if rel else None  # a spanning pack's members lie below the entry path
    label = f"{pack}::{entry}"
    try:
        if dest is not None:
            target = os.path.abspath(os.fspath(dest))
            if root is None:
                os.makedirs(os.path.dirname(target), exist_ok=True)  # as restore_one does
            with restore.open_parent(target, root, ArchiveError(target, "no such directory")) \
                    as (parent_fd, dname):
                _total, tree_fd = restore.restore_at(label, fd, parent_fd, dname, target, ast,
                                                      None, keep_special, prefix)
                os.close(tree_fd)
            return target
        target = os.path.join(os.path.dirname(pack), entry)
        with restore.open_parent(pack, root, ArchiveError(pack, "no such directory")) \
                as (pack_dir_fd, _pname):
            restore_entry(label, fd, pack_dir_fd, entry, target, ast, keep_special)
    finally:
        os.close(fd)
    return target


def restore_entry(label: str, fd: int, pack_dir_fd: int, entry: str, target: str,
                  ast: os.stat_result, keep_special: bool = False) -> int:
    """Restore the session tar *fd* (one frame) at its *entry* path below the pack's dir
    fd: the dirs between are walked with O_NOFOLLOW (a symlink is refused, ELOOP) and made
    when missing, as root for the pack's owner (as restore_at gives the session). Returns
    the content bytes."""
    rel, name = entrypath.split(entry)
    owner = (ast.st_uid, ast.st_gid) if os.geteuid() == 0 and ast.st_uid != 0 else None
    # As root, a spanning pack restores only into its owner's dirs (entrypath.py).
    only = ast.st_uid if rel and os.geteuid() == 0 else None
    try:
        dfd = entrypath.open_entry_dir(pack_dir_fd, rel, create=True, owner=owner,
                                       only_uid=only)
    except OSError as e:
        raise ArchiveError(target, f"cannot open its dir below the pack: "
                                   f"{e.strerror or e}; refused") from None
    try:
        if rel:  # a killed restore's temp dir there (the pack's own dir: the caller's)
            restore.remove_dead_temps(dfd, os.path.dirname(target), only=name)
        total, tree_fd = restore.restore_at(label, fd, dfd, name, target, ast, None,
                                            keep_special, entry if rel else None)
        os.close(tree_fd)
        return total
    finally:
        os.close(dfd)



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
            entrypath.check_entry(pack, name)
            where = os.path.join(target, name)
            fd = p.frame_fd(i)
            try:
                with restore.open_parent(os.path.join(target, "-"), None,
                                         ArchiveError(target, "no such directory")) \
                        as (target_fd, _dname):
                    restore_entry(f"{pack}::{name}", fd, target_fd, name, where, ast,
                                  keep_special)
            finally:
                os.close(fd)
            done.append(where)
        return done, p.salvage

