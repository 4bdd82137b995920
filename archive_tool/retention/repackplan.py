"""What ``repack`` will do (repack.py runs it): per FINISHED_* dir, which packs form a
group, which frames each group keeps and why the others go.

Groups are decided one after another (oldest pack first) against the packs that stay:

- a frame is dropped when its session dir exists again beside the pack and re-tarring
  the dir gives exactly the frame's bytes (restored with ``unpack --session``); when the
  caller's *drop* names it (``--drop``, ``prune``); or when an identical frame (same
  name, same compressed bytes) is in another pack that stays, or earlier in the group;
- without *merge* each pack with something to drop is a group of one; with *merge*
  (``weekly`` | ``monthly`` | ``all``) the packs whose first session falls in one period
  form a group; a pack of the group that already holds exactly the kept frames (a crash
  left the merged pack beside its sources) is reused, not rewritten.

Every decision leaves each session that is not dropped on purpose in a pack that stays
or in its identical dir, so executing any prefix of the groups loses nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from archive_tool import fs
from archive_tool.engine.scan import scan_fd
from archive_tool.engine.tarwrite import write_tar
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.guard.lock import lock_session
from archive_tool.names import RUNNING_STATE, is_session_name
from archive_tool.pack import entrypath, packfile, seekable
from archive_tool.pack.packsalvage import SalvagedPack, open_pack
from archive_tool.summary import record_failure
from archive_tool.sweep.packplan import DEFAULT_PACK_BYTES, DEFAULT_PACK_SESSIONS, period_of

MERGE_MODES = ("auto", "weekly", "monthly", "all")
DropFn = Callable[[str, str], "str | None"]  # (dir relative to root, session name) -> why


@dataclass
class Frame:
    pack: str  # file name in the dir
    index: int
    name: str
    offset: int
    csize: int
    dsize: int
    key: tuple[str, bytes] = ("", b"")  # identity: name + digest of the compressed bytes


@dataclass
class Group:
    dir: str  # relative to the root
    packs: list[str]  # the packs this group replaces (reuse excepted)
    keep: list[Frame]
    drops: list[tuple[Frame, str]]
    base: str  # the new pack's name before its number
    reuse: str | None = None  # a pack of the group already holding exactly `keep`
    holders: set[str] = field(default_factory=set)  # packs outside it that hold drops
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)  # pack -> (dev, ino)
    new: str | None = None


class PackFds:
    """The packs of one dir, opened on demand below its fd (O_NOFOLLOW), each checked to
    be the file planned (dev, inode), at most *limit* open at once: a dir of daily packs
    over years holds more packs than a process may have fds."""

    def __init__(self, dfd: int, where: str, ids: dict[str, tuple[int, ...]],
                 limit: int = 64) -> None:
        self.dfd, self.where, self.ids, self.limit = dfd, where, ids, limit
        self.fds: OrderedDict[str, int] = OrderedDict()

    def get(self, pack: str) -> int:
        fd = self.fds.get(pack)
        if fd is not None:
            self.fds.move_to_end(pack)
            return fd
        fd = fs.open_file(pack, self.dfd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != tuple(self.ids[pack][:2]):
            os.close(fd)
            raise ArchiveError(os.path.join(self.where, pack), "replaced since it was read")
        self.fds[pack] = fd
        while len(self.fds) > self.limit:
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])


def parse_merge(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v not in MERGE_MODES:
        raise BadArgument(f"--merge wants auto, weekly, monthly or all, got {value!r}")
    return v


def _merge_period(name: str, merge: str) -> str:
    if merge == "all":
        return "all"
    p = period_of(name, "weekly" if merge == "weekly" else "daily")
    return p if merge == "weekly" or p == "undated" else p[:7]


def base_name(pack: str) -> str:
    """A pack's name without its suffix and any ``.N`` (the period it packs)."""
    stem = pack[:-len(packfile.PACK_SUFFIX)]
    head, dot, n = stem.rpartition(".")
    return head if dot and n.isdigit() else stem


def pack_listings(root: str, on_damaged: Callable[[str, str, Any], None] | None = None
                  ) -> list[tuple[str, str, float, list[tuple[str, int]]]]:
    """(rel dir, pack name, pack mtime, [(session, compressed frame size)]) of every pack
    of every FINISHED_* dir below *root* that reads: seek table and index only, by fds
    from the root. A pack that does not read is left out (``verify``/``repack`` say why),
    unless *on_damaged* is given: then its readable sessions are listed (the salvage
    scan, packsalvage.py) and *on_damaged(rel, pack, Salvage)* is told."""
    out = []
    for rel, dfd, e in iter_packs(root):
        try:
            path = os.path.join(root, rel, e.name)
            if on_damaged is not None:
                with open_pack(path, fs.open_file(e.name, dfd)) as sp:
                    if isinstance(sp, SalvagedPack):
                        on_damaged(rel, e.name, sp.salvage)
                        out.append((rel, e.name, os.fstat(sp.fd).st_mtime,
                                    list(zip(sp.names, sp.csize, strict=True))))
                        continue
            with packfile.Pack(path, fs.open_file(e.name, dfd)) as p:
                out.append((rel, e.name, os.fstat(p.fd).st_mtime,
                            [(n, p.frames.csize[k]) for k, n in enumerate(p.names)]))
        except (ArchiveError, OSError):
            continue
    return out


def iter_packs(root: str) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    """(rel dir, its fd, entry) of every pack file (a regular file: no symlink) in the
    FINISHED_* dirs below *root*, reached by dir fds from the root; the dir fd is valid
    until the next item."""
    root_fd = fs.open_trusted_dir(root)
    try:
        for rel in pack_dirs(root, root_fd):
            try:
                dfd = fs.open_beneath(root_fd, rel)
            except OSError:
                continue
            try:
                for e in fs.scandir_sorted(dfd):
                    if packfile.is_pack_entry(e):
                        yield rel, dfd, e
            finally:
                os.close(dfd)
    finally:
        os.close(root_fd)


def pack_dirs(root: str, root_fd: int) -> list[str]:
    """Dirs (relative to *root*) holding packs, walked by fds: no symlink is followed,
    session dirs, RUNNING/ and hidden dirs are not entered. Any dir: a ``--pack auto``
    pack sits in its sessions' deepest common dir (FINISHED_* for the other modes)."""
    out: list[str] = []
    stack = [("", os.dup(root_fd))]
    try:
        while stack:
            rel, fd = stack.pop()
            try:
                items = fs.scandir_sorted(fd)
                if any(packfile.is_pack_entry(e) for e in items):
                    out.append(rel)
                for e in reversed(items):
                    if (e.name.startswith(".") or e.name == RUNNING_STATE
                            or is_session_name(e.name) or not e.is_dir(follow_symlinks=False)):
                        continue
                    try:
                        sub = fs.open_dir(e.name, fd, expect=e.stat(follow_symlinks=False))
                    except OSError:
                        continue  # vanished or swapped: nothing of ours to repack there
                    stack.append((f"{rel}/{e.name}" if rel else e.name, sub))
            finally:
                os.close(fd)
    finally:
        for _, fd in stack:
            os.close(fd)
    return sorted(out)


def _same_as_dir(dfd: int, where: str, f: Frame, packs: PackFds) -> bool:
    """The session dir *f.name* beside the pack (or at its path below the pack's dir, a
    spanning pack's entry: walked without following a symlink) holds exactly the frame's
    tar bytes."""
    rel, name = entrypath.split(f.name)
    try:
        sub = entrypath.open_entry_dir(dfd, rel)
    except OSError:
        return False
    try:
        return _same_at(sub, name, where, f, packs)
    finally:
        os.close(sub)


def _same_at(dfd: int, name: str, where: str, f: Frame, packs: PackFds) -> bool:
    if not fs.lexists_at(dfd, name):
        return False
    path = os.path.join(where, f.name)
    try:
        lock_fd = lock_session(dfd, name, path, archived_ok=True)
    except (FileExistsError, ArchiveError, OSError):
        return False
    try:
        parts: list[bytes] = []
        try:
            write_tar(lock_fd, path, f.name, scan_fd(lock_fd, path), parts.append)
        except (ArchiveError, OSError):
            return False  # the dir is not readable as a session: it stays in the pack
        tar = b"".join(parts)[:-len(packfile.END_BLOCKS)]
        # A frame that does not read is the pack's fault: CorruptArchive to the caller.
        return tar == seekable.read_frame(
            packs.get(f.pack), seekable.Frame(f.offset, f.csize, f.dsize, None),
            os.path.join(where, f.pack))
    finally:
        os.close(lock_fd)


def plan_dir(root: str, rel: str, dfd: int, s: dict[str, Any], *, merge: str | None = None,
             drop: DropFn | None = None, only_dropped: bool = False) -> list[Group]:
    """The groups of one dir, decided one after another against what stays (see the
    module doc). *only_dropped*: only packs holding a session *drop* names (prune)."""
    where = os.path.join(root, rel)
    frames: dict[str, list[Frame]] = {}
    ids: dict[str, tuple[int, int, int]] = {}
    fds = PackFds(dfd, where, ids)
    try:
        for e in fs.scandir_sorted(dfd):
            if not packfile.is_pack_entry(e):
                continue
            path = os.path.join(where, e.name)
            try:
                fd = fs.open_file(e.name, dfd)
                p = packfile.Pack(path, fd)
            except (ArchiveError, OSError) as ex:
                record_failure(s, path, f"not repacked, left as it is: {reason_of(ex)}")
                continue
            with p:
                bad = next((n for n in p.names if not entrypath.is_entry(n)), None)
                st = os.fstat(p.fd)
            if bad is not None:
                record_failure(s, path, f"not repacked, left as it is: index names {bad!r}, "
                                        "not a session dir name")
                continue
            ids[e.name] = (st.st_dev, st.st_ino, st.st_mtime_ns)
            t = p.frames
            frames[e.name] = [Frame(e.name, i, n, t.offset[i], t.csize[i], t.dsize[i])
                              for i, n in enumerate(p.names)]
            s["scanned"] += len(p.names)
            s["packs_read"] += 1
        names = Counter(f.name for fr in frames.values() for f in fr)
        for pack, fr in list(frames.items()):
            try:
                for f in fr:
                    digest = b""
                    if names[f.name] > 1:  # only a name held twice needs its bytes compared
                        digest = hashlib.blake2b(os.pread(fds.get(pack), f.csize, f.offset),
                                                 digest_size=16).digest()
                    f.key = (f.name, digest)
            except (ArchiveError, OSError) as ex:
                record_failure(s, os.path.join(where, pack),
                               f"not repacked, left as it is: {reason_of(ex)}")
                del frames[pack]
        order = sorted(frames, key=lambda p: (ids[p][2], p))
        if merge == "auto":
            todo = _auto_groups(order, frames)
        elif merge:
            by: dict[str, list[str]] = {}
            for p in order:
                first = frames[p][0].name if frames[p] else "undated"
                by.setdefault(_merge_period(first, merge), []).append(p)
            todo = list(by.values())
        else:
            todo = [[p] for p in order]
        alive = {p: {f.key for f in fr} for p, fr in frames.items()}
        groups = []
        for n, gp in enumerate(todo):
            if only_dropped and not any(drop and drop(rel, f.name) for p in gp
                                        for f in frames[p]):
                continue
            try:
                g = _plan_group(rel, where, dfd, gp, frames, fds, alive, drop, merge)
            except ArchiveError as e:
                record_failure(s, e.path, f"not repacked, left as it is: {reason_of(e)}")
                continue
            if g is None:
                continue
            g.ids = {p: ids[p][:2] for p in [*gp, *g.holders]}
            for p in gp:
                alive.pop(p)
            if g.reuse is not None:
                alive[g.reuse] = {f.key for f in g.keep}
            elif g.keep:
                alive[f"\0new{n}"] = {f.key for f in g.keep}  # not a file name: never a holder
            groups.append(g)
        return groups
    finally:
        fds.close()


def _auto_groups(order: list[str], frames: dict[str, list[Frame]]) -> list[list[str]]:
    """``--merge auto``: consecutive packs (oldest first) gathered until a group reaches
    --pack auto's targets (packplan), so nightly auto sweeps' small packs of one dir
    become packs of useful size; a pack at a target already stays alone (untouched)."""
    todo: list[list[str]] = []
    n = size = 0
    for p in order:
        if not todo or n >= DEFAULT_PACK_SESSIONS or size >= DEFAULT_PACK_BYTES or (
                n + len(frames[p]) > DEFAULT_PACK_SESSIONS):
            todo.append([])
            n = size = 0
        todo[-1].append(p)
        n += len(frames[p])
        size += sum(f.csize for f in frames[p])
    return todo


def _plan_group(rel: str, where: str, dfd: int, gp: list[str], frames: dict[str, list[Frame]],
                fds: PackFds, alive: dict[str, set[tuple[str, bytes]]],
                drop: DropFn | None, merge: str | None) -> Group | None:
    keep: list[Frame] = []
    drops: list[tuple[Frame, str]] = []
    seen: set[tuple[str, bytes]] = set()
    holders: set[str] = set()
    for p in gp:
        for f in frames[p]:
            why = drop(rel, f.name) if drop else None
            if why is None and f.key in seen:
                why = "a copy of it is kept"
            if why is None and f.key[1]:  # a name held by more than one frame of the dir
                q = next((q for q, ks in alive.items() if q not in gp and f.key in ks), None)
                if q is not None and not q.startswith("\0"):  # (a new pack never is: the
                    why = f"the same frame is in {q}"  # first copy kept had no other holder)
                    holders.add(q)
            if why is None and _same_as_dir(dfd, where, f, fds):
                why = "restored: its session dir holds the same bytes"
            if why is None:
                keep.append(f)
                seen.add(f.key)
            else:
                drops.append((f, why))
    if len(gp) == 1 and not drops:
        return None
    if merge:
        keep.sort(key=lambda f: f.name)
    want = {f.key for f in keep}
    reuse = next((p for p in gp if len(frames[p]) == len(keep)
                  and {f.key for f in frames[p]} == want), None)
    if reuse is not None:  # a crash left the merged pack beside its sources: keep that one
        drops = [(f, w) for f, w in drops if f.pack != reuse] + [
            (f, f"the same frame is in {reuse}") for f in keep if f.pack != reuse]
        keep = frames[reuse]
    if (merge == "all" or (merge == "auto" and len(gp) > 1)) and keep:
        # (Sorted by name, a spanning pack's frames are in path order, not date order.)
        days = sorted(period_of(f.name, "daily") for f in keep)
        base = f"{days[0]}_{days[-1]}"
    elif merge and len(gp) > 1:
        base = _merge_period(keep[0].name if keep else gp[0], merge)
    else:
        base = base_name(gp[0])
    return Group(rel, [p for p in gp if p != reuse], keep, drops, base, reuse, holders)


def reason_of(e: BaseException) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
