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


def _attrs(st: os.stat_result) -> dict[str, int]:
    return {"st_mode": st.st_mode, "st_size": st.st_size, "st_uid": st.st_uid,
            "st_gid": st.st_gid, "st_nlink": st.st_nlink, "st_blocks": st.st_blocks,
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns}


def operations(view: View, fuse: Any) -> Any:
    """An mfusepy Operations object serving *view*."""

    class Ops(fuse.Operations):  # type: ignore[misc, name-defined]
        use_ns = True  # times as integer nanoseconds (mfusepy warns otherwise)

        def __init__(self) -> None:
            self.handles: dict[int, Any] = {}
            self.next_fh = 1
            self.started = False

        def init(self, path: str) -> None:
            self.started = True

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
            e = node.entry
            return {"st_mode": e.mode, "st_size": e.size, "st_uid": e.uid, "st_gid": e.gid,
                    "st_nlink": 2 if stat.S_ISDIR(e.mode) else 1,
                    "st_blocks": (e.size + 511) // 512, "st_atime": e.mtime_ns,
                    "st_mtime": e.mtime_ns, "st_ctime": e.mtime_ns}

        def readdir(self, path: str, fh: int) -> list[Any]:
            try:
                entries = view.listdir(path)
            except OSError as e:
                raise fuse.FuseOSError(e.errno or errno.EIO) from None
            return [".", ".."] + [(n, {"st_mode": m}, 0) for n, m in entries]

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
            return node.entry.link

        def open(self, path: str, flags: int) -> int:
            if flags & _WRITE_FLAGS:
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
                # The decoded tar itself, not the cache slot: a repack or an eviction
                # while the file is open leaves the bytes it opened readable.
                h = (node.tree.blob, node.entry.offset, node.entry.size)
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = h
            return fh

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            h = self.handles.get(fh)
            if h is None:
                raise fuse.FuseOSError(errno.EBADF)
            if isinstance(h, int):
                return os.pread(h, size, offset)
            blob, start, length = h
            n = max(0, min(size, length - offset))
            return blob.pread(n, start + offset) if n else b""

        def release(self, path: str, fh: int) -> int:
            h = self.handles.pop(fh, None)
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
            fuse.FUSE(ops, mountpoint, foreground=foreground,
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
