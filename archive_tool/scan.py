"""Read one session dir into a manifest: every entry, its type, size and stat fingerprint.

The manifest is what gets archived, what the archive is checked against, and what must
still be true of the source just before it is deleted.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .errors import SourceUnreadable, UnsafeSource

FILE, DIR, LINK = "f", "d", "l"


@dataclass(slots=True)
class Entry:
    rel: str  # path below the session dir ("" for the dir itself), "/"-separated
    kind: str  # FILE, DIR or LINK
    size: int  # bytes of content (0 for dirs and links)
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    uid: int
    gid: int
    linkname: str = ""

    def fingerprint(self) -> tuple[int, int, int, int]:
        return (self.ino, self.size, self.mtime_ns, self.ctime_ns)


def _entry(rel: str, st: os.stat_result, kind: str, linkname: str = "") -> Entry:
    return Entry(
        rel,
        kind,
        st.st_size if kind == FILE else 0,
        st.st_mode,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_uid,
        st.st_gid,
        linkname,
    )


def scan_session(src: str) -> list[Entry]:
    """Manifest of *src*, parents before children, names sorted (deterministic archives).

    Refuses (UnsafeSource) FIFOs, sockets and device files, and symlinks whose target is
    absolute or resolves outside the session: tarfile silently drops sockets, and the
    ``data`` extraction filter refuses the rest, so archiving them would produce an archive
    that cannot be restored safely — the one thing we must never delete a source for.
    """
    try:
        st = os.lstat(src)
    except OSError as e:
        raise SourceUnreadable(src, e.strerror or str(e)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSource(src, "not a directory")
    entries = [_entry("", st, DIR)]
    real_root = os.path.realpath(src)
    _walk(src, "", entries, real_root)
    return entries


def _walk(top: str, rel: str, out: list[Entry], real_root: str) -> None:
    path = os.path.join(top, rel) if rel else top
    try:
        with os.scandir(path) as it:
            items = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise SourceUnreadable(path, e.strerror or str(e)) from None
    for item in items:
        r = f"{rel}/{item.name}" if rel else item.name
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as e:
            raise SourceUnreadable(item.path, e.strerror or str(e)) from None
        mode = st.st_mode
        if stat.S_ISREG(mode):
            out.append(_entry(r, st, FILE))
        elif stat.S_ISDIR(mode):
            out.append(_entry(r, st, DIR))
            _walk(top, r, out, real_root)
        elif stat.S_ISLNK(mode):
            target = os.readlink(item.path)
            _check_link(item.path, r, target, real_root)
            out.append(_entry(r, st, LINK, target))
        else:
            what = (
                "FIFO" if stat.S_ISFIFO(mode)
                else "socket" if stat.S_ISSOCK(mode)
                else "device file"
            )
            raise UnsafeSource(item.path, f"{what} cannot be archived safely; session kept")


def _check_link(path: str, rel: str, target: str, real_root: str) -> None:
    if os.path.isabs(target):
        raise UnsafeSource(path, f"symlink to absolute path {target!r}; session kept")
    lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    # Lexically inside is not enough: "a -> ." then "b -> a/../x" resolves outside.
    # realpath follows the links that exist now, which is what a restore will see.
    real = os.path.realpath(os.path.join(os.path.dirname(path), target))
    inside = real == real_root or real.startswith(real_root + os.sep)
    if lexical == ".." or lexical.startswith("../") or not inside:
        raise UnsafeSource(path, f"symlink {target!r} points outside the session; session kept")


def newest_mtime_ns(entries: list[Entry]) -> int:
    return max(e.mtime_ns for e in entries)


def content_bytes(entries: list[Entry]) -> int:
    return sum(e.size for e in entries)
