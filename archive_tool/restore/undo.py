"""``extract ROOT --undo RUN``: the archives one ``sweep --execute`` wrote, from its manifest
(runlog.py), put back as session dirs on the pool as many.py restores a tree."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from archive_tool import fs
from archive_tool.errors import UntrustedInput
from archive_tool.guard import untrusted
from archive_tool.guard.lock import RootLock
from archive_tool.names import (
    split_archive_name,
)
from archive_tool.restore import packrestore
from archive_tool.restore.many import forget_removed, new_restore_summary, run_jobs
from archive_tool.summary import (
    Result,
    record_failure,
)
from archive_tool.sweep.plan import check_root
from archive_tool.sweep.runlog import open_run


def undo_run(
    root: str | os.PathLike[str],
    run: str,
    *,
    dry_run: bool = True,
    workers: int | None = None,
    on_jobs: Callable[[int], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> dict[str, Any]:
    """Undo one ``sweep --execute`` of *root*: restore exactly the archives its manifest
    lists (run name from ``.session-archive/runs/``, or ``last``) to the session dirs they
    came from, removing each archive once its restore is durable. Sessions a pack sweep
    put into packs come back from their frames (packrestore.py), the packs kept. A session
    dir that exists again is skipped (never overwritten); an archive or pack that is gone
    or unreadable is a failure (one per session)."""
    t0 = time.monotonic()
    root_p = check_root(root)
    s = new_restore_summary(root_p, dry_run, "undo")
    path, records = open_run(root_p, run)
    s["run"] = os.path.basename(path)[:-len(".jsonl")]
    with RootLock(root_p) if not dry_run else contextlib.nullcontext():
        jobs: list[tuple[str, str]] = []
        kept: list[tuple[str, str]] = []
        in_packs: list[packrestore.Job] = []
        planned: set[str] = set()
        root_fd = fs.open_trusted_dir(root_p)
        try:
            for rec in records:
                s["scanned"] += 1
                if "pack" in rec:
                    job = packrestore.plan_undo(root_p, rec, s, planned)
                    if job is not None:
                        in_packs.append(job)
                    continue
                job = _plan_undo_line(root_p, root_fd, rec, s)
                if job is not None:
                    # "resumed": the archive existed before this run (which only deleted
                    # the verified source), so putting the run back keeps it.
                    (kept if rec.get("status") == "resumed" else jobs).append(job)
        finally:
            os.close(root_fd)
        if not dry_run:
            if on_jobs is not None:
                on_jobs(len(jobs) + len(kept) + len(in_packs))
            run_jobs(jobs, s, remove_archive=True, workers=workers, root=root_p,
                     on_result=on_result)
            if not s["stopped"]:
                run_jobs(kept, s, remove_archive=False, workers=workers, root=root_p,
                         on_result=on_result)
            else:
                s["skipped"] += len(kept)  # not attempted
            if not s["stopped"]:
                # Packs are only read (never rewritten): `repack` drops these sessions later.
                packrestore.restore(root_p, in_packs, s, on_result)
            else:
                s["skipped"] += len(in_packs)
            forget_removed(root_p, s)
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


def _plan_undo_line(root: str, root_fd: int, rec: dict[str, Any], s: dict[str, Any]
                    ) -> tuple[str, str] | None:
    """A manifest line (the tree owner's to forge, untrusted.py) as an (archive, session)
    job, or None, counted into *s*. Both paths must be plain paths below the root (no
    ``..``: refused, never normalised), the session the dir beside its archive; the
    archive is looked at through dir fds below the root: a regular file on the root's
    device. The restore then reaches both the same way (run_jobs with *root*)."""
    archive, session = rec["archive"], rec["session"]
    try:
        arel = untrusted.rel_below(root, archive, "manifest archive")
        untrusted.rel_below(root, session, "manifest session")
    except UntrustedInput as e:
        record_failure(s, e.path, e.reason)
        return None
    named = split_archive_name(os.path.basename(archive))
    if named is None or session != os.path.join(os.path.dirname(archive), named[0]):
        # A forged line could otherwise make root restore another user's archive
        # into this user's dir (and, with the undo's unlink, delete it).
        record_failure(s, archive, f"manifest pairs it with {session}, not the "
                                   "session dir beside it; refused")
        return None
    try:
        dfd = untrusted.open_dir_below(root_fd, os.path.dirname(arel))
    except FileNotFoundError:
        record_failure(s, archive, "archive is gone; cannot restore " + session)
        return None
    except OSError as e:
        record_failure(s, archive, untrusted.refusal(archive, e).reason)
        return None
    try:
        if fs.lexists_at(dfd, named[0]):
            s["skipped"] += 1
            return None
        try:
            st = fs.lstat_at(dfd, os.path.basename(arel))
        except FileNotFoundError:
            record_failure(s, archive, "archive is gone; cannot restore " + session)
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_dev != os.fstat(root_fd).st_dev:
            record_failure(s, archive, "is not a regular file on the root's filesystem; "
                                       "refused")
            return None
    finally:
        os.close(dfd)
    s["candidates"] += 1
    s["bytes_in"] += st.st_size
    return archive, session


