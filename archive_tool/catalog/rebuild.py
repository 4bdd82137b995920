"""``catalog --rebuild``: the catalog made again from the packs and archives alone, found
by a walk by dir fds below the root that never follows a symlink (``walk_archives``, also
what ``catalog --check`` compares with), each file opened below the root, regular only."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import tarfile
import time
from collections.abc import Iterator
from typing import Any

from archive_tool import fs
from archive_tool.catalog.catalog import (
    CATALOG_NAME,
    add_rows,
    add_sessions,
    catalog_path,
    connect,
)
from archive_tool.catalog.listing import Collector
from archive_tool.catalog.rows import CONFIG_NAMES, config_of, make_row, session_row
from archive_tool.engine.formats import OutputTooBig, decompress_bytes
from archive_tool.engine.read import iter_members, open_tar
from archive_tool.engine.tarwrite import iter_tar
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.guard import interrupt, untrusted
from archive_tool.names import is_session_name, split_archive_name
from archive_tool.pack import packfile
from archive_tool.sweep.plan import check_root

# A per-session archive is read into memory up to this size (compressed, and its tar);
# a bigger one is streamed (bounded memory), its row made from the member headers.
IN_MEMORY_CAP = 64 * 1024 * 1024
_REBUILD_TMP = re.compile(rf"^{re.escape(CATALOG_NAME)}\.rebuild-(\d+)$")


def walk_archives(root_fd: int) -> Iterator[tuple[str, str, os.stat_result]]:
    """(dir relative to root, file name, lstat) of every pack and session archive below
    the root: a walk by dir fds that never follows a symlink (a link to another user's
    archive is not read), skips hidden dirs and dirs on another filesystem; only regular
    files are yielded."""
    dev = os.fstat(root_fd).st_dev
    stack: list[tuple[str, int]] = [("", os.dup(root_fd))]
    while stack:
        rel, fd = stack.pop()
        try:
            try:
                entries = fs.scandir_sorted(fd)
            except OSError:
                continue  # unreadable: skipped, as discovery skips it
            subdirs = []
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not e.name.startswith(".") and st.st_dev == dev:
                        subdirs.append((e.name, st))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue  # symlinks, FIFOs, devices: never opened
                if packfile.is_pack_name(e.name):
                    yield rel, e.name, st
                else:
                    named = split_archive_name(e.name)
                    if named and is_session_name(named[0]):
                        yield rel, e.name, st
            for name, st in reversed(subdirs):
                try:
                    child = fs.open_dir(name, fd, st)
                except OSError:
                    continue
                stack.append((f"{rel}/{name}" if rel else name, child))
        finally:
            os.close(fd)


def rows_of_file(root: str, rel: str, fname: str, root_fd: int | None = None
                 ) -> Iterator[dict[str, Any]]:
    """The rows of one pack or session archive *rel*/*fname* below *root*, opened by dir
    fds below it (untrusted.open_file_below: O_NOFOLLOW, regular, the root's device)."""
    path = os.path.join(root, rel, fname)
    arel = os.path.join(rel, fname)
    own = root_fd is None
    rfd = fs.open_trusted_dir(root) if own else root_fd
    try:
        try:
            fd = untrusted.open_file_below(rfd, arel)  # type: ignore[arg-type]
        except OSError as e:
            raise untrusted.refusal(path, e) from None
    finally:
        if own:
            os.close(rfd)  # type: ignore[arg-type]
    if packfile.is_pack_name(fname):
        with packfile.Pack(path, fd) as p:
            for i, name in enumerate(p.names):
                f = p.frames[i]
                yield session_row(p.members(i), name, rel, arel, i, f.offset, f.csize)
        return
    name, fmt = split_archive_name(fname)  # type: ignore[misc]
    size = os.fstat(fd).st_size
    if size > IN_MEMORY_CAP:
        yield _streamed_row(fd, path, name, rel, arel, size)
        return
    try:
        data = untrusted.read_capped(fd, IN_MEMORY_CAP, path)
        try:
            tar = decompress_bytes(data, fmt, IN_MEMORY_CAP)
        except OutputTooBig:
            os.lseek(fd, 0, os.SEEK_SET)
            yield _streamed_row(os.dup(fd), path, name, rel, arel, size)
            return
    finally:
        os.close(fd)
    # The members without the end-of-archive blocks: what a pack frame of it would hold.
    end = max((o + s + (-s % tarfile.BLOCKSIZE) for _, o, s, _ in iter_tar(tar)),
              default=0)
    members = tar[:end]
    yield session_row(members, name, rel, arel, -1, 0, len(data))


def _streamed_row(fd: int, path: str, name: str, rel: str, arel: str, size: int
                  ) -> dict[str, Any]:
    """A big archive's row by streaming it (memory bounded): member headers counted as
    iter_tar counts them, the CONFIG read if it is within untrusted.CONFIG_CAP."""
    wanted = {f"{name}/{c}" for c in CONFIG_NAMES}
    cfg: dict[str, Any] | None = None
    bytes_in = inodes = end = 0
    listing = Collector(name)  # the member list for `mount`, as session_row makes it
    with open_tar(path, fd) as (tf, _reader):
        for m in iter_members(tf):
            inodes += 1
            listing.add(m)
            if m.isfile():
                bytes_in += m.size
            end = m.offset_data + m.size + (-m.size % tarfile.BLOCKSIZE)
            if (cfg is None and m.name in wanted and m.isfile()
                    and m.size <= untrusted.CONFIG_CAP):
                f = tf.extractfile(m)
                cfg = config_of(f.read() if f else b"", m.name.endswith(".json"))
    return make_row(name, rel, arel, -1, 0, size, cfg or {}, bytes_in, end, inodes,
                    listing.blob())


def _remove_dead_rebuilds(d: int) -> None:
    """``catalog.sqlite.rebuild-PID`` files of rebuilds that were killed (PID gone): a
    killed rebuild leaves its temp, the next one removes it."""
    for e in fs.scandir_sorted(d):
        m = _REBUILD_TMP.match(e.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive: another rebuild at work
        except ProcessLookupError:
            pass
        except OSError:
            continue
        fs.unlink_at(d, e.name)


def rebuild(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Build the catalog from the packs and archives alone, into a new file that then
    replaces the old one (a reader never sees a half-built catalog). Archives are found by
    a walk by dir fds that never follows a symlink and opened O_NOFOLLOW|O_NONBLOCK,
    regular files only; the temp catalog is removed if the rebuild fails, and a killed
    rebuild's temp by the next one."""
    root = check_root(root)  # it writes below root: the same refusals as a sweep
    if not os.path.isdir(root):
        raise BadArgument(f"not a directory: {root}")
    t0 = time.monotonic()
    final = catalog_path(root)
    tmp = f"{CATALOG_NAME}.rebuild-{os.getpid()}"
    d = fs.open_state_dir(root)
    try:
        _remove_dead_rebuilds(d)
        fs.unlink_at(d, tmp)
    finally:
        os.close(d)
    done = False
    try:
        conn = connect(root, tmp)
        files = rows = 0
        errors: list[str] = []
        rfd = fs.open_trusted_dir(root)
        try:
            for rel, fname, _st in walk_archives(rfd):
                interrupt.check()  # SIGTERM: the half-built file is removed below
                try:
                    rows += add_rows(conn, list(rows_of_file(root, rel, fname, rfd)))
                    files += 1
                except (ArchiveError, OSError, ValueError) as e:
                    errors.append(f"{os.path.join(rel, fname)}: {e}")
        finally:
            os.close(rfd)
            conn.close()
        with interrupt.shielded():  # built: put it in place, then honour a late signal
            d = fs.open_state_dir(root)
            try:
                fs.rename_at(d, tmp, CATALOG_NAME)
                done = True
                os.fsync(d)
            finally:
                os.close(d)
    finally:
        if not done:
            # Interrupted (or anything else): no catalog.sqlite.rebuild-PID left behind;
            # the old catalog stays as it was (issue 23: a killed rebuild left its file).
            with interrupt.shielded(), contextlib.suppress(OSError):
                d = fs.open_state_dir(root)
                try:
                    fs.unlink_at(d, tmp)
                finally:
                    os.close(d)
    return {"catalog": final, "files": files, "sessions": rows, "errors": errors,
            "elapsed": round(time.monotonic() - t0, 3)}


class Recorder:
    """An ``on_result`` for a per-session sweep (``sweep --catalog``): a row per archived
    session, read back from its archive (the worker's bytes are gone by then; a small
    archive is in the page cache), written in batches. A row that cannot be made is a
    warning, never a failed session: the archive is already safe."""

    def __init__(self, root: str | os.PathLike[str], fmt: str, batch: int = 500) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.fmt = fmt
        self.batch = batch
        self.pending: list[str] = []
        self.warnings: list[str] = []

    def __call__(self, r: Any) -> None:
        if r.status in ("archived", "resumed"):
            self.pending.append(r.path)
            if len(self.pending) >= self.batch:
                self.flush()

    def flush(self) -> None:
        rows = []
        for path in self.pending:
            rel = os.path.relpath(os.path.dirname(path), self.root)
            try:
                rows += rows_of_file(self.root, "" if rel == "." else rel,
                                     f"{os.path.basename(path)}.{self.fmt}")
            except (ArchiveError, OSError, ValueError) as e:
                self.warnings.append(f"catalog: {path}: {e}")
        self.pending.clear()
        try:
            add_sessions(self.root, rows)
        except (sqlite3.Error, OSError, ArchiveError) as e:
            self.warnings.append(f"catalog not updated: {e}")
