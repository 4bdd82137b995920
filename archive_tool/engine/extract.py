"""Extract one archive member by member into a fresh temp dir, every entry created
relative to a dir fd (fs.py): the restore's safety without tarfile's extraction
machinery (see :func:`extract_into`); and one member's bytes to a stream
(:func:`copy_member`, ``unpack --member``) under the same member rule."""

from __future__ import annotations

import errno
import os
import tarfile
from collections import OrderedDict
from typing import IO

from archive_tool import fs
from archive_tool.engine import attrs, commit
from archive_tool.engine.read import CHUNK, MemberRules, drain, iter_members, member_path, open_tar
from archive_tool.engine.scan import DIR, FILE, LINK, escaping_link
from archive_tool.errors import ArchiveError, ArchiveTooLarge, CorruptArchive, UnsafeArchive
from archive_tool.guard import interrupt
from archive_tool.names import is_session_name


class MultiTop(Exception):
    """Internal: the archive has more than one top-level entry; extract unstripped."""


def _umask() -> int:
    # /proc says it without changing it (os.umask would, briefly, for every thread).
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def restore_mode(mode: int, umask: int, keep_special: bool = False,
                 is_dir: bool = False) -> int:
    """Permissions of a restored entry, as GNU tar gives them to the user running it: the
    archived bits less the umask (000 stays 000, 664 under umask 022 becomes 644).
    setuid/setgid/sticky only when root asks for them explicitly (*keep_special*), except
    setgid on a directory, always kept: shared group dirs rely on it for the group of new
    files, it grants nothing (the kernel clears it on chmod by a user outside the dir's
    group), and restore gives the dir to its restorer or the archive's owner anyway."""
    bits = mode & 0o777 & ~umask
    if keep_special:
        bits |= mode & 0o7000
    elif is_dir:
        bits |= mode & 0o2000
    return bits


class _Dirs:
    """fds of directories created below the restore's temp dir, by relative path.

    Everything is created relative to these fds, never by path: a user who can write the
    destination's parent may rename the temp dir away and put a symlink in its place, but
    our fds still point into the dir we made (mode 0700, ours), so nothing lands elsewhere.
    """

    def __init__(self, top_fd: int, limit: int = 32) -> None:
        self.top_fd = top_fd
        self.limit = limit
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.made: set[str] = {""}

    def get(self, rel: str) -> int:
        if rel == "":
            return self.top_fd
        fd = self.fds.get(rel)
        if fd is None:
            if rel not in self.made:
                self.makedirs(rel)
            fd = fs.open_beneath(self.top_fd, rel)
            self.fds[rel] = fd
            while len(self.fds) > self.limit:
                os.close(self.fds.popitem(last=False)[1])
        else:
            self.fds.move_to_end(rel)
        return fd

    def makedirs(self, rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in self.made:
                parent, _, name = sub.rpartition("/")
                os.mkdir(name, 0o700, dir_fd=self.get(parent))
                self.made.add(sub)

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])


def _below(archive: str, rel: str, prefix: str) -> tuple[str, str]:
    """(prefix, the rest of *rel* below it); UnsafeArchive if *rel* is not at or below."""
    if rel == prefix:
        return prefix, ""
    if rel.startswith(prefix + "/"):
        return prefix, rel[len(prefix) + 1:]
    raise UnsafeArchive(archive, f"refused: {rel!r} is not below {prefix!r}")


def extract_into(archive: str, afd: int, tmp_fd: int, max_bytes: int, max_members: int,
                 strip: bool | str, owner: tuple[int, int] | None = None,
                 keep_special: bool = False) -> int:
    """Extract every member of the open archive *afd* below the open dir *tmp_fd*;
    returns the content bytes written. *archive* names it in messages; *afd* is closed.

    With *strip*, the archive's single top-level directory becomes the temp dir itself
    (its members land directly in it), so the caller renames it into place — one rename
    instead of a rename, a listdir and an rmdir per restore. Raises MultiTop when the
    archive turns out to have more than one top-level entry. *strip* as a path (a
    spanning pack's session, ``a/b/<ID>-main``): that dir becomes the temp dir, and a
    member not below it is refused.

    Safety without tarfile's extraction machinery, whose ``data`` filter resolves the
    realpath of every member (~10 lstat calls each: most of a small restore's cost):
    the temp dir is new and empty, every member passes ``read.MemberRules``, every entry
    is created by us relative to a dir fd (O_EXCL / O_NOFOLLOW / mkdirat / symlinkat),
    hard links only to regular files this restore extracted, and every created symlink
    must resolve inside the tree (resolved over what was extracted, not the live fs).
    With *owner* (root restoring a user's archive) every entry is given to that owner.
    """
    total = count = 0
    top: str | None = None
    root_attrs: tuple[int, int, list[tuple[str, bytes]]] | None = None
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    dir_attrs: list[tuple[str, int, int, list[tuple[str, bytes]]]] = []
    # trusted.*/security.* only when root restores root's own archive (attrs.py).
    trusted = owner is None and os.geteuid() == 0
    held = 0  # xattr bytes of dirs kept until the end (bounded: attrs.MAX_HELD_DIR_XATTRS)
    dirs = _Dirs(tmp_fd)
    # The member rules verify and show apply too: no absolute names or "..", no devices,
    # no path or hard-link target through a symlink the archive made, no link escaping
    # through earlier links.
    rules = MemberRules()
    umask = _umask()
    try:
        with open_tar(archive, afd) as (tf, reader):
            for m in iter_members(tf):
                why = rules.unsafe(m)
                if why:
                    raise UnsafeArchive(archive, f"refused: {why}")
                xattrs = _xattrs(archive, m, trusted, keep_special)
                rel = member_path(m.name)
                if isinstance(strip, str):
                    # A spanning pack's frame (pack/entrypath.py): every member lies at or
                    # below the session's path *strip*, which becomes the temp dir.
                    first, rest = _below(archive, rel, strip)
                    top = strip
                    if not rest:
                        if not m.isdir():
                            raise UnsafeArchive(archive, f"refused: {m.name!r} is not a dir")
                        root_attrs = (m.mode, _mtime_ns(m), xattrs)
                        continue
                    rel = rest
                elif strip:
                    first, _, rest = rel.partition("/")
                    if top is None:
                        top = first
                    if first != top or (not rest and not m.isdir()):
                        raise MultiTop
                    if not rest:
                        root_attrs = (m.mode, _mtime_ns(m), xattrs)
                        continue
                    rel = rest
                elif not rel:
                    continue
                count += 1
                total += m.size if m.isreg() else 0
                if total > max_bytes:
                    raise ArchiveTooLarge(archive, f"extracting would need more than "
                                                   f"{max_bytes} bytes; refused")
                if count > max_members:
                    raise ArchiveTooLarge(archive, f"more than {max_members} members; refused")
                parent, _, name = rel.rpartition("/")
                pfd = dirs.get(parent)
                mtime = _mtime_ns(m)
                if m.isdir():
                    if rel not in dirs.made:
                        os.mkdir(name, 0o700, dir_fd=pfd)
                        dirs.made.add(rel)
                    elif kinds.get(rel) == DIR:
                        raise FileExistsError(errno.EEXIST, "exists", m.name)
                    kinds[rel] = DIR
                    if xattrs:
                        held += sum(len(k) + len(v) for k, v in xattrs)
                        if held > attrs.MAX_HELD_DIR_XATTRS:
                            raise UnsafeArchive(archive, "refused: directories with more than "
                                                f"{attrs.MAX_HELD_DIR_XATTRS} bytes of "
                                                "extended attributes")
                    dir_attrs.append((rel, restore_mode(m.mode, umask, keep_special, True),
                                      mtime, xattrs))
                elif m.isreg():
                    _write_member(tf, m, name, pfd, mtime, owner,
                                  restore_mode(m.mode, umask, keep_special), xattrs, archive)
                    kinds[rel] = FILE
                elif m.issym():
                    os.symlink(m.linkname, name, dir_fd=pfd)
                    kinds[rel] = LINK
                    links[rel] = m.linkname
                    os.utime(name, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
                    if owner is not None:
                        os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
                elif m.islnk():
                    target = member_path(m.linkname)
                    if isinstance(strip, str):
                        first, target = _below(archive, target, strip)
                        if not target:
                            raise UnsafeArchive(archive, f"refused: hard link {m.name!r} leaves the archive")
                    elif strip:
                        first, _, target = target.partition("/")
                        if first != top or not target:
                            raise UnsafeArchive(archive, f"refused: hard link {m.name!r} leaves the archive")
                    if kinds.get(target) != FILE:
                        raise UnsafeArchive(archive, f"refused: hard link {m.name!r} to {m.linkname!r}")
                    tparent, _, tname = target.rpartition("/")
                    os.link(tname, name, src_dir_fd=dirs.get(tparent), dst_dir_fd=dirs.get(parent),
                            follow_symlinks=False)
                    kinds[rel] = FILE
                else:
                    raise UnsafeArchive(archive, f"refused: unsupported member type {m.name!r}")
            # tarfile stops at the end-of-archive blocks, before the gzip CRC32 / zstd
            # XXH64 / xz check: without reading on, a damaged .tar.gz restored silently
            # altered bytes (tests/test_reliability_hostile_archives.py).
            drain(reader)
        bad = escaping_link(kinds, links)
        if bad is not None:
            raise UnsafeArchive(archive, f"refused: symlink {bad[0]!r} resolves outside the restore")
        # Children first: setting mtime is final. Default ACLs only now, after every
        # child exists: set earlier they would be inherited by children the archive
        # gives their own ACLs (or none).
        for rel, mode, mtime, xattrs in reversed(dir_attrs):
            _set_attrs(archive, rel, dirs.get(rel), owner, mode, mtime,
                       xattrs)
    except (ArchiveError, MultiTop):
        raise
    except FileExistsError as e:
        raise UnsafeArchive(archive, f"refused: duplicate member {e.filename!r}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise commit.disk_error(archive, e, "cannot restore") from None
        if isinstance(e, tarfile.TarError) or "unexpected end" in str(e):
            raise CorruptArchive(archive, f"corrupt archive: {e}") from None
        raise ArchiveError(archive, f"cannot restore: {e.strerror or e}") from None
    except Exception as e:
        raise CorruptArchive(archive, f"corrupt archive: {e}") from None
    finally:
        dirs.close()
    if root_attrs is not None:
        _set_attrs(archive, top or "", tmp_fd, owner,
                   restore_mode(root_attrs[0], umask, keep_special, True), root_attrs[1],
                   root_attrs[2])
    elif owner is not None:
        os.fchown(tmp_fd, *owner)
    return total


def _mtime_ns(m: tarfile.TarInfo) -> int:
    return attrs.parse_mtime(m.pax_headers.get("mtime"), m.mtime)


def _xattrs(archive: str, m: tarfile.TarInfo, trusted: bool, keep_special: bool
            ) -> list[tuple[str, bytes]]:
    if not m.pax_headers or not (m.isreg() or m.isdir()):
        return []
    try:
        return attrs.to_restore(m.pax_headers, trusted=trusted, keep_special=keep_special)
    except ValueError as e:
        raise UnsafeArchive(archive, f"refused: {m.name!r}: {e}") from None


def _set_attrs(archive: str, rel: str, fd: int, owner: tuple[int, int] | None, mode: int,
               mtime_ns: int, xattrs: list[tuple[str, bytes]]) -> None:
    """Owner, then attributes, then mode, then mtime, on the open entry *fd*. In this
    order because chown clears file capabilities and setuid/setgid on files, and chmod
    after an access ACL sets its mask from the restored (umask-reduced) group bits, as
    chmod always does on a file with an ACL."""
    if owner is not None:
        os.fchown(fd, *owner)
    if xattrs:
        try:
            attrs.apply_fd(fd, xattrs)
        except OSError as e:
            # Restoring without them would be the silent loss this restore exists to
            # avoid; the temp dir is removed and the archive kept.
            raise ArchiveError(archive, f"cannot restore extended attributes of {rel!r}: "
                                        f"{e.strerror or e}") from None
    os.fchmod(fd, mode)
    os.utime(fd, ns=(mtime_ns, mtime_ns))


def _write_member(tf: tarfile.TarFile, m: tarfile.TarInfo, name: str, pfd: int, mtime: int,
                  owner: tuple[int, int] | None, mode: int,
                  xattrs: list[tuple[str, bytes]] | None = None, archive: str = "") -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=pfd)
    try:
        src = tf.extractfile(m)
        hole = False
        while chunk := src.read(CHUNK):
            interrupt.check()  # SIGTERM inside a long member (the temp dir is removed)
            # A run of zeros as big as a read becomes a hole: a 10 GiB sparse file (stored
            # as 10 GiB of zeros, which compress to nothing) must not restore as 10 GiB of
            # real disk.
            if len(chunk) == CHUNK and chunk == _ZEROS:
                os.lseek(fd, CHUNK, os.SEEK_CUR)
                hole = True
                continue
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        if hole:
            os.ftruncate(fd, m.size)  # a hole at the end: the size still says so
        _set_attrs(archive or m.name, member_path(m.name), fd, owner, mode, mtime, xattrs or [])
    finally:
        os.close(fd)


_ZEROS = bytes(CHUNK)


def copy_member(path: str | os.PathLike[str], member: str, out: IO[bytes],
                fd: int | None = None) -> int:
    """Write the bytes of one file member to *out*. *member* may be the full name or the
    name below the top-level directory (``CONFIGS/CONFIG.yaml``). Returns bytes written.
    *fd*: an archive opened by the caller, as for list_members."""
    path = os.fspath(path)
    want = member.strip("/")
    seen = MemberRules()
    with open_tar(path, fd) as (tf, _reader):
        try:
            for m in iter_members(tf):
                why = seen.unsafe(m)
                if why:
                    raise UnsafeArchive(path, f"refused on restore: {why}")
                name = member_path(m.name)
                below = name.split("/", 1)[1] if "/" in name else None
                parts = name.split("/")
                # A spanning pack's session (a/b/<ID>-main/...): below its session dir.
                k = next((k for k, p in enumerate(parts[:-1]) if is_session_name(p)), 0)
                if k:
                    below = "/".join(parts[k + 1:])
                if want not in (name, below):
                    continue
                if not m.isfile():
                    raise ArchiveError(path, f"member {member!r} is not a regular file")
                src = tf.extractfile(m)
                n = 0
                while True:
                    b = src.read(CHUNK)
                    if not b:
                        return n
                    out.write(b)
                    n += len(b)
        except ArchiveError:
            raise
        except Exception as e:
            raise CorruptArchive(path, f"corrupt archive: {e}") from None
    raise ArchiveError(path, f"no member {member!r} in archive")
