"""``extract ROOT --tree`` for sessions inside packs: each session of each pack whose
session dir does not exist comes back where it was: beside the pack, or for a ``--pack
auto`` pack at its path below the pack's dir (pack/entrypath.py; the dirs between are
walked without following a symlink, and made if missing); and
``extract ROOT --undo RUN`` for the sessions a ``sweep --pack`` run packed (the manifest
lines naming a pack, runlog.py; :func:`plan_undo` refuses a line whose pack is not a
plain path below the root or whose session is not at a session path below the pack's dir).

Per session: its frame alone is read (packfile.Pack.session_fd, a memfd holding a plain
tar of that session) and restored by engine/restore.py's extraction (temp dir, member
rules, one rename, never over an existing dir), all below the root through dir fds. The
pack is never rewritten, with or without ``--remove-archive``: a later ``repack`` drops
the sessions that exist again as identical dirs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from archive_tool import fs
from archive_tool.engine.restore import remove_dead_temps
from archive_tool.errors import ArchiveError
from archive_tool.guard import untrusted
from archive_tool.pack import entrypath, packfile
from archive_tool.pack.packsalvage import Salvage, SalvagedPack, open_pack
from archive_tool.pack.restore import restore_entry
from archive_tool.retention.repackplan import pack_listings
from archive_tool.summary import (
    FAILED,
    RESTORED,
    SKIPPED,
    Result,
    count_restore,
    record_failure,
)

# (dir relative to the root, pack file name, session name or, in a spanning pack, its path
# below the pack's dir: pack/entrypath.py)
Job = tuple[str, str, str]


def plan(root: str, s: dict[str, Any], max_files: int | None, taken: set[str]) -> list[Job]:
    """Sessions in packs to restore, counted into *s* as restore_tree counts archives.
    *taken*: destinations already planned (a per-session archive of the same session)."""
    jobs: list[Job] = []

    def damaged(rel: str, pack: str, found: Salvage) -> None:
        # Its readable sessions are listed; the lost ones are failures, named.
        for n in found.lost:
            s["scanned"] += 1
            record_failure(s, os.path.join(root, rel, pack) + f"::{n}",
                           "its frame in the pack is damaged; cannot be restored")

    for rel, pack, _mtime, sessions in pack_listings(root, on_damaged=damaged):
        with _PackDir(root, rel) as dfd:
            _plan_pack(root, rel, pack, sessions, dfd, s, max_files, taken, jobs)
    return jobs


class _PackDir:
    """The pack's dir fd below the root, opened on first use (-1 if it does not open)."""

    def __init__(self, root: str, rel: str) -> None:
        self.root, self.rel, self.fd = root, rel, None

    def get(self) -> int:
        if self.fd is None:
            try:
                rfd = fs.open_trusted_dir(self.root)
                try:
                    self.fd = fs.open_beneath(rfd, self.rel)
                finally:
                    os.close(rfd)
            except OSError:
                self.fd = -1
        return self.fd

    def __enter__(self) -> _PackDir:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self.fd >= 0:
            os.close(self.fd)


def _plan_pack(root: str, rel: str, pack: str, sessions: list[tuple[str, int]],
               pdir: _PackDir, s: dict[str, Any], max_files: int | None, taken: set[str],
               jobs: list[Job]) -> None:
    for name, csize in sessions:
        s["scanned"] += 1
        dest = os.path.join(root, rel, name)
        if dest in taken or not entrypath.is_entry(name):
            s["skipped"] += 1
            continue
        # A spanning pack's entry is looked at by fds from the root, as it will be
        # restored: no probe through a symlinked dir of the tree.
        if "/" in name:
            there = _entry_exists(pdir.get(), name) if pdir.get() >= 0 else None
        else:
            there = os.path.lexists(dest)
        if there is None:
            record_failure(s, f"{os.path.join(root, rel, pack)}::{name}",
                           "a dir on its path below the pack is a symlink or not a "
                           "dir; refused")
            continue
        if there:
            s["skipped"] += 1
            continue
        if max_files and s["candidates"] >= max_files:
            s["capped"] += 1
            continue
        taken.add(dest)
        s["candidates"] += 1
        s["bytes_in"] += csize
        jobs.append((rel, pack, name))


def plan_undo(root: str, rec: dict[str, Any], s: dict[str, Any], planned: set[str]
              ) -> Job | None:
    """A manifest line naming a pack (runlog.py) as a job, counted into *s* as undo_run
    counts archives; None when it is refused, skipped or its pack is gone."""
    rel, session, archive = rec.get("pack"), rec["session"], rec["archive"]
    if not isinstance(rel, str):
        record_failure(s, archive, "manifest names no pack path; refused")
        return None
    parts = rel.split("/")
    # The manifest is a plain file in the tree: its pack must be a plain path below the
    # root, the line's own absolute paths agreeing with it.
    if (os.path.isabs(rel) or os.path.normpath(rel) != rel or ".." in parts
            or not packfile.is_pack_name(parts[-1]) or archive != os.path.join(root, rel)):
        record_failure(s, archive, f"pack {rel!r} is not a pack path below {root}; refused")
        return None
    d, pack = os.path.split(rel)
    pack_dir = os.path.join(root, d) if d else root
    name = session[len(pack_dir) + 1:] if session.startswith(pack_dir + "/") else ""
    if not entrypath.is_entry(name) or session != os.path.join(pack_dir, name):
        # A forged line could otherwise make root restore another user's session into
        # this user's dir. (A --pack auto pack holds sessions in dirs below its own.)
        record_failure(s, archive, f"manifest pairs it with {session}, not a session dir "
                                   "at its path below the pack's dir; refused")
        return None
    if session in planned:
        s["skipped"] += 1
        return None
    # Looked at through dir fds below the root (untrusted.py), not by the path: a
    # symlinked dir in the line must not make root probe outside the tree.
    try:
        rfd = fs.open_trusted_dir(root)
        try:
            dfd = untrusted.open_dir_below(rfd, d)
        finally:
            os.close(rfd)
    except FileNotFoundError:
        dfd = -1
    except OSError as e:
        record_failure(s, archive, untrusted.refusal(archive, e).reason)
        return None
    try:
        there = _entry_exists(dfd, name) if dfd >= 0 else False
        if there is None:
            record_failure(s, archive, f"a dir on the path of {session} below the pack is a "
                                       "symlink or not a dir; refused")
            return None
        if there:
            s["skipped"] += 1
            return None
        if dfd < 0 or not fs.lexists_at(dfd, pack):
            record_failure(s, f"{archive}::{name}", "pack is gone; cannot restore " + session)
            return None
    finally:
        if dfd >= 0:
            os.close(dfd)
    planned.add(session)
    s["candidates"] += 1
    b = rec.get("bytes")
    s["bytes_in"] += b if isinstance(b, int) and b > 0 else 0
    return (d, pack, name)


def _entry_exists(dfd: int, entry: str) -> bool | None:
    """Is there anything at *entry* below the pack's dir fd (walked without following)?
    None: a symlink or a file is in the way (the restore would be refused)."""
    rel, name = entrypath.split(entry)
    try:
        sub = entrypath.open_entry_dir(dfd, rel)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        return fs.lexists_at(sub, name)
    finally:
        os.close(sub)



def restore(root: str, jobs: list[Job], s: dict[str, Any],
            on_result: Callable[[Result], None] | None = None) -> None:
    """Restore the planned sessions, one pack open at a time, in this process (each is
    one small frame; the pool would cost more than it saves)."""
    by: dict[tuple[str, str], list[str]] = {}
    for rel, pack, name in jobs:
        by.setdefault((rel, pack), []).append(name)
    root_fd = fs.open_trusted_dir(root)
    try:
        for (rel, pack), names in by.items():
            where = os.path.join(root, rel)
            try:
                dfd = fs.open_beneath(root_fd, rel)
            except OSError as e:
                for n in names:
                    count_restore(s, Result(os.path.join(where, pack) + f"::{n}", FAILED,
                                       f"cannot open its dir: {e.strerror}"), on_result)
                continue
            try:
                remove_dead_temps(dfd, where)
                _restore_pack(where, pack, names, dfd, s, on_result)
            finally:
                os.close(dfd)
    finally:
        os.close(root_fd)


def _restore_pack(where: str, pack: str, names: list[str], dfd: int, s: dict[str, Any],
                  on_result: Callable[[Result], None] | None) -> None:
    path = os.path.join(where, pack)
    try:
        p = open_pack(path, fs.open_file(pack, dfd))
    except (ArchiveError, OSError) as e:
        why = getattr(e, "reason", None) or f"cannot open the pack: {e.strerror or e}"
        for n in names:
            count_restore(s, Result(f"{path}::{n}", FAILED, why), on_result)
        return
    with p:
        ast = os.fstat(p.fd)
        for n in names:
            label = f"{path}::{n}"
            fd = -1
            try:
                # Exactly this name (find() also takes an ID, and "X-a" is a prefix of
                # "X-a-b"): the last frame of it, as find() picks.
                i = len(p.names) - 1 - p.names[::-1].index(n) if n in p.names else -1
                if i < 0:
                    if isinstance(p, SalvagedPack) and n in p.salvage.lost:
                        raise ArchiveError(path, "its frame in the pack is damaged; cannot "
                                                 "be restored")
                    raise ArchiveError(path, f"no session {n!r} in this pack")
                fd = p.frame_fd(i)
                entrypath.check_entry(path, n)
                total = restore_entry(label, fd, dfd, n, os.path.join(where, n), ast)
                r = Result(label, RESTORED, "", 0, total)
            except FileExistsError:
                r = Result(label, SKIPPED, "destination exists")
            except (ArchiveError, OSError) as e:
                r = Result(label, FAILED, getattr(e, "reason", None) or str(e))
            finally:
                if fd >= 0:
                    os.close(fd)
            count_restore(s, r, on_result)


