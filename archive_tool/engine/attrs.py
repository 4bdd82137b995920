"""Extended attributes, POSIX ACLs and nanosecond mtimes in the form GNU tar writes.

GNU tar 1.34 ``--xattrs --acls`` (checked here: ``tar --xattrs --acls -cf`` and tarfile's
``pax_headers``) puts, in the PAX extended header of a member:

- ``mtime=<seconds>.<fraction>`` (also atime/ctime, which nobody can restore: not written);
- ``SCHILY.xattr.<name>=<raw value bytes>`` for every xattr, the ACL xattrs
  ``system.posix_acl_access`` / ``system.posix_acl_default`` included (kernel binary form);
- ``SCHILY.acl.access`` / ``SCHILY.acl.default``: the same ACLs as text
  (``user::rw-\\nuser:alice:r--\\n...``, names where the id has one).

We write exactly these, so each tool restores the other's archives. On restore the binary
ACL xattr wins when both are present (it is what the file had, ids and all); the text is
converted when it is the only form (archives of bsdtar or other writers).

Which attributes travel (one rule, used by capture and restore):

- ``user.*`` and the two POSIX ACLs: always (a user can read and set them on their own
  files);
- ``trusted.*`` and ``security.*``: read only as root, and restored only by root restoring
  root's own archive. A user's archive is a file the user could forge: root giving its
  tree to that user (restore.py's owner rule) takes no attribute only root could set.
  ``security.capability`` (file capabilities, as strong as a setuid bit) also needs the
  explicit ``--keep-setuid`` request that setuid/setgid bits on files need;
- anything else (other namespaces, and xattrs of symlinks, which cannot hold ``user.*``):
  not stored, not restored.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import re
import struct
import zlib
from collections.abc import Mapping

XATTR_PREFIX = "SCHILY.xattr."
ACL_ACCESS, ACL_DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
_ACL_TEXT = {ACL_ACCESS: "SCHILY.acl.access", ACL_DEFAULT: "SCHILY.acl.default"}
_TEXT_TO_XATTR = {v: k for k, v in _ACL_TEXT.items()}

# Caps on what one member may carry (hostile archives; read.MemberRules refuses beyond
# them, and capture refuses a source beyond them so that nothing is archived that restore
# would refuse). Linux itself allows names of 255 bytes and values of 64 KiB.
MAX_XATTRS = 128
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 * 1024
MAX_XATTR_TOTAL = 256 * 1024
# A directory's attributes are set after its children exist, so restore holds them until
# the end: bounded over the whole archive (a million dirs of 256 KiB each would be 256 GB).
MAX_HELD_DIR_XATTRS = 64 * 1024 * 1024

Records = list[tuple[str, bytes]]


# --- mtimes ---------------------------------------------------------------------------

_PAX_TIME = re.compile(r"(-?)([0-9]{1,20})(?:\.([0-9]{1,30}))?")


def format_mtime(ns: int) -> str | None:
    """The PAX ``mtime`` value of *ns*, or None when the ustar field holds it (whole
    seconds in its range: no extended header needed). Trailing zeros dropped, as GNU tar.
    Out of range it is written too, so tarfile's fallback never adds its own."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    if not frac:
        return None if not sign and sec < 8**11 else f"{sign}{sec}"
    return f"{sign}{sec}.{frac:09d}".rstrip("0")


def parse_mtime(value: str | None, fallback: float) -> int:
    """Nanoseconds from a PAX ``mtime`` string (tarfile keeps only a float, which cannot
    hold them); *fallback* (the header's seconds) when absent or malformed."""
    if value is not None:
        m = _PAX_TIME.fullmatch(value)
        if m:
            ns = int(m.group(2)) * 1_000_000_000 + int((m.group(3) or "0")[:9].ljust(9, "0"))
            return -ns if m.group(1) else ns
    return int(fallback) * 1_000_000_000


# --- capture --------------------------------------------------------------------------

def _wanted(name: str, as_root: bool) -> bool:
    if name.startswith("user.") or name in _ACL_TEXT:
        return True
    return as_root and name.startswith(("trusted.", "security."))


def read_fd(fd: int, as_root: bool) -> list[tuple[str, bytes]] | None:
    """The attributes of the open file *fd* that travel (see the module doc), sorted by
    name, or None: one flistxattr for an inode that has none (the common case).
    Raises ValueError for attributes beyond the caps or with a name that is not UTF-8."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENOSYS):
            return None
        raise
    if not names:
        return None
    out = []
    for name in sorted(names):
        if not _wanted(name, as_root):
            continue
        try:
            value = os.getxattr(fd, name)
        except OSError as e:
            if e.errno == errno.ENODATA:  # removed meanwhile; the ctime check catches it
                continue
            raise
        out.append((name, value))
    why = check_xattrs(out)
    if why:
        raise ValueError(why)
    return out or None


def check_xattrs(items: list[tuple[str, bytes]]) -> str | None:
    """Why these (name, value) pairs are refused, or None."""
    if len(items) > MAX_XATTRS:
        return f"{len(items)} extended attributes (more than {MAX_XATTRS})"
    total = 0
    for name, value in items:
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:
            return "extended attribute name is not UTF-8"
        if not raw or len(raw) > MAX_XATTR_NAME or "\0" in name or "=" in name:
            return f"extended attribute name {name[:40]!r} is malformed"
        if len(value) > MAX_XATTR_VALUE:
            return f"extended attribute {name!r} of {len(value)} bytes (more than {MAX_XATTR_VALUE})"
        total += len(raw) + len(value)
    if total > MAX_XATTR_TOTAL:
        return f"extended attributes of {total} bytes (more than {MAX_XATTR_TOTAL})"
    return None


def pax_records(mtime_ns: int, xattrs: list[tuple[str, bytes]] | None) -> Records:
    """The PAX records of one member: ns mtime, xattrs, ACLs as text, as GNU tar writes."""
    out: Records = []
    t = format_mtime(mtime_ns)
    if t is not None:
        out.append(("mtime", t.encode()))
    if xattrs:
        for name, value in xattrs:
            out.append((XATTR_PREFIX + name, value))
        for name, value in xattrs:
            text_key = _ACL_TEXT.get(name)
            if text_key is not None:
                try:
                    out.append((text_key, acl_to_text(value).encode()))
                except ValueError:
                    pass  # the kernel gave it; the binary record alone carries it
    return out


def digest(records: Records) -> int:
    """A CRC32 of the attribute records (0 for none): what the streaming verify compares."""
    crc = 0
    for k, v in sorted(records):
        crc = zlib.crc32(b"%d %s=" % (len(v), k.encode("utf-8", "surrogateescape")), crc)
        crc = zlib.crc32(v, crc)
    return crc


def member_records(pax: Mapping[str, str]) -> Records:
    """The records of :func:`pax_records`'s kinds in a member read by tarfile (values back
    to their raw bytes: tarfile decodes them as UTF-8, or surrogateescape when they are
    not)."""
    return [(k, v.encode("utf-8", "surrogateescape")) for k, v in pax.items()
            if k == "mtime" or k.startswith("SCHILY.")]


def check_member(pax: Mapping[str, str]) -> str | None:
    """Why the attribute records of a member are refused (caps, malformed names), or None."""
    if not pax:
        return None
    items = []
    for k, v in pax.items():
        if k.startswith(XATTR_PREFIX):
            items.append((k[len(XATTR_PREFIX):], v.encode("utf-8", "surrogateescape")))
            if items[-1][0] in _ACL_TEXT:
                try:
                    acl_entries(items[-1][1])
                except ValueError as e:
                    return str(e)
        elif k in _TEXT_TO_XATTR and len(v) > MAX_XATTR_VALUE:
            return f"ACL text of {len(v)} bytes"
    return check_xattrs(items) if items else None


# --- restore --------------------------------------------------------------------------

def to_restore(pax: Mapping[str, str], *, trusted: bool, keep_special: bool
               ) -> list[tuple[str, bytes]]:
    """(name, value) to set on a restored entry, by the module's rule. *trusted*: root
    restoring root's own archive; *keep_special*: the explicit request for setuid bits.
    ACL text becomes the binary xattr when no binary form came with it. Raises ValueError
    for a malformed ACL (the archive is refused)."""
    out: dict[str, bytes] = {}
    for k, v in pax.items():
        if k.startswith(XATTR_PREFIX):
            name = k[len(XATTR_PREFIX):]
            if name.startswith("user."):
                out[name] = v.encode("utf-8", "surrogateescape")
            elif name in _ACL_TEXT:
                raw = v.encode("utf-8", "surrogateescape")
                acl_to_text(raw)  # validates: the kernel's EINVAL would say less
                out[name] = raw
            elif trusted and name.startswith(("trusted.", "security.")):
                if name == "security.capability" and not keep_special:
                    continue
                out[name] = v.encode("utf-8", "surrogateescape")
    for k, v in pax.items():
        name = _TEXT_TO_XATTR.get(k)
        if name is not None and name not in out:
            out[name] = acl_from_text(v)
    return sorted(out.items())


def apply_fd(fd: int, items: list[tuple[str, bytes]]) -> None:
    """Set *items* on the open file *fd* (ACLs last is not needed: each is one xattr)."""
    for name, value in items:
        os.setxattr(fd, name, value)


# --- POSIX ACLs: the kernel's binary xattr <-> the text getfacl and GNU tar write ------

_ACL_VERSION = 2
_HDR = struct.Struct("<I")
_ENT = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_TAG_NAME = {USER_OBJ: "user", USER: "user", GROUP_OBJ: "group", GROUP: "group",
             MASK: "mask", OTHER: "other"}
_NAME_TAG = {"user": (USER_OBJ, USER), "u": (USER_OBJ, USER),
             "group": (GROUP_OBJ, GROUP), "g": (GROUP_OBJ, GROUP),
             "mask": (MASK, MASK), "m": (MASK, MASK), "other": (OTHER, OTHER),
             "o": (OTHER, OTHER)}
_UNDEFINED = 0xFFFFFFFF
MAX_ACL_ENTRIES = 1024


@functools.cache
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@functools.cache
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _perm(p: int) -> str:
    return ("r" if p & 4 else "-") + ("w" if p & 2 else "-") + ("x" if p & 1 else "-")


def acl_entries(raw: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of a binary ACL; ValueError if it is not one."""
    if len(raw) < _HDR.size or (len(raw) - _HDR.size) % _ENT.size:
        raise ValueError("malformed ACL")
    if _HDR.unpack_from(raw)[0] != _ACL_VERSION:
        raise ValueError("unknown ACL version")
    n = (len(raw) - _HDR.size) // _ENT.size
    if n > MAX_ACL_ENTRIES:
        raise ValueError("ACL with too many entries")
    out = [_ENT.unpack_from(raw, _HDR.size + i * _ENT.size) for i in range(n)]
    for tag, perm, _id in out:
        if tag not in _TAG_NAME or perm & ~7:
            raise ValueError("malformed ACL entry")
    return out


def acl_to_text(raw: bytes) -> str:
    """The long text form (``getfacl`` without comments; what GNU tar stores)."""
    lines = []
    for tag, perm, ident in acl_entries(raw):
        qual = _user(ident) if tag == USER else _group(ident) if tag == GROUP else ""
        lines.append(f"{_TAG_NAME[tag]}:{qual}:{_perm(perm)}\n")
    return "".join(lines)


def acl_from_text(text: str) -> bytes:
    """The kernel's binary form of an ACL text (long or short form, names or numbers);
    ValueError for anything else, and for a name this host does not know."""
    ents: list[tuple[int, int, int]] = []
    for line in text.replace(",", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) == 2 and parts[0] in ("mask", "m", "other", "o"):
            parts.insert(1, "")  # "other::r--" and "other:r--" are both accepted by setfacl
        if len(parts) != 3 or parts[0] not in _NAME_TAG:
            raise ValueError(f"malformed ACL entry {line[:40]!r}")
        tag_obj, tag_named = _NAME_TAG[parts[0]]
        qual, perms = parts[1], parts[2]
        if len(perms) > 3 or any(c not in "rwx-" for c in perms):
            raise ValueError(f"malformed ACL permissions {perms!r}")
        perm = (4 if "r" in perms else 0) | (2 if "w" in perms else 0) | (1 if "x" in perms else 0)
        if not qual:
            ents.append((tag_obj, perm, _UNDEFINED))
            continue
        if tag_named in (MASK, OTHER):
            raise ValueError(f"malformed ACL entry {line[:40]!r}")
        ents.append((tag_named, perm, _ident(qual, tag_named == USER)))
        if len(ents) > MAX_ACL_ENTRIES:
            raise ValueError("ACL with too many entries")
    ents.sort(key=lambda e: (e[0], e[2]))  # the kernel wants them in this order
    return _HDR.pack(_ACL_VERSION) + b"".join(_ENT.pack(*e) for e in ents)


def _ident(qual: str, user: bool) -> int:
    if qual.isdigit():
        return int(qual)
    try:
        return pwd.getpwnam(qual).pw_uid if user else grp.getgrnam(qual).gr_gid
    except KeyError:
        raise ValueError(f"ACL names {'user' if user else 'group'} {qual!r}, "
                         "unknown on this host") from None
