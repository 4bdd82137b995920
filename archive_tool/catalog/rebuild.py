"""``catalog --rebuild``: the catalog made again from the packs and archives alone, found
by a walk by dir fds below the root that never follows a symlink (``walk_archives``, also
what ``catalog --check`` compares with), each file opened below the root, regular only."""

from __future__ import annotations

import contextlib
import errno
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
from archive_tool.catalog.rows import (
    CONFIG_NAMES,
    config_of,
    entry_row,
    make_row,
    session_row,
)
from archive_tool.engine.formats import OutputTooBig, decompress_bytes
from archive_tool.engine.read import iter_members, open_tar
from archive_tool.engine.tarwrite import iter_tar
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.guard import interrupt, untrusted
from archive_tool.names import RUNNING_STATE, is_session_name, split_archive_name
from archive_tool.pack import entrypath, packfile
from archive_tool.sweep.plan import check_root

# A per-session archive is read into memory up to this size (compressed, and its tar);
# a bigger one is streamed (bounded memory), its row made from the member headers.
IN_MEMORY_CAP = 64 * 1024 * 1024
# Rows written per SQLite transaction. A transaction per archive cost ~6 metadata calls
# each (the journal and WAL probes, an fstat, an fdatasync: issue 24); the file is a temp
# that only replaces the catalog once complete, so how it is committed on the way does
# not change what a crash leaves (the old catalog, or the complete new one).
ROWS_PER_COMMIT = 1000
_REBUILD_TMP = re.compile(rf"^{re.escape(CATALOG_NAME)}\.rebuild-(\d+)$")


def _walk_into(name: str) -> bool:
    # Hidden dirs (our state dir, a crash's trash .X.deleting, restore temps .X.restore-*),
    # RUNNING/ and session dirs hold no archives of ours: session content, not archives
    # (discovery and extract --tree's walk do not enter them either). Not entering them
    # saves an open, an fstat and a listing per dir (issue 24).
    return not name.startswith(".") and name != RUNNING_STATE and not is_session_name(name)


def walk_archives(root_fd: int) -> Iterator[tuple[str, str, int]]:
    """(dir relative to root, file name, fd of that dir) of every pack and session archive
    below the root: a walk by dir fds that never follows a symlink (a link to another
    user's archive is not read), skips dirs on another filesystem and the dirs that hold
    no archives (_walk_into). The dir fd is the walk's, valid until the next item: open
    the file relative to it (:func:`open_listed`) instead of walking down from the root
    again. Types come from the listing (d_type): no lstat per entry; what a name is when
    it is opened is checked then (O_NOFOLLOW, fstat)."""
    dev = os.fstat(root_fd).st_dev
    stack: list[tuple[str, int]] = [("", os.dup(root_fd))]
    try:
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
                        if e.is_dir(follow_symlinks=False):
                            if _walk_into(e.name):
                                subdirs.append(e.name)
                            continue
                        if not e.is_file(follow_symlinks=False):
                            continue  # symlinks, FIFOs, devices: never opened
                    except OSError:
                        continue
                    if packfile.is_pack_name(e.name):
                        yield rel, e.name, fd
                    else:
                        named = split_archive_name(e.name)
                        if named and is_session_name(named[0]):
                            yield rel, e.name, fd
                for name in reversed(subdirs):
                    try:
                        # O_NOFOLLOW|O_DIRECTORY: a symlink swapped in since the listing is
                        # ELOOP/ENOTDIR, never followed; its fstat says which filesystem.
                        child = os.open(name, fs.O_DIR, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        same_dev = os.fstat(child).st_dev == dev
                    except OSError:
                        same_dev = False
                    if not same_dev:
                        os.close(child)
                        continue
                    stack.append((f"{rel}/{name}" if rel else name, child))
            finally:
                os.close(fd)
    finally:  # the walk stopped early (a signal, an error): no fd left open
        for _, fd in stack:
            os.close(fd)


def open_listed(dir_fd: int, fname: str, dev: int, label: str) -> tuple[int, os.stat_result]:
    """(fd, its fstat) of the file *fname* a walk listed in *dir_fd*: O_NOFOLLOW|
    O_NONBLOCK, a regular file on the root's device *dev* (UntrustedInput otherwise, as
    untrusted.open_file_below refuses). One open and one fstat."""
    try:
        fd = os.open(fname, fs.O_FILE | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        raise untrusted.refusal(label, e) from None
    try:
        st = os.fstat(fd)
        err = (errno.EINVAL if not stat.S_ISREG(st.st_mode) else
               errno.EXDEV if st.st_dev != dev else 0)
    except OSError as e:
        err = e.errno or errno.EIO
    if err:
        os.close(fd)
        raise untrusted.refusal(label, OSError(err, os.strerror(err)))
    return fd, st


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
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    yield from rows_of_fd(root, rel, fname, fd, st)


def rows_of_fd(root: str, rel: str, fname: str, fd: int, st: os.stat_result
               ) -> Iterator[dict[str, Any]]:
    """The rows of the pack or session archive *rel*/*fname* open as *fd* (closed when
    done; *st* its fstat, so its size costs no second call)."""
    path = os.path.join(root, rel, fname)
    arel = os.path.join(rel, fname)
    if packfile.is_pack_name(fname):
        with packfile.Pack(path, fd, st.st_size) as p:  # no second fstat (issue 24)
            for i, entry in enumerate(p.names):
                f = p.frames[i]
                # A spanning pack (--pack auto) names the session's path below it.
                entrypath.check_entry(path, entry)
                yield entry_row(p.members(i), entry, rel, arel, i, f.offset, f.csize)
        return
    name, fmt = split_archive_name(fname)  # type: ignore[misc]
    size = st.st_size
    if size > IN_MEMORY_CAP:
        yield _streamed_row(fd, path, name, rel, arel, size)
        return
    try:
        data = untrusted.read_capped(fd, IN_MEMORY_CAP, path, size)
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
    # The state dir is opened once, for the cleanup, the rename and its fsync.
    d = fs.open_state_dir(root)
    done = False
    try:
        _remove_dead_rebuilds(d)
        fs.unlink_at(d, tmp)
        conn = connect(root, tmp)
        files = rows = 0
        errors: list[str] = []
        pending: list[dict[str, Any]] = []
        rfd = fs.open_trusted_dir(root)
        try:
            dev = os.fstat(rfd).st_dev
            for rel, fname, dfd in walk_archives(rfd):
                interrupt.check()  # SIGTERM: the half-built file is removed below
                arel = os.path.join(rel, fname)
                try:
                    # Opened relative to the dir fd the walk holds: no walk down from
                    # the root again per archive (issue 24: 3 opens + 2 fstats each).
                    fd, st = open_listed(dfd, fname, dev, os.path.join(root, arel))
                    pending += list(rows_of_fd(root, rel, fname, fd, st))
                    files += 1
                except (ArchiveError, OSError, ValueError) as e:
                    errors.append(f"{arel}: {e}")
                if len(pending) >= ROWS_PER_COMMIT:
                    rows += add_rows(conn, pending)
                    pending.clear()
            rows += add_rows(conn, pending)
        finally:
            os.close(rfd)
            conn.close()
        with interrupt.shielded():  # built: put it in place, then honour a late signal
            fs.rename_at(d, tmp, CATALOG_NAME)
            done = True
            os.fsync(d)
    finally:
        if not done:
            # Interrupted (or anything else): no catalog.sqlite.rebuild-PID left behind;
            # the old catalog stays as it was (issue 23: a killed rebuild left its file).
            with interrupt.shielded(), contextlib.suppress(OSError):
                fs.unlink_at(d, tmp)
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
