"""``session-archive repack ROOT``: rewrite packs without the sessions they no longer need
to hold, and merge small packs (issue 14). Packs are never rewritten in place.

Per FINISHED_* dir below the root, packs are planned one group at a time (oldest first):

- a session is *dropped* from its pack when its session dir exists again beside the pack
  and holds exactly the frame's bytes (restored with ``unpack --session``: checked by
  re-tarring the dir, as a pack sweep's resume does), when the caller drops it (``--drop``,
  ``prune``), or when an identical frame (same name, same compressed bytes) is held by
  another pack that stays (a crash between two steps below leaves such copies);
- without *merge* each pack with something to drop is a group of one; with *merge*
  (``weekly`` | ``monthly`` | ``all``) the packs whose first session falls in one period
  form a group, merged into one pack.

A group is executed in the order that keeps every kept session in an old pack or in the
new one, both complete, at every instant:

  1. the kept frames are copied, still compressed (no recompression), into an unnamed
     O_TMPFILE in the dir (commit.open_tmp), then the index and seek table;
  2. the tmp is read back (seek table, compressed digests, index) and verified as
     ``verify PACK`` does (packfile.verify_pack: the whole tar stream, every frame's
     XXH64, member rules); its catalog rows are made from the bytes verify decompressed;
  3. fsync, link to a name no file has (``<base>.N.pack.tar.zst``, EEXIST -> next N),
     fsync of the dir;
  4. restored dirs made durable (syncfs) before any pack that held them goes;
  5. the catalog: rows of the old packs out, rows of the new one in, one transaction;
  6. each old pack, re-checked to be the file planned (dev, inode), unlinked relative to
     the dir fd; one fsync of the dir.

A crash leaves old and new packs side by side (each complete); the next run finds the old
pack's frames in the new one and only removes it (step 5 and 6). A pack that cannot be
read (a bad seek table, a hostile index) is reported and left alone, never deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from archive_tool import fs
from archive_tool.bulk import catalog
from archive_tool.bulk.packplan import period_of
from archive_tool.bulk.plan import check_root
from archive_tool.engine import commit, packfile, seekable
from archive_tool.engine.scan import scan_fd
from archive_tool.engine.tarwrite import write_tar
from archive_tool.errors import ArchiveError, BadArgument, VerifyFailed
from archive_tool.lock import RootLock, lock_session
from archive_tool.names import FINISHED_STATES, RUNNING_STATE, is_session_name
from archive_tool.summary import new_summary, record_failure

MERGE_MODES = ("weekly", "monthly", "all")
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


def parse_merge(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v not in MERGE_MODES:
        raise BadArgument(f"--merge wants weekly, monthly or all, got {value!r}")
    return v


def _merge_period(name: str, merge: str) -> str:
    if merge == "all":
        return "all"
    p = period_of(name, "weekly" if merge == "weekly" else "daily")
    return p if merge == "weekly" or p == "undated" else p[:7]


def _base(pack: str) -> str:
    stem = pack[:-len(packfile.PACK_SUFFIX)]
    head, dot, n = stem.rpartition(".")
    return head if dot and n.isdigit() else stem


def pack_dirs(root: str, root_fd: int) -> list[str]:
    """FINISHED_* dirs (relative to *root*) holding packs, walked by fds: no symlink is
    followed, session dirs, RUNNING/ and hidden dirs are not entered."""
    out: list[str] = []
    stack = [("", os.dup(root_fd))]
    try:
        while stack:
            rel, fd = stack.pop()
            try:
                items = fs.scandir_sorted(fd)
                if os.path.basename(rel or root) in FINISHED_STATES and any(
                        packfile.is_pack_name(e.name) and e.is_file(follow_symlinks=False)
                        for e in items):
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


def _same_as_dir(dfd: int, where: str, f: Frame, pack_fd: int) -> bool:
    """The session dir *f.name* beside the pack holds exactly the frame's tar bytes."""
    if not fs.lexists_at(dfd, f.name):
        return False
    path = os.path.join(where, f.name)
    try:
        lock_fd = lock_session(dfd, f.name, path, archived_ok=True)
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
            pack_fd, seekable.Frame(f.offset, f.csize, f.dsize, None),
            os.path.join(where, f.pack))
    finally:
        os.close(lock_fd)


def plan_dir(root: str, rel: str, dfd: int, s: dict[str, Any], *, merge: str | None = None,
             drop: DropFn | None = None, only_dropped: bool = False) -> list[Group]:
    """The groups of one dir, decided one after another against what stays (see the
    module doc). *only_dropped*: only packs holding a session *drop* names (prune)."""
    where = os.path.join(root, rel)
    frames: dict[str, list[Frame]] = {}
    fds: dict[str, int] = {}
    ids: dict[str, tuple[int, int, int]] = {}
    try:
        for e in fs.scandir_sorted(dfd):
            if not packfile.is_pack_name(e.name) or not e.is_file(follow_symlinks=False):
                continue
            path = os.path.join(where, e.name)
            try:
                fd = fs.open_file(e.name, dfd)
                p = packfile.Pack(path, fd)
            except (ArchiveError, OSError) as ex:
                record_failure(s, path, f"not repacked, left as it is: {_why(ex)}")
                continue
            bad = next((n for n in p.names if not is_session_name(n)), None)
            if bad is not None:
                p.close()
                record_failure(s, path, f"not repacked, left as it is: index names {bad!r}, "
                                        "not a session dir name")
                continue
            fds[e.name] = p.fd
            st = os.fstat(p.fd)
            ids[e.name] = (st.st_dev, st.st_ino, st.st_mtime_ns)
            t = p.frames
            frames[e.name] = [Frame(e.name, i, n, t.offset[i], t.csize[i], t.dsize[i])
                              for i, n in enumerate(p.names)]
            s["scanned"] += len(p.names)
            s["packs_read"] += 1
        names = Counter(f.name for fr in frames.values() for f in fr)
        for pack, fr in frames.items():
            for f in fr:
                digest = b""
                if names[f.name] > 1:  # only a name held twice needs its bytes compared
                    digest = hashlib.blake2b(os.pread(fds[pack], f.csize, f.offset),
                                             digest_size=16).digest()
                f.key = (f.name, digest)
        order = sorted(frames, key=lambda p: (ids[p][2], p))
        if merge:
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
                record_failure(s, e.path, f"not repacked, left as it is: {_why(e)}")
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
        for fd in fds.values():
            os.close(fd)


def _plan_group(rel: str, where: str, dfd: int, gp: list[str], frames: dict[str, list[Frame]],
                fds: dict[str, int], alive: dict[str, set[tuple[str, bytes]]],
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
            if why is None and _same_as_dir(dfd, where, f, fds[p]):
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
    if merge == "all" and keep:
        base = f"{period_of(keep[0].name, 'daily')}_{period_of(keep[-1].name, 'daily')}"
    elif merge and len(gp) > 1:
        base = _merge_period(keep[0].name if keep else gp[0], merge)
    else:
        base = _base(gp[0])
    return Group(rel, [p for p in gp if p != reuse], keep, drops, base, reuse, holders)


def _why(e: BaseException) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


# ------------------------------------------------------------------------------ execute


def _open_planned(dfd: int, where: str, g: Group) -> dict[str, int]:
    """fds of the group's packs and holders, each the very file that was planned."""
    fds: dict[str, int] = {}
    try:
        for p, (dev, ino) in g.ids.items():
            fd = fs.open_file(p, dfd)
            fds[p] = fd
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (dev, ino):
                raise ArchiveError(os.path.join(where, p), "replaced since it was planned")
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _rows_of(where: str, rel: str, pack: str, fd: int) -> list[dict[str, Any]]:
    """Catalog rows of a pack that stays (a reused pack, a holder of dropped copies): a
    crash may have come before the catalog step that would have listed it."""
    with packfile.Pack(os.path.join(where, pack), os.dup(fd)) as p:
        arel = os.path.join(rel, pack)
        return [catalog.session_row(p.members(i), n, rel, arel, i, p.frames.offset[i],
                                    p.frames.csize[i]) for i, n in enumerate(p.names)]


def _write(dfd: int, where: str, g: Group, fds: dict[str, int]) -> list[dict[str, Any]]:
    """Steps 1-3: the new pack, verified, durable, linked; returns its catalog rows."""
    n = 1
    while fs.lexists_at(dfd, packfile.pack_file_name(g.base, n)):
        n += 1
    first = os.fstat(fds[g.packs[0]])
    owner = (first.st_uid, first.st_gid) if os.geteuid() == 0 else None
    tmp = commit.open_tmp(dfd, os.path.join(where, packfile.pack_file_name(g.base, n)), None,
                          owner)
    rows: list[dict[str, Any]] = []
    try:
        w = packfile.PackWriter(tmp)
        for f in g.keep:
            data = os.pread(fds[f.pack], f.csize, f.offset)
            try:
                w.add_frame(f.name, data, f.dsize)
            except ValueError as e:  # a seek table listing an impossible frame size
                raise VerifyFailed(tmp.final, f"the new pack does not verify: {f.pack} "
                                              f"frame {f.index}: {e}") from None
            fs.race_point("repack-frame", tmp.final)
        w.finish()
        os.fchmod(tmp.fd, stat.S_IMODE(first.st_mode))
        w.verify()

        def row(i: int, name: str, members: bytes) -> None:
            fi = w.frames[i]
            rows.append(catalog.session_row(members, name, g.dir, "", i, fi.offset, fi.csize))

        try:
            packfile.verify_pack(tmp.final, tmp.fd, on_frame=row)
        except ArchiveError as e:
            raise VerifyFailed(tmp.final, f"the new pack does not verify: {_why(e)}") from None
        commit.make_durable([tmp])
        fs.race_point("repack-publish", tmp.final)
        while True:
            try:
                commit.publish(tmp)
                break
            except FileExistsError:  # another process took the name: the next one
                n += 1
                tmp.name = packfile.pack_file_name(g.base, n)
                tmp.final = os.path.join(where, tmp.name)
        commit.fsync_dir(tmp.dir_fd, where)
    finally:
        tmp.close()
    g.new = tmp.name
    fs.race_point("repack-published", tmp.final)
    for r in rows:
        r["archive"] = os.path.join(g.dir, tmp.name)
    return rows


def run_group(root: str, dfd: int, g: Group) -> None:
    """Execute one planned group (module doc, steps 1-6). Raises ArchiveError/OSError
    with nothing of the old packs deleted, unless the failure is in the final unlinks."""
    where = os.path.join(root, g.dir)
    fds = _open_planned(dfd, where, g)
    try:
        rows = []
        if g.reuse is not None:
            rows = _rows_of(where, g.dir, g.reuse, fds[g.reuse])
        elif g.keep:
            rows = _write(dfd, where, g, fds)
        for h in sorted(g.holders):
            rows += _rows_of(where, g.dir, h, fds[h])
        if any(w.startswith("restored") for _, w in g.drops) and not fs.syncfs(dfd):
            os.sync()  # the restored dirs are the only copy once the old pack goes
        catalog.replace_archives(root, [os.path.join(g.dir, p) for p in g.packs], rows)
        fs.race_point("repack-catalog", where)
        for p in g.packs:
            st = fs.lstat_at(dfd, p)
            if (st.st_dev, st.st_ino) != g.ids[p]:
                raise ArchiveError(os.path.join(where, p), "replaced since it was planned; kept")
            os.unlink(p, dir_fd=dfd)
            fs.race_point("repack-unlink", os.path.join(where, p))
        commit.fsync_dir(dfd, where)
    finally:
        for fd in fds.values():
            os.close(fd)


def group_dict(root: str, g: Group) -> dict[str, Any]:
    where = os.path.join(root, g.dir)
    return {"dir": where, "packs": [os.path.join(where, p) for p in g.packs],
            "new": os.path.join(where, g.new) if g.new else None, "reuse": g.reuse,
            "kept": len(g.keep), "bytes_kept": sum(f.csize for f in g.keep),
            "dropped": [{"session": f.name, "pack": f.pack, "reason": w} for f, w in g.drops]}


def repack(
    root: str | os.PathLike[str],
    *,
    merge: str | None = None,
    drop: Iterable[str] = (),
    dry_run: bool = True,
    drop_fn: DropFn | None = None,
    only_dropped: bool = False,
    lock: bool = True,
    on_group: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Repack the packs under *root* (module doc). *drop*: session names or IDs to drop
    from their packs (their frames are deleted). Returns a Summary (kind "repack") with
    ``groups`` (each: dir, packs, new, kept, dropped), ``packs_written``,
    ``packs_removed``, ``dropped``, ``bytes_before``/``bytes_after`` (compressed frames)."""
    t0 = time.monotonic()
    root_p = check_root(root)
    merge = parse_merge(merge)
    wanted = {d.strip() for d in drop if d.strip()}
    if drop_fn is None and wanted:
        def drop_fn(_rel: str, name: str) -> str | None:
            hit = name in wanted or any(name.startswith(w + "-") for w in wanted)
            return "dropped (--drop)" if hit else None
    s = new_summary("repack", root_p, dry_run, merge=merge, packs_read=0, packs_written=0,
                    packs_removed=0, dropped=0, kept=0, bytes_before=0, bytes_after=0,
                    groups=[])
    with RootLock(root_p) if lock and not dry_run else contextlib.nullcontext():
        root_fd = fs.open_trusted_dir(root_p)
        try:
            for rel in pack_dirs(root_p, root_fd):
                try:
                    dfd = fs.open_beneath(root_fd, rel)
                except OSError as e:
                    record_failure(s, os.path.join(root_p, rel), f"cannot open: {e.strerror}")
                    continue
                try:
                    _do_dir(root_p, rel, dfd, s, merge, drop_fn, only_dropped, dry_run, on_group)
                finally:
                    os.close(dfd)
        finally:
            os.close(root_fd)
    dropped = {d["session"] for g in s["groups"] for d in g["dropped"]}
    for w in sorted(wanted):
        if not any(n == w or n.startswith(w + "-") for n in dropped):
            s["warnings"].append(f"--drop {w}: no such session in a pack under {root_p}")
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


def _do_dir(root: str, rel: str, dfd: int, s: dict[str, Any], merge: str | None,
            drop_fn: DropFn | None, only_dropped: bool, dry_run: bool,
            on_group: Callable[[dict[str, Any]], None] | None) -> None:
    for g in plan_dir(root, rel, dfd, s, merge=merge, drop=drop_fn, only_dropped=only_dropped):
        s["candidates"] += len(g.keep) + len(g.drops)
        if not dry_run:
            try:
                run_group(root, dfd, g)
            except (ArchiveError, OSError) as e:
                where = os.path.join(root, rel, g.packs[0] if g.packs else "")
                record_failure(s, where, f"repack failed, old packs kept: {_why(e)}")
                continue
        s["packs_written"] += 1 if g.keep and g.reuse is None else 0
        s["packs_removed"] += len(g.packs)
        s["dropped"] += len(g.drops)
        s["kept"] += len(g.keep)
        s["bytes_before"] += sum(f.csize for f in g.keep) + sum(f.csize for f, _ in g.drops)
        s["bytes_after"] += sum(f.csize for f in g.keep)
        d = group_dict(root, g)
        s["groups"].append(d)
        if on_group is not None:
            on_group(d)

