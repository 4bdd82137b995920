"""``session-archive repack ROOT``: rewrite packs without the sessions they no longer need
to hold, and merge small packs (issue 14). Packs are never rewritten in place.

Per FINISHED_* dir below the root, repackplan.py decides the groups (which packs are
replaced, which frames are kept: restored-and-identical sessions, ``--drop``/``prune``
and copies kept elsewhere go; ``--merge`` groups packs by week, month or all).

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
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any

from archive_tool import fs
from archive_tool.catalog import catalog
from archive_tool.catalog.rows import entry_row
from archive_tool.engine import commit
from archive_tool.errors import ArchiveError, BadArgument, VerifyFailed
from archive_tool.guard import interrupt
from archive_tool.guard.lock import RootLock
from archive_tool.pack import packfile
from archive_tool.retention.repackplan import (
    DropFn,
    Group,
    PackFds,
    pack_dirs,
    parse_merge,
    plan_dir,
    reason_of,
)
from archive_tool.retention.salvage import plan_salvage
from archive_tool.summary import new_summary, record_failure
from archive_tool.sweep.plan import check_root


def _rows_of(where: str, rel: str, pack: str, fd: int) -> list[dict[str, Any]]:
    """Catalog rows of a pack that stays (a reused pack, a holder of dropped copies): a
    crash may have come before the catalog step that would have listed it."""
    with packfile.Pack(os.path.join(where, pack), os.dup(fd)) as p:
        arel = os.path.join(rel, pack)
        return [entry_row(p.members(i), n, rel, arel, i, p.frames.offset[i],
                          p.frames.csize[i]) for i, n in enumerate(p.names)]


def _write(dfd: int, where: str, g: Group, fds: PackFds) -> list[dict[str, Any]]:
    """Steps 1-3: the new pack, verified, durable, linked; returns its catalog rows."""
    n = 1
    while fs.lexists_at(dfd, packfile.pack_file_name(g.base, n)):
        n += 1
    # The strictest mode of the packs merged: a pack is 0640 when one of its sessions was
    # not world-readable, and merging must not make that session readable to others.
    mode = 0o7777
    for p in g.packs:
        mode &= stat.S_IMODE(os.fstat(fds.get(p)).st_mode)
    # As root, the dir's owner, as sweep --pack gives it (a pack holds one user's runs).
    dst = os.fstat(dfd)
    owner = (dst.st_uid, dst.st_gid) if os.geteuid() == 0 else None
    tmp = commit.open_tmp(dfd, os.path.join(where, packfile.pack_file_name(g.base, n)), None,
                          owner)
    rows: list[dict[str, Any]] = []
    try:
        w = packfile.PackWriter(tmp)
        for f in g.keep:
            interrupt.check()  # SIGTERM: the unnamed tmp pack goes, the old packs stay
            data = os.pread(fds.get(f.pack), f.csize, f.offset)
            try:
                w.add_frame(f.name, data, f.dsize)
            except ValueError as e:  # a seek table listing an impossible frame size
                raise VerifyFailed(tmp.final, f"the new pack does not verify: {f.pack} "
                                              f"frame {f.index}: {e}") from None
            fs.race_point("repack-frame", tmp.final)
        w.finish()
        os.fchmod(tmp.fd, mode)
        w.verify()

        def row(i: int, name: str, members: bytes) -> None:
            fi = w.frames[i]
            rows.append(entry_row(members, name, g.dir, "", i, fi.offset, fi.csize))

        try:
            packfile.verify_pack(tmp.final, tmp.fd, on_frame=row)
        except ArchiveError as e:
            raise VerifyFailed(tmp.final, f"the new pack does not verify: {reason_of(e)}") from None
        commit.make_durable([tmp])
        fs.race_point("repack-publish", tmp.final)
        packfile.publish_free_name(tmp, g.base, where)
        commit.fsync_dir(tmp.dir_fd, where)
    finally:
        tmp.close()
    g.new = tmp.name
    fs.race_point("repack-published", tmp.final)
    for r in rows:
        r["archive"] = os.path.join(g.dir, tmp.name)
    return rows


def run_group(root: str, dfd: int, g: Group, *, aside: bool = False) -> None:
    """Execute one planned group (module doc, steps 1-6). Raises ArchiveError/OSError
    with nothing of the old packs deleted, unless the failure is in the final unlinks.
    *aside* (repack --salvage, salvage.py): the old pack is renamed to
    ``.<name>.damaged``, not unlinked."""
    where = os.path.join(root, g.dir)
    fds = PackFds(dfd, where, g.ids)
    try:
        rows = []
        if g.reuse is not None:
            rows = _rows_of(where, g.dir, g.reuse, fds.get(g.reuse))
        elif g.keep:
            rows = _write(dfd, where, g, fds)
        # The new pack is linked: finish the group (catalog, old packs out) before a
        # signal is honoured, so no session is left in two packs (interrupt.py).
        with interrupt.shielded():
            for h in sorted(g.holders):
                rows += _rows_of(where, g.dir, h, fds.get(h))
            if any(w.startswith("restored") for _, w in g.drops) and not fs.syncfs(dfd):
                os.sync()  # the restored dirs are the only copy once the old pack goes
            try:
                catalog.replace_archives(root, [os.path.join(g.dir, p) for p in g.packs],
                                         rows)
            except sqlite3.Error as e:
                # Rolled back whole: the old rows stand, so the old packs must stay too
                # (the new one beside them is complete; the next repack only removes them).
                raise ArchiveError(where, f"catalog not updated: {e}") from None
            fs.race_point("repack-catalog", where)
            for p in g.packs:
                st = fs.lstat_at(dfd, p)
                if (st.st_dev, st.st_ino) != g.ids[p]:
                    raise ArchiveError(os.path.join(where, p),
                                       "replaced since it was planned; kept")
                if aside:
                    put_aside(dfd, where, p)
                else:
                    os.unlink(p, dir_fd=dfd)
                fs.race_point("repack-unlink", os.path.join(where, p))
            commit.fsync_dir(dfd, where)
    finally:
        fds.close()


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
    salvage: bool = False,
) -> dict[str, Any]:
    """Repack the packs under *root* (module doc). *drop*: session names or IDs to drop
    from their packs (their frames are deleted). Returns a Summary (kind "repack") with
    ``groups`` (each: dir, packs, new, kept, dropped), ``packs_written``,
    ``packs_removed``, ``dropped``, ``bytes_before``/``bytes_after`` (compressed frames).
    *salvage*: instead, replace each damaged pack by a clean pack of the sessions that
    still read (salvage.py); not with *merge* or *drop*."""
    t0 = time.monotonic()
    root_p = check_root(root)
    merge = parse_merge(merge)
    wanted = {d.strip() for d in drop if d.strip()}
    if salvage and (merge or wanted or drop_fn):
        raise BadArgument("--salvage rewrites damaged packs only: not with --merge or --drop")
    if drop_fn is None and wanted:
        def drop_fn(_rel: str, name: str) -> str | None:
            name = name.rpartition("/")[2]  # a spanning pack's entry path: its session
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
                    if salvage:
                        salvage_dir(root_p, rel, dfd, s, dry_run, on_group)
                    else:
                        _do_dir(root_p, rel, dfd, s, merge, drop_fn, only_dropped, dry_run,
                                on_group)
                finally:
                    os.close(dfd)
        finally:
            os.close(root_fd)
    dropped = {d["session"].rpartition("/")[2] for g in s["groups"] for d in g["dropped"]}
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
        interrupt.check()
        if not dry_run:
            try:
                run_group(root, dfd, g)
            except (ArchiveError, OSError) as e:
                where = os.path.join(root, rel, g.packs[0] if g.packs else "")
                record_failure(s, where, f"repack failed, old packs kept: {reason_of(e)}")
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


DAMAGED_SUFFIX = ".damaged"


def put_aside(dfd: int, where: str, pack: str) -> str:
    """Rename the damaged *pack* to ``.<pack>.damaged`` (``.2`` ... if taken); its name."""
    n = 1
    while True:
        aside = f".{pack}{DAMAGED_SUFFIX}" + (f".{n}" if n > 1 else "")
        try:
            fs.rename_noreplace_at(dfd, pack, dfd, aside)
            return aside
        except FileExistsError:
            n += 1


def salvage_dir(root: str, rel: str, dfd: int, s: dict[str, Any], dry_run: bool,
                on_group: Callable[[dict[str, Any]], None] | None) -> None:
    for g in plan_salvage(root, rel, dfd, s):
        s["candidates"] += len(g.keep) + len(g.drops)
        if not dry_run:
            try:
                run_group(root, dfd, g, aside=True)
            except (ArchiveError, OSError) as e:
                record_failure(s, os.path.join(root, rel, g.packs[0]),
                               f"salvage failed, damaged pack kept: {reason_of(e)}")
                continue
        s["packs_written"] += 1 if g.keep else 0
        s["packs_removed"] += 1
        s["dropped"] += len(g.drops)
        s["kept"] += len(g.keep)
        s["bytes_before"] += sum(f.csize for f in g.keep)
        s["bytes_after"] += sum(f.csize for f in g.keep)
        d = group_dict(root, g)
        s["groups"].append(d)
        if on_group is not None:
            on_group(d)
