"""``extract ROOT --tree`` for sessions inside packs: each session of each pack in a
FINISHED_* dir whose session dir does not exist comes back beside the pack.

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
from archive_tool.engine import packfile
from archive_tool.engine.restore import _restore_at, remove_dead_temps
from archive_tool.errors import ArchiveError
from archive_tool.names import is_session_name
from archive_tool.summary import FAILED, RESTORED, SKIPPED, Result, count_restore

Job = tuple[str, str, str]  # (dir relative to the root, pack file name, session name)


def plan(root: str, s: dict[str, Any], max_files: int | None, taken: set[str]) -> list[Job]:
    """Sessions in packs to restore, counted into *s* as restore_tree counts archives.
    *taken*: destinations already planned (a per-session archive of the same session)."""
    from archive_tool.bulk.repackplan import pack_listings

    jobs: list[Job] = []
    for rel, pack, _mtime, sessions in pack_listings(root):
        for name, csize in sessions:
            s["scanned"] += 1
            dest = os.path.join(root, rel, name)
            if dest in taken or not is_session_name(name) or os.path.lexists(dest):
                s["skipped"] += 1
                continue
            if max_files and s["candidates"] >= max_files:
                s["capped"] += 1
                continue
            taken.add(dest)
            s["candidates"] += 1
            s["bytes_in"] += csize
            jobs.append((rel, pack, name))
    return jobs


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
        p = packfile.Pack(path, fs.open_file(pack, dfd))
    except (ArchiveError, OSError) as e:
        for n in names:
            count_restore(s, Result(f"{path}::{n}", FAILED, getattr(e, "reason", None)
                               or str(e)), on_result)
        return
    with p:
        ast = os.fstat(p.fd)
        for n in names:
            label = f"{path}::{n}"
            fd = -1
            try:
                fd = p.session_fd(n)
                total, tree_fd = _restore_at(label, fd, dfd, n, os.path.join(where, n), ast,
                                             None)
                os.close(tree_fd)
                r = Result(label, RESTORED, "", 0, total)
            except FileExistsError:
                r = Result(label, SKIPPED, "destination exists")
            except (ArchiveError, OSError) as e:
                r = Result(label, FAILED, getattr(e, "reason", None) or str(e))
            finally:
                if fd >= 0:
                    os.close(fd)
            count_restore(s, r, on_result)


