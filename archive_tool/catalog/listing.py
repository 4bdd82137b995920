"""A session's member list, kept in the catalog's ``listing`` table so ``mount`` lists an
archived session without decompressing it (issue 25).

One entry per member: ``(rel, st_mode, size, mtime_ns, uid, gid, link)`` — *rel* below
the session dir ("" is the dir itself), the attributes as ``mount/session.py``'s
``index_session`` derives them from the decoded tar (a hard link carries its target's
attributes), JSON, zlib-compressed: ~0.3 KB a real-shape session.

:func:`listing_of` walks the tar headers the sweep (or rebuild, or repack) already holds
in memory — ustar + PAX, no tarfile (~40 us a header there) — and gives up (``None``: no
listing, the mount decodes that session) on anything outside what our writer produces
that index_session would judge: GNU long names, base-256 numbers, global headers,
device nodes, sparse files, a bad checksum, a name outside the session, a duplicate.

:func:`parse` reads one back for the mount. The catalog is the tree owner's to forge, so
a listing is checked (types, bounds, plain relative names) and only ever *listed* from:
the mount serves bytes from the archive alone, and compares the listing with the decoded
archive before it does (mount/view.py).
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import zlib
from typing import NamedTuple

from archive_tool.engine.read import member_path
from archive_tool.engine.tarwrite import member_mtime_ns, pax_time_ns

# Bounds on what parse() accepts from a (possibly forged) catalog: a real session holds
# tens to a few thousand members (mount/session.py refuses an archive of more than 100k).
MAX_ENTRIES = 100_000
MAX_JSON = 32 * 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_REG = (tarfile.REGTYPE, tarfile.AREGTYPE)
_PERM = 0o7777


class Member(NamedTuple):
    mode: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    link: str


def _num(field: bytes) -> int | None:
    if field[:1] in (b"\x80", b"\xff"):
        return None  # base-256: not what our writer emits; tarfile's rules then
    s = field.split(b"\0", 1)[0].strip()
    try:
        return int(s or b"0", 8)
    except ValueError:
        return None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(buf: bytes) -> dict[str, str] | None:
    """The records of a PAX header, as tarfile reads them ("<len> <key>=<value>\\n")."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(buf):
        if buf[pos] == 0:
            break
        sp = buf.find(b" ", pos)
        if sp < 0:
            return None
        try:
            n = int(buf[pos:sp])
        except ValueError:
            return None
        rec = buf[sp + 1:pos + n]
        if n <= 0 or pos + n > len(buf) or not rec.endswith(b"\n") or b"=" not in rec:
            return None
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += n
    return out


def _member(out: dict[str, Member], top: str, name: str, typ: bytes, mode: int, uid: int,
            gid: int, size: int, mtime_ns: int, link: str) -> tuple[str, Member] | None:
    """(rel, attributes) of one member of session *top* as index_session would show it,
    given the members before it (*out*); None for anything it would refuse or we do not
    vouch for."""
    prefix = top + "/"
    path = member_path(name)
    if "\0" in path or "\0" in link or path.startswith("/"):
        return None
    if path == top:
        rel = ""
    elif path.startswith(prefix):
        rel = path[len(prefix):]
        if any(p in ("", ".", "..") for p in rel.split("/")):
            return None
    else:
        return None
    if rel in out:
        return None  # a duplicate: the member rules refuse the archive
    if typ == tarfile.DIRTYPE:
        if size:
            return None
        return rel, Member(stat.S_IFDIR | (mode & _PERM), 0, mtime_ns, uid, gid, "")
    if typ == tarfile.SYMTYPE:
        if size:
            return None
        return rel, Member(stat.S_IFLNK | 0o777, len(os.fsencode(link)), mtime_ns, uid, gid,
                           link)
    if typ == tarfile.LNKTYPE:
        target = member_path(link)
        t = out.get("" if target == top else target[len(prefix):]
                    if target.startswith(prefix) else "\0")
        if size or t is None or not stat.S_ISREG(t.mode):
            return None
        return rel, t
    if typ in _REG:
        return rel, Member(stat.S_IFREG | (mode & _PERM), size, mtime_ns, uid, gid, "")
    return None


class Collector:
    """The same listing from tarfile's members one at a time (rebuild's streamed path
    for an archive too big to hold: no bytes to walk)."""

    def __init__(self, top: str) -> None:
        self.top = top
        self.out: dict[str, Member] | None = {}

    def add(self, m: tarfile.TarInfo) -> None:
        if self.out is None:
            return
        got = _member(self.out, self.top, m.name, m.type, m.mode, m.uid, m.gid, m.size,
                      member_mtime_ns(m), m.linkname)
        if got is None or len(self.out) >= MAX_ENTRIES:
            self.out = None
        else:
            self.out[got[0]] = got[1]

    def blob(self) -> bytes | None:
        return encode(self.out) if self.out else None


def members_of(tar: bytes, top: str) -> dict[str, Member] | None:
    """rel -> attributes of each member of the tar bytes of session *top*, or None when
    the tar holds anything this walker does not vouch for (the mount then decodes)."""
    out: dict[str, Member] = {}
    pos, n = 0, len(tar)
    pax: dict[str, str] | None = None
    while pos + _BLOCK <= n:
        h = tar[pos:pos + _BLOCK]
        if h == tarfile.NUL * _BLOCK:
            break
        chk = _num(h[148:156])
        if chk is None or chk != sum(h[:148]) + 256 + sum(h[156:]):
            return None
        size = _num(h[124:136])
        if size is None:
            return None
        typ = h[156:157]
        data = pos + _BLOCK
        if typ == tarfile.XHDTYPE:
            if pax is not None or data + size > n:
                return None
            pax = _pax(tar[data:data + size])
            if pax is None:
                return None
            pos = data + size + (-size % _BLOCK)
            continue
        name = _text(h[0:100])
        # As tarfile.TarInfo.frombuf: a V7 dir (a file named "x/"), then the ustar prefix.
        if typ == tarfile.AREGTYPE and name.endswith("/"):
            typ = tarfile.DIRTYPE
        if h[345] != 0:
            name = _text(h[345:500]) + "/" + name
        mode, uid, gid, mtime = (_num(h[100:108]), _num(h[108:116]), _num(h[116:124]),
                                 _num(h[136:148]))
        if mode is None or uid is None or gid is None or mtime is None:
            return None
        link = _text(h[157:257])
        mtime_ns = mtime * 1_000_000_000
        if pax:
            name = pax.get("path", name)
            link = pax.get("linkpath", link)
            try:
                uid = int(pax.get("uid", uid))
                gid = int(pax.get("gid", gid))
                size = int(pax.get("size", size))
                if "mtime" in pax:
                    mtime_ns = pax_time_ns(pax["mtime"])
            except ValueError:
                return None
        pax = None
        if typ in _REG and data + size > n:
            return None
        got = _member(out, top, name, typ, mode, uid, gid, size, mtime_ns, link)
        if got is None:
            return None
        out[got[0]] = got[1]
        pos = data + size + (-size % _BLOCK) if typ in _REG else data
    return out if out else None


def encode(members: dict[str, Member]) -> bytes:
    rows = [[rel, *m] for rel, m in members.items()]
    return zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 6)


def listing_of(tar: bytes, top: str) -> bytes | None:
    """The catalog's listing blob of session *top* from its tar bytes, or None."""
    try:
        members = members_of(tar, top)
    except (ValueError, IndexError, UnicodeError):
        return None
    return encode(members) if members is not None and len(members) <= MAX_ENTRIES else None


def parse(blob: object, root_only: bool = False) -> dict[str, Member] | None:
    """A listing blob from the catalog, checked: None if it is not one we write. With
    *root_only*, only the session dir's own entry (first, as our writer stores it; {} if
    the list has none) is checked and returned: what a listing of the dir above needs."""
    if not isinstance(blob, bytes):
        return None
    try:
        d = zlib.decompressobj()
        raw = d.decompress(blob, MAX_JSON)
        if d.unconsumed_tail or not d.eof:
            return None
        rows = json.loads(raw)
    except (zlib.error, ValueError, RecursionError):
        return None
    if not isinstance(rows, list) or not rows or len(rows) > MAX_ENTRIES:
        return None
    if root_only:
        first = rows[0]
        if not (isinstance(first, list) and first and first[0] == ""):
            return {}
        rows = rows[:1]
    # Types first, for the whole list in C (set(map(type, ...))): a Python check per
    # field was half the cost of listing a session.
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {7}:
        return None
    cols = list(zip(*rows, strict=True))
    if set(map(type, cols[0] + cols[6])) != {str} or \
            set(map(type, cols[1] + cols[2] + cols[3] + cols[4] + cols[5])) != {int}:
        return None
    if min(cols[1] + cols[2] + cols[4] + cols[5]) < 0 or max(cols[1] + cols[4] + cols[5]) \
            >= 1 << 32 or max(cols[2]) >= 1 << 63 or not -(1 << 63) <= min(cols[3]) \
            or max(cols[3]) >= 1 << 63:
        return None
    out: dict[str, Member] = {}
    for r in rows:
        rel, mode, size, mtime, uid, gid, link = r
        if "\0" in rel or "\0" in link or (rel and any(
                p in ("", ".", "..") for p in rel.split("/"))):
            return None
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK) or mode & ~(kind | _PERM) \
                or (link and kind != stat.S_IFLNK) or rel in out:
            return None
        out[rel] = Member(mode, size, mtime, uid, gid, link)
    return out
