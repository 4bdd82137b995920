"""``catalog ROOT`` with no flag: what the catalog holds, without changing it (issue 26:
"Missing option '--rebuild'" was all it said)."""

from __future__ import annotations

import os
import time
from typing import Any

from archive_tool import fs
from archive_tool.catalog import catalog, rebuild
from archive_tool.errors import ArchiveError
from archive_tool.guard import untrusted
from archive_tool.names import split_archive_name
from archive_tool.pack import entrypath, packfile
from archive_tool.sweep.plan import check_root


def catalog_state(root: str | os.PathLike[str]) -> dict[str, Any]:
    """root, catalog (path), exists; when it exists: sessions, archives (per-session
    files), packs, bytes_out (archived bytes the rows name), file_bytes, modified (UTC)."""
    root_p = check_root(root)
    path = catalog.catalog_path(root_p)
    out: dict[str, Any] = {"root": root_p, "catalog": path, "exists": False}
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return out
    conn = catalog.connect(root_p)  # the safe open (no symlink followed, a file of ours)
    try:
        n, archives, packs, b = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT CASE WHEN frame < 0 THEN archive END), "
            "COUNT(DISTINCT CASE WHEN frame >= 0 THEN archive END), "
            "COALESCE(SUM(bytes_out), 0) FROM sessions").fetchone()
    finally:
        conn.close()
    out.update(exists=True, sessions=n, archives=archives, packs=packs, bytes_out=b,
               file_bytes=st.st_size,
               modified=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.st_mtime)))
    return out


def _on_disk(root: str, errors: list[str]) -> set[tuple[str, int, str]]:
    """(archive relative to root, frame, session) of every session the tree holds, found
    as ``catalog --rebuild`` finds them (rebuild.walk_archives): what a true catalog lists.
    Packs are opened below the root by dir fds, as the rebuild opens them."""
    out: set[tuple[str, int, str]] = set()
    rfd = fs.open_trusted_dir(root)
    try:
        for rel, fname, _dfd in rebuild.walk_archives(rfd):
            arel = os.path.join(rel, fname)
            if packfile.is_pack_name(fname):
                try:
                    fd = untrusted.open_file_below(rfd, arel)
                    with packfile.Pack(os.path.join(root, arel), fd) as p:
                        out.update((arel, i, entrypath.name_of(n))
                                   for i, n in enumerate(p.names))
                except (ArchiveError, OSError) as e:
                    errors.append(f"{arel}: {getattr(e, 'reason', None) or e}")
            else:
                named = split_archive_name(fname)
                if named is not None:
                    out.add((arel, -1, named[0]))
    finally:
        os.close(rfd)
    return out


def check_catalog(root: str | os.PathLike[str], max_listed: int = 50) -> dict[str, Any]:
    """``catalog --check``: the catalog's rows against the tree. Returns root, catalog,
    exists, rows, on_disk, missing (sessions on disk without a row), stale (rows whose
    archive or frame is not there), unreadable (packs whose index does not read), each
    list capped at *max_listed*, and ``clean``."""
    root_p = check_root(root)
    st = catalog_state(root_p)
    errors: list[str] = []
    disk = _on_disk(root_p, errors)
    rows: set[tuple[str, int, str]] = set()
    if st["exists"]:
        conn = catalog.connect(root_p)
        try:
            rows = {(a, f, n) for a, f, n in
                    conn.execute("SELECT archive, frame, name FROM sessions")}
        finally:
            conn.close()
    missing = sorted(disk - rows)
    stale = sorted(rows - disk)
    fmt = (lambda t: f"{t[0]}::{t[2]}" if t[1] >= 0 else t[0])  # noqa: E731
    return {"root": root_p, "catalog": st["catalog"], "exists": st["exists"],
            "rows": len(rows), "on_disk": len(disk),
            "missing": [fmt(t) for t in missing[:max_listed]], "n_missing": len(missing),
            "stale": [fmt(t) for t in stale[:max_listed]], "n_stale": len(stale),
            "unreadable": errors[:max_listed],
            "clean": not missing and not stale and (st["exists"] or not disk)}


def forget_missing(root: str | os.PathLike[str]) -> int:
    """Drop the rows of archives and packs that no longer exist (a restore with
    --remove-archive, an undo, a crash between a file's removal and its catalog step):
    one transaction; a no-op without a catalog. Returns the rows dropped."""
    root_p = os.fspath(root)
    if not os.path.lexists(catalog.catalog_path(root_p)):
        return 0
    conn = catalog.connect(root_p)
    try:
        gone = [a for (a,) in conn.execute("SELECT DISTINCT archive FROM sessions")
                if not os.path.lexists(os.path.join(root_p, a))]
        with conn:
            n = 0
            for a in gone:
                conn.execute("DELETE FROM kv WHERE sid IN (SELECT sid FROM sessions WHERE "
                             "archive=?)", (a,))
                conn.execute("DELETE FROM listing WHERE sid IN (SELECT sid FROM sessions "
                             "WHERE archive=?)", (a,))
                n += conn.execute("DELETE FROM sessions WHERE archive=?", (a,)).rowcount
        return n
    finally:
        conn.close()


def reconcile(root: str | os.PathLike[str]) -> dict[str, int]:
    """Repair what a crash between a file step and its catalog step left (issue 26): rows
    of archives that are gone are dropped, archives and packs on disk without a row get
    theirs (read from the file, as --rebuild would). Each executing command runs it first
    when the root has a catalog, so the next command repairs the last one's crash. One
    walk of the tree; files are read only when they lack rows."""
    root_p = os.path.abspath(os.fspath(root))
    if not os.path.lexists(catalog.catalog_path(root_p)):
        return {"dropped": 0, "added": 0}
    dropped = forget_missing(root_p)
    conn = catalog.connect(root_p)
    try:
        have = {a for (a,) in conn.execute("SELECT DISTINCT archive FROM sessions")}
    finally:
        conn.close()
    rows: list[dict[str, Any]] = []
    rfd = fs.open_trusted_dir(root_p)
    try:
        for rel, fname, _dfd in rebuild.walk_archives(rfd):
            if os.path.join(rel, fname) not in have:
                try:
                    rows += rebuild.rows_of_file(root_p, rel, fname, rfd)
                except (ArchiveError, OSError, ValueError):
                    continue  # `catalog --check` names it; a damaged file is not ours to fix
    finally:
        os.close(rfd)
    catalog.add_sessions(root_p, rows)
    return {"dropped": dropped, "added": len(rows)}
