"""RUNNING runs that died (SIGKILL, OOM killer, node crash, SLURM time limit): tell them
from live ones, and finalize the dead ones into FINISHED_ERROR/ so a sweep archives them.

The rule (RELIABILITY.md): a run is **stale** when its heartbeat (the mtime of
``<run>/.heartbeat``, touched every ``HEARTBEAT_INTERVAL`` seconds by ``scitex_session``)
is older than the threshold (``--stale-after``, default 10 x the run's interval) **and**,
when the run's host is this host, its PID is gone, a zombie, or belongs to a process with
another start time (or the machine rebooted since). A run with a heartbeat on another host
is judged by the heartbeat alone. A run without heartbeat (the published package, older
versions) is stale only with an explicit ``stale_after``, by the newest mtime in its dir.

Finalizing one run: lock the run dir (the flock ``scitex_session``'s close and the
archiver take), re-check under the lock that the heartbeat did not move and the run is
still stale, write ``STALE_FINALIZED.json`` into it (why and when), and rename it to the
sibling ``FINISHED_ERROR/`` relative to directory fds opened ``O_NOFOLLOW``, never over an
existing entry. A close that was waiting for the lock finds its dir there, takes it back
and finishes normally (``scitex_session._heartbeat.claim_run_dir``): one session either way.

The engine never imports ``scitex_session``; the heartbeat file is defined in
:mod:`liveness`, which ``scitex_session`` imports (small, so a run starts fast).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from archive_tool import fs
from archive_tool.errors import BadArgument
from archive_tool.guard.liveness import MARKER_NAME, hostname
from archive_tool.names import ERROR_STATE, FINISHED_STATES, RUNNING_STATE, is_session_name
from archive_tool.stale.staleness import (
    LIVE,
    STALE,
    UNKNOWN,
    Verdict,
    classify_fd,
)

MAX_LISTED = 1000

_DIR_FLAGS = fs.O_DIR

# Tests make races deterministic through this: called as hook(stage, run_path) with stage
# "classified" (judged stale, not yet locked) and "locked" (lock held, before the re-check).
_hook: Callable[[str, str], None] | None = None


class Skipped(Exception):
    """This run is not finalized now, for a benign reason (finished meanwhile, locked,
    heartbeat moved); the next sweep looks again."""


class Refused(OSError):
    """The dirs of this run were moved or replaced while it was finalized (a swap by the
    tree's owner): the run is left where it was, or moved back; never moved elsewhere."""


class Held(NamedTuple):
    """The dir fds a finalize works between, opened by the walk from the root: the
    ``<script>_out`` dir and its ``RUNNING/``; *out_rel* is the out dir below the root."""
    root_fd: int
    out_fd: int
    out_rel: str
    running_fd: int


def _judged(root: str, stale_after: float | None,
            now: float | None) -> Iterator[tuple[Held, Verdict]]:
    """(the dir fds it lives in, verdict) for every session dir directly under a
    ``RUNNING/`` below *root*. Walked by directory fds, never through a symlink (:mod:`fs`:
    a cron sweep as root over users' trees). FINISHED_* and session dirs are not entered
    (a RUNNING dir is their sibling), so this stays cheap on a tree of finished sessions.
    The fds stay open until the consumer asks for the next run."""
    fd = fs.open_trusted_dir(root)
    try:
        yield from _walk(fd, fd, root, "", stale_after, now, hostname())
    finally:
        os.close(fd)


def _walk(root_fd: int, fd: int, path: str, rel: str, stale_after: float | None,
          now: float | None, host: str) -> Iterator[tuple[Held, Verdict]]:
    try:
        entries = fs.scandir_sorted(fd)
    except OSError:
        return  # unreadable: skipped, as discovery skips it
    for e in entries:
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        sub = os.path.join(path, e.name)
        if e.name == RUNNING_STATE:
            for rfd, v in _runs_in(fd, sub, st, stale_after, now, host):
                yield Held(root_fd, fd, rel, rfd), v
        elif e.name not in FINISHED_STATES and not is_session_name(e.name):
            try:
                child = fs.open_dir(e.name, fd, st)
            except OSError:
                continue
            try:
                yield from _walk(root_fd, child, sub, f"{rel}/{e.name}" if rel else e.name,
                                 stale_after, now, host)
            finally:
                os.close(child)


def _runs_in(parent_fd: int, running: str, expect: os.stat_result, stale_after: float | None,
             now: float | None, host: str) -> Iterator[tuple[int, Verdict]]:
    try:
        rfd = fs.open_dir(RUNNING_STATE, parent_fd, expect)
    except OSError:
        return
    try:
        for e in fs.scandir_sorted(rfd):
            try:
                if not (e.is_dir(follow_symlinks=False) and is_session_name(e.name)):
                    continue
                dfd = fs.open_dir(e.name, rfd, e.stat(follow_symlinks=False))
            except OSError:
                continue  # finished (moved away) since it was listed, or unreadable
            try:
                st = os.fstat(dfd)
                v = classify_fd(dfd, os.path.join(running, e.name), stale_after,
                                 time.time() if now is None else now, host)
            except OSError:
                continue
            finally:
                os.close(dfd)
            yield rfd, v._replace(dev_ino=(st.st_dev, st.st_ino))
    except OSError:
        return
    finally:
        os.close(rfd)


def _marker(v: Verdict, now: float) -> bytes:
    iso = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat()  # noqa: E731
    doc = {
        "finalized_at": iso(now),
        "reason": v.reason,
        "rule": "heartbeat older than the threshold and, on the run's own host, its process "
                "gone; runs without heartbeat only by an explicit --stale-after",
        "heartbeat_mtime" if v.heartbeat else "newest_mtime": iso(v.mark_ns / 1e9),
        "identity": v.identity,
        "moved": f"{RUNNING_STATE}/ -> {ERROR_STATE}/",
        "finalized_by": {"host": hostname(), "pid": os.getpid(),
                         "uid": os.geteuid()},
    }
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


def _open_error_dir(out_fd: int) -> int:
    try:
        os.mkdir(ERROR_STATE, 0o755, dir_fd=out_fd)
        if os.geteuid() == 0:
            # As root (cron), hand the new state dir to whoever owns the <script>_out dir.
            st = os.fstat(out_fd)
            os.chown(ERROR_STATE, st.st_uid, st.st_gid, dir_fd=out_fd, follow_symlinks=False)
    except FileExistsError:
        pass
    return os.open(ERROR_STATE, _DIR_FLAGS, dir_fd=out_fd)


def finalize_one(held: Held, v: Verdict, stale_after: float | None = None) -> str:
    """Move the stale run *v* (a child of ``held.running_fd``) to the sibling
    ``FINISHED_ERROR/`` with its marker; returns the new path. Raises Skipped (benign:
    look again next time), Refused (its dirs were swapped) or OSError."""
    running_fd = held.running_fd
    name = os.path.basename(v.path)
    try:
        rfd = fs.open_dir(name, running_fd)
    except FileNotFoundError:
        raise Skipped("finished meanwhile") from None
    try:
        held_st = os.fstat(rfd)
        if v.dev_ino is not None and (held_st.st_dev, held_st.st_ino) != v.dev_ino:
            raise Skipped("another dir took its name meanwhile")
        try:
            fcntl.flock(rfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Skipped("locked by another process (finishing, or being finalized)") from None
        try:
            now_st = fs.lstat_at(running_fd, name)
        except FileNotFoundError:
            now_st = None
        if now_st is None or not fs.same_file(now_st, held_st):
            raise Skipped("finished meanwhile")
        if _hook is not None:
            _hook("locked", v.path)
        now = time.time()
        again = classify_fd(rfd, v.path, stale_after, now, hostname())
        if again.mark_ns != v.mark_ns:
            raise Skipped("heartbeat moved during the check" if v.heartbeat
                          else "written to during the check")
        if again.state != STALE:
            raise Skipped(f"no longer stale: {again.reason}")
        return _move(rfd, held, os.path.dirname(os.path.dirname(v.path)), name, again, now)
    finally:
        os.close(rfd)


def _in_place(held: Held, dfd: int | None) -> bool:
    """Whether the dirs we hold are still where the walk found them: the out dir at its
    path below the root, its ``RUNNING`` entry the RUNNING fd, and (with *dfd*) its
    ``FINISHED_ERROR`` entry that fd (dev/inode each)."""
    try:
        at = fs.open_beneath(held.root_fd, held.out_rel) if held.out_rel \
            else os.dup(held.root_fd)
    except OSError:
        return False
    try:
        if not fs.same_file(os.fstat(at), os.fstat(held.out_fd)):
            return False
        if not fs.same_file(fs.lstat_at(held.out_fd, RUNNING_STATE),
                            os.fstat(held.running_fd)):
            return False
        return dfd is None or fs.same_file(fs.lstat_at(held.out_fd, ERROR_STATE),
                                           os.fstat(dfd))
    except OSError:
        return False
    finally:
        os.close(at)


def _move(rfd: int, held: Held, out: str, name: str, v: Verdict, now: float) -> str:
    """renameat from the RUNNING fd to FINISHED_ERROR opened in the out dir fd the walk
    holds (never through ``..``: a RUNNING dir renamed elsewhere meanwhile has another
    parent), with the dirs checked in place before and after; a swap found after the
    move moves the run back and is a refusal."""
    pfd = held.running_fd
    if not _in_place(held, None):
        raise Refused(errno.ESTALE, "its RUNNING/ dir was moved or replaced; refused")
    wrote = False
    try:
        mfd = os.open(MARKER_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o644, dir_fd=rfd)
    except FileExistsError:
        mfd = -1  # left by a finalize interrupted before its rename: it says the same
    if mfd >= 0:
        wrote = True
        try:
            os.write(mfd, _marker(v, now))
            if os.geteuid() == 0:
                st = os.fstat(rfd)
                os.fchown(mfd, st.st_uid, st.st_gid)
            os.fsync(mfd)
        finally:
            os.close(mfd)
    dfd = -1
    try:
        dfd = _open_error_dir(held.out_fd)
        if not _in_place(held, dfd):
            raise Refused(errno.ESTALE, "its dirs were moved or replaced; refused")
        if _hook is not None:
            _hook("before-rename", os.path.join(out, RUNNING_STATE, name))
        fs.rename_noreplace_at(pfd, name, dfd, name)
        if not _in_place(held, dfd):
            # Swapped between the check and the rename: put it back where it was.
            fs.rename_noreplace_at(dfd, name, pfd, name)
            raise Refused(errno.ESTALE, "its dirs were moved or replaced during the move; "
                                        "moved back, refused")
    except OSError:
        if wrote:
            with contextlib.suppress(OSError):
                os.unlink(MARKER_NAME, dir_fd=rfd)
        if dfd >= 0:
            os.close(dfd)
        raise
    try:
        # The run is now FINISHED_ERROR/<name>: make both directory entries durable
        # before a sweep archives (and deletes) it.
        os.fsync(dfd)
        os.fsync(pfd)
        os.fsync(held.out_fd)
    finally:
        os.close(dfd)
    return os.path.join(out, ERROR_STATE, name)


# ------------------------------------------------------------------------------- drivers


def new_counts() -> dict[str, Any]:
    return {"running": 0, "live": 0, "stale": 0, "no_heartbeat": 0, "finalized": 0,
            "skipped": 0, "failed": 0, "runs": [], "failures": []}


def _note(counts: dict[str, Any], key: str, item: dict[str, Any]) -> None:
    if len(counts[key]) < MAX_LISTED:
        counts[key].append(item)


def finalize_stale(root: str, *, dry_run: bool = True, stale_after: float | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """Classify every RUNNING run under *root* and (unless *dry_run*) finalize the stale
    ones. Returns counts: running, live, stale, no_heartbeat, finalized, skipped, failed,
    ``runs`` (each stale run: path, reason, action) and ``failures`` (path, reason)."""
    if stale_after is not None and stale_after < 0:
        raise BadArgument(f"stale_after must be >= 0, got {stale_after}")
    counts = new_counts()
    emptied: set[str] = set()  # parents of the RUNNING/ dirs a run was moved out of
    for held, v in _judged(root, stale_after, now):
        path = v.path
        counts["running"] += 1
        if v.state == LIVE:
            counts["live"] += 1
            continue
        if v.state == UNKNOWN:
            counts["no_heartbeat"] += 1
            continue
        counts["stale"] += 1
        if dry_run:
            _note(counts, "runs", {"path": path, "reason": v.reason, "action": "would finalize"})
            continue
        if _hook is not None:
            _hook("classified", path)
        try:
            dest = finalize_one(held, v, stale_after)
        except Skipped as e:
            counts["skipped"] += 1
            _note(counts, "runs", {"path": path, "reason": v.reason, "action": f"skipped: {e}"})
        except OSError as e:
            counts["failed"] += 1
            why = f"cannot finalize: {e.strerror or e}"
            _note(counts, "runs", {"path": path, "reason": v.reason, "action": why})
            _note(counts, "failures", {"path": path, "reason": why})
        else:
            counts["finalized"] += 1
            _note(counts, "runs", {"path": path, "reason": v.reason, "action": "finalized",
                                   "moved_to": dest})
            emptied.add(os.path.dirname(os.path.dirname(path)))
    counts["running_dirs_removed"] = drop_emptied_running(root, emptied)
    return counts


def drop_emptied_running(root: str, parents: set[str]) -> int:
    """Remove each ``<parent>/RUNNING/`` that finalizing left empty (issue 26), as the
    decorator's close does for the last run of a script: rmdir is atomic and refuses a
    dir that holds anything, so a run started meanwhile keeps it (one whose mkdir inside
    it loses the race gets ENOENT and makes RUNNING/ again: scitex_session._start).
    Reached by dir fds below the root, no symlink followed. Returns how many went."""
    if not parents:
        return 0
    removed = 0
    root_fd = fs.open_trusted_dir(root)
    try:
        for parent in sorted(parents):
            rel = os.path.relpath(parent, root)
            try:
                pfd = fs.open_beneath(root_fd, rel)
            except OSError:
                continue
            try:
                os.rmdir(RUNNING_STATE, dir_fd=pfd)
                removed += 1
            except OSError:
                pass  # not empty (a new run, an unfinalized one), or gone already
            finally:
                os.close(pfd)
    finally:
        os.close(root_fd)
    return removed


def survey(root: str, stale_after: float | None = None, now: float | None = None,
           subtree: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Read-only: RUNNING runs per subtree (live / stale / no heartbeat) and the stale
    ones with their reasons, for ``report``."""
    rows: dict[str, dict[str, int]] = {}
    stale: list[dict[str, str]] = []
    for _fd, v in _judged(root, stale_after, now):
        path = v.path
        key = subtree(path) if subtree else os.path.dirname(os.path.dirname(path))
        row = rows.setdefault(key, {"live": 0, "stale": 0, "no_heartbeat": 0})
        row[{LIVE: "live", STALE: "stale", UNKNOWN: "no_heartbeat"}[v.state]] += 1
        if v.state == STALE and len(stale) < MAX_LISTED:
            stale.append({"path": path, "reason": v.reason})
    return {
        "stale_after": stale_after,
        "live": sum(r["live"] for r in rows.values()),
        "stale": sum(r["stale"] for r in rows.values()),
        "no_heartbeat": sum(r["no_heartbeat"] for r in rows.values()),
        "subtrees": [{"subtree": k, **v} for k, v in sorted(rows.items())],
        "stale_runs": stale,
    }
