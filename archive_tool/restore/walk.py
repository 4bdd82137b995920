"""The walk that finds session archives (and packs) in the FINISHED_* dirs of a tree:
extract --tree, verify ROOT and prune use it. Its own module so that verify ROOT imports
the walk without what extracting needs (the catalog, SQLite, YAML: ~60 modules, ~400
metadata calls of start-up, issue 24)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from archive_tool.names import (
    FINISHED_STATES,
    RUNNING_STATE,
    is_session_name,
    session_of_trash,
    split_archive_name,
)
from archive_tool.pack.packfile import is_pack_name

STATE_DIR = ".session-archive"


def _walk_into(name: str) -> bool:
    # Hidden project dirs are walked (a sweep archives there too); session dirs, a crash's
    # trash (.X.deleting) and restore temp dirs (.X.restore-*) hold session content, not
    # archives of ours.
    if name in (RUNNING_STATE, STATE_DIR) or is_session_name(name):
        return False
    return session_of_trash(name) is None and ".restore-" not in name


def iter_session_archives(root: str, packs: bool = False) -> Iterator[os.DirEntry[str]]:
    """Regular files ``<ID>[-<name>].<format>`` whose parent is a FINISHED_* dir, anywhere
    under *root*; symlinks never followed, RUNNING/ and session dirs never entered. With
    *packs*, pack files too, in any dir (a ``--pack auto`` pack sits in its sessions'
    deepest common dir): verify ROOT, one walk for both."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue  # unreadable: skipped, as discovery skips it
        in_finished = os.path.basename(d) in FINISHED_STATES
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if _walk_into(e.name):
                            stack.append(e.path)
                        continue
                    if not (in_finished or packs) or not e.is_file(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                if packs and is_pack_name(e.name):
                    yield e  # any dir: a --pack auto pack sits above its FINISHED_* dirs
                    continue
                if not in_finished:
                    continue
                named = split_archive_name(e.name)
                if named is not None and is_session_name(named[0]):
                    yield e
