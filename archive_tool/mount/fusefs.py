"""The FUSE side of ``session-archive mount``: :class:`View` behind mfusepy's high-level
operations, read-only, single-threaded, and :func:`mount`.

mfusepy is imported lazily, inside :func:`mount`: it is an optional extra
(``pip install '.[mount]'``) and, at import time, loads libfuse through ctypes, which
fails on a machine without fuse3. Every other command must work without either.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import shutil
import signal
import stat
import subprocess
from typing import Any

from archive_tool.errors import ArchiveError, BadArgument, MountUnavailable
from archive_tool.mount.session import Entry
from archive_tool.mount.view import View, log

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


def _binding() -> Any:
    try:
        import mfusepy  # lazy on purpose: an optional extra that loads libfuse on import
    except ImportError:
        raise MountUnavailable("mount needs the 'mount' extra: pip install "
                               "'scitex-session-tools[mount]' (and the fuse3 package)") from None
    except OSError as e:  # mfusepy found no libfuse
        raise MountUnavailable(f"mount needs libfuse (install the fuse3 package): {e}") from None
    return mfusepy


# libfuse 3 (fuse_common.h / fuse.h): a kernel READDIRPLUS request, a filler entry that
# carries full attributes, and the capability that makes the kernel ask for READDIRPLUS
# only on a directory's first chunk (cleared: every chunk of a 10k-session dir is "plus").
_READDIR_PLUS = 1 << 0
_FILL_DIR_PLUS = 1 << 1
_CAP_READDIRPLUS_AUTO = 1 << 14
# What the kernel may cache (libfuse's defaults, stated): a sweep, repack or prune while
# mounted must show within about a second, and libfuse's high-level API has one timeout
# for all entries, live and archived alike. Archived files' pages are kept across opens
# instead (keep_cache): their bytes never change under a name while its archive stands.
ENTRY_TIMEOUT = ATTR_TIMEOUT = 1.0


def _attrs(st: os.stat_result) -> dict[str, int]:
    return {"st_mode": st.st_mode, "st_size": st.st_size, "st_uid": st.st_uid,
            "st_gid": st.st_gid, "st_nlink": st.st_nlink, "st_blocks": st.st_blocks,
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns}


def _entry_attrs(e: Entry) -> dict[str, int]:
    return {"st_mode": e.mode, "st_size": e.size, "st_uid": e.uid, "st_gid": e.gid,
            "st_nlink": 2 if stat.S_ISDIR(e.mode) else 1,
            "st_blocks": (e.size + 511) // 512, "st_atime": e.mtime_ns,
            "st_mtime": e.mtime_ns, "st_ctime": e.mtime_ns}


def _groups(pid: int, gid: int) -> set[int]:
    """The caller's groups (its primary *gid* and, from /proc, its supplementary ones)."""
    out = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    out.update(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass
    return out


def permitted(tree: Any, rel: str, want: int, uid: int, gid: int, pid: int) -> bool:
    """Whether the caller may reach *rel* of a decoded session *tree* and access it with
    *want* (4 read; 0 to reach only): search on the session dir and each dir below it, as
    the kernel checks a path, on the archive's own owners and modes. The kernel checked
    it already, but against the attributes it was given, which for a session listed from
    the catalog were the catalog's word (the tree owner's to forge)."""
    if uid == 0:
        return True
    groups = None

    def allows(e: Entry, bits: int) -> bool:
        nonlocal groups
        if e.uid == uid:
            return (e.mode >> 6) & bits == bits
        if groups is None:
            groups = _groups(pid, gid)
        if e.gid in groups:
            return (e.mode >> 3) & bits == bits
        return e.mode & bits == bits

    parts = rel.split("/") if rel else []
    for i in range(len(parts)):
        if not allows(tree.entries["/".join(parts[:i])], 1):
            return False
    return allows(tree.entries[rel], want) if want else True


def binding_class(fuse: Any) -> Any:
    """mfusepy's FUSE with READDIRPLUS. mfusepy 3.1 hands libfuse only each entry's mode,
    and at offset 0, where libfuse's high-level API buffers the whole directory and then
    sends every entry with inode 0 ("no attributes": the kernel LOOKUPs each one anyway).
    Here each entry goes with its own offset, and one our readdir gives full attributes
    for is flagged FUSE_FILL_DIR_PLUS: libfuse registers it and the kernel learns it with
    the listing, without a LOOKUP round trip each. Falls back to mfusepy's own readdir on a
    binding without the hook (libfuse 2, a renamed method)."""
    base = fuse.FUSE
    if getattr(fuse, "fuse_version_major", 0) != 3 or not hasattr(base, "readdir_fuse_3"):
        return base

    class PlusFUSE(base):  # type: ignore[misc, valid-type]
        def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                           fip: Any, flags: int) -> int:
            items = self.operations.readdir_at(
                None if path is None else path.decode(self.encoding, self.errors), offset)
            plus = bool(flags & _READDIR_PLUS)
            for i in range(offset, len(items)):
                name, attrs = items[i]
                st = fuse.c_stat()
                full = plus and len(attrs) > 1
                if full:
                    fuse.set_st_attrs(st, attrs, use_ns=True)
                else:
                    st.st_mode = attrs["st_mode"]
                # Offset i + 1 (never 0): the kernel asks again from there when the
                # buffer is full (filler answers 1).
                if filler(buf, name.encode(self.encoding, self.errors), st, i + 1,
                          _FILL_DIR_PLUS if full else 0) != 0:
                    break
            return 0

    return PlusFUSE


def operations(view: View, fuse: Any) -> Any:
    """An mfusepy Operations object serving *view*."""

    class Ops(fuse.Operations):  # type: ignore[misc, name-defined]
        use_ns = True  # times as integer nanoseconds (mfusepy warns otherwise)

        def __init__(self) -> None:
            self.handles: dict[int, Any] = {}
            self.last_listing: tuple[str | None, list[Any]] = (None, [])
            self.next_fh = 1
            self.started = False

        def init_with_config(self, conn: Any, config: Any) -> None:
            self.started = True
            if config is not None:
                config.entry_timeout = ENTRY_TIMEOUT
                config.attr_timeout = ATTR_TIMEOUT
                config.negative_timeout = 0.0
            if conn is not None and conn.capable & _CAP_READDIRPLUS_AUTO:
                conn.want &= ~_CAP_READDIRPLUS_AUTO

        def _resolve(self, path: str) -> Any:
            try:
                return view.resolve(path)
            except OSError as e:
                if e.errno == errno.EIO:
                    log.error("%s: %s", path, e.strerror)
                raise fuse.FuseOSError(e.errno or errno.EIO) from None

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            node = self._resolve(path)
            if node.live:
                return _attrs(node.st)
            return _entry_attrs(node.entry)

        def readdir_at(self, path: str, offset: int) -> list[tuple[str, dict[str, int]]]:
            """The listing of *path* as (name, attributes): computed at offset 0, the
            same list served for the rest of that directory's reads (the next chunks
            come at once: single-threaded, one directory read at a time)."""
            if offset and self.last_listing[0] == path:
                return self.last_listing[1]
            try:
                entries = view.listdir_plus(path)
            except OSError as e:
                raise fuse.FuseOSError(e.errno or errno.EIO) from None
            out = [(".", {"st_mode": stat.S_IFDIR}), ("..", {"st_mode": stat.S_IFDIR})]
            for n, m, a in entries:
                if a is None:
                    out.append((n, {"st_mode": m}))
                elif isinstance(a, Entry):
                    out.append((n, _entry_attrs(a)))
                else:
                    out.append((n, _attrs(a)))
            self.last_listing = (path, out)
            return out

        def readdir(self, path: str, fh: int) -> list[Any]:
            # mfusepy's own readdir (a binding without the READDIRPLUS hook).
            return [(n, a, 0) for n, a in self.readdir_at(path, 0)]

        def readlink(self, path: str) -> str:
            node = self._resolve(path)
            if node.live:
                if not stat.S_ISLNK(node.st.st_mode):
                    raise fuse.FuseOSError(errno.EINVAL)
                try:
                    return view.readlink_live(node.rel)
                except OSError as e:
                    raise fuse.FuseOSError(e.errno or errno.EIO) from None
            if not stat.S_ISLNK(node.entry.mode):
                raise fuse.FuseOSError(errno.EINVAL)
            return self._real(node, path)[1].link

        def _real(self, node: Any, path: str) -> tuple[Any, Entry]:
            """The archive's own entry for an archived node (listed from the catalog or
            decoded): a target or a byte is served from the archive, never the catalog."""
            try:
                tree = view.verified(node.tree)
            except OSError as e:
                if e.errno == errno.EIO:
                    log.error("%s: %s", path, e.strerror)
                raise fuse.FuseOSError(e.errno or errno.EIO) from None
            e = tree.entries.get(node.rel)
            if e is None:
                raise fuse.FuseOSError(errno.ENOENT)
            # Always, not only for a tree listed just now: the kernel may still hold
            # attributes a catalog listing gave it before the session was decoded.
            uid, gid, pid = fuse.fuse_get_context()
            if not permitted(tree, node.rel, 4 if stat.S_ISREG(e.mode) else 0, uid, gid, pid):
                raise fuse.FuseOSError(errno.EACCES)
            return tree, e

        def open(self, path: str, fi: Any) -> int:
            if fi.flags & _WRITE_FLAGS:
                raise fuse.FuseOSError(errno.EROFS)
            node = self._resolve(path)
            if node.live:
                try:
                    h: Any = view.open_live(node.rel)
                except OSError as e:
                    raise fuse.FuseOSError(e.errno or errno.EIO) from None
            else:
                if not stat.S_ISREG(node.entry.mode):
                    raise fuse.FuseOSError(errno.EISDIR)
                tree, e = self._real(node, path)
                # The decoded tar itself, not the cache slot: a repack or an eviction
                # while the file is open leaves the bytes it opened readable.
                h = (tree.blob, e.offset, e.size)
                # Immutable while its archive stands: the kernel keeps its pages across
                # opens (a changed archive is a new lookup after the 1 s timeouts).
                fi.keep_cache = 1
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = h
            fi.fh = fh
            return 0

        def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
            fh = fi.fh
            h = self.handles.get(fh)
            if h is None:
                raise fuse.FuseOSError(errno.EBADF)
            if isinstance(h, int):
                return os.pread(h, size, offset)
            blob, start, length = h
            n = max(0, min(size, length - offset))
            return blob.pread(n, start + offset) if n else b""

        def release(self, path: str, fi: Any) -> int:
            h = self.handles.pop(fi.fh, None)
            if isinstance(h, int):
                os.close(h)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            s = os.statvfs(view.root_fd)
            return {k: getattr(s, k) for k in (
                "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                "f_ffree", "f_favail", "f_namemax")}

        def destroy(self, path: str) -> None:
            for h in self.handles.values():
                if isinstance(h, int):
                    os.close(h)
            self.handles.clear()
            view.close()

    return Ops()


def _take_over(mountpoint: str) -> None:
    """A mount whose process was killed leaves its mount point answering ENOTCONN:
    detach it (lazily) so this mount can take its place."""
    try:
        # An open, not a stat: the kernel may answer a stat of a dead mount's root from
        # its attribute cache; an open must ask the (gone) process.
        os.close(os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        st = os.stat(mountpoint)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise BadArgument(f"{mountpoint}: {e.strerror}") from None
        tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
        r = subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, text=True)
        if r.returncode:
            raise BadArgument(f"{mountpoint}: stale mount that cannot be detached: "
                              f"{r.stderr.strip()}") from None
        log.warning("%s: detached a stale mount left by a killed process", mountpoint)
        st = os.stat(mountpoint)
    if not stat.S_ISDIR(st.st_mode):
        raise BadArgument(f"{mountpoint}: not a directory")


def _logging(foreground: bool, log_file: str | None) -> None:
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file)
    elif foreground or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler()
    else:  # a daemon's stderr goes to /dev/null once libfuse forks
        handler = logging.handlers.SysLogHandler("/dev/log")
    handler.setFormatter(logging.Formatter("session-archive mount: %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def mount(root: str, mountpoint: str, *, foreground: bool = False, allow_other: bool = False,
          cache_bytes: int = 64 << 20, ttl: float = 1.0, log_file: str | None = None) -> None:
    """Mount ROOT read-only at *mountpoint* as it looked before the sweeps; returns when
    unmounted (``fusermount3 -u``, SIGTERM, SIGINT). Without *foreground* libfuse
    detaches into the background once the mount is up."""
    fuse = _binding()
    mountpoint = os.path.abspath(mountpoint)
    real_root, real_mnt = os.path.realpath(root), os.path.realpath(mountpoint)
    if os.path.commonpath([real_root, real_mnt]) == real_root:
        # Listing ROOT would walk into the mount itself: a single-threaded daemon waiting
        # on its own request hangs (and the view would recurse).
        raise BadArgument(f"{mountpoint}: the mount point may not be inside ROOT ({root})")
    view = View(root, cache_bytes=cache_bytes, ttl=ttl)
    try:
        _take_over(mountpoint)
        _logging(foreground, log_file)
        # default_permissions always: the kernel checks each file's archived owner and mode
        # (without it, allow_other would let every user read everything). nodev/nosuid: a
        # device node or setuid bit in a user's archive stays inert.
        ops = operations(view, fuse)
        # libfuse installs its own SIGTERM/SIGINT/SIGHUP handlers (end the loop, unmount)
        # only over the default disposition; the CLI's interrupt handlers (interrupt.py)
        # just set a flag Python never gets to see while the C loop runs.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        try:
            binding_class(fuse)(ops, mountpoint, foreground=foreground, raw_fi=True,
                      nothreads=True, ro=True, default_permissions=True,
                      allow_other=allow_other, nodev=True, nosuid=True,
                      fsname="session-archive", subtype="session-archive")
        except RuntimeError:
            # libfuse 3 returns non-zero also when a signal (SIGTERM, SIGINT) ended a
            # mount it then unmounted cleanly; only a mount that never started failed
            # (libfuse printed why: no /dev/fuse, busy mount point, ...).
            if not ops.started:
                raise ArchiveError(mountpoint, "mount failed") from None
    finally:
        view.close()
