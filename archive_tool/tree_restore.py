"""Put archives back as session dirs across a whole tree: ``extract ROOT --tree`` (every
archive in a FINISHED_* dir) and ``extract ROOT --undo RUN`` (exactly the archives one
``sweep --execute`` wrote, from its manifest, see runlog.py).

Each archive is restored by ``restore_one`` on the sweep's process pool: into a temp dir
beside the destination, renamed into place, never over an existing dir; with
``remove_archive`` the restored tree is made durable before the archive is unlinked. Both
hold the root's lock, so a sweep cannot archive a session while it is being put back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from typing import Any

from .executors import default_workers, local_executor
from .lock import RootLock
from .names import (
    FINISHED_STATES,
    RUNNING_STATE,
    is_session_name,
    session_of_trash,
    split_archive_name,
)
from .plan import check_root
from .sweep import WORKER_DIED, record_failure, restore_batch

STATE_DIR = ".session-archive"


def _walk_into(name: str) -> bool:
    # Hidden project dirs are walked (a sweep archives there too); session dirs, a crash's
    # trash (.X.deleting) and restore temp dirs (.X.restore-*) hold session content, not
    # archives of ours.
    if name in (RUNNING_STATE, STATE_DIR) or is_session_name(name):
        return False
    return session_of_trash(name) is None and ".restore-" not in name


def iter_session_archives(root: str) -> Iterator[os.DirEntry[str]]:
    """Regular files ``<ID>[-<name>].<format>`` whose parent is a FINISHED_* dir, anywhere
    under *root*; symlinks never followed, RUNNING/ and session dirs never entered."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue  # unreadable: skipped, as discovery skips it
        in_finished = os.path.basename(d) in FINISHED_STATES
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if _walk_into(e.name):
                            stack.append(e.path)
                        continue
                    if not in_finished or not e.is_file(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                named = split_archive_name(e.name)
                if named is not None and is_session_name(named[0]):
                    yield e


def new_restore_summary(root: str, dry_run: bool, mode: str) -> dict[str, Any]:
    return {"root": root, "mode": mode, "dry_run": dry_run, "scanned": 0, "candidates": 0,
            "restored": 0, "skipped": 0, "failed": 0, "bytes_in": 0, "bytes_out": 0,
            "capped": 0, "elapsed": 0.0, "failures": [], "stopped": None}


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM stop feeding the pool; restores in flight finish whole (workers
    ignore both signals) and the caller reports the signal. Main thread only."""
    caught: list[int] = []
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, _f: caught.append(signum))
    try:
        yield caught
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_jobs(jobs: list[tuple[str, str]], s: dict[str, Any], *, remove_archive: bool,
             workers: int | None, batch_size: int = 32,
             on_result: Callable[[tuple[str, str, str, int]], None] | None = None) -> None:
    """Restore (archive, dest) pairs on a process pool, accounting into summary *s*."""
    if not jobs:
        return
    n = workers or default_workers()
    size = max(1, min(batch_size, -(-len(jobs) // n)))
    batches = iter([jobs[i:i + size] for i in range(0, len(jobs), size)])
    fed = 0
    ex = local_executor(n)
    inflight: dict[Future, list[tuple[str, str]]] = {}

    def absorb(f: Future, batch: list[tuple[str, str]]) -> None:
        try:
            results = f.result()
        except BaseException as e:  # noqa: BLE001 - a lost worker: its archives are kept
            if isinstance(e, BrokenExecutor) and not s["stopped"]:
                s["stopped"] = f"{WORKER_DIED}: {e}"
            results = [(a, "failed", f"worker lost: {e!r}", 0) for a, _ in batch]
        for r in results:
            archive, status, reason, b_out = r
            if status == "restored":
                s["restored"] += 1
                s["bytes_out"] += b_out
            elif status == "skipped":
                s["skipped"] += 1
            else:
                record_failure(s, archive, reason)
            if on_result is not None:
                on_result(r)

    try:
        with _stop_on_signals() as caught:
            while True:
                # A window of 2 batches per worker: Ctrl-C leaves little in flight.
                while len(inflight) < 2 * n and not caught and not s["stopped"]:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    try:
                        inflight[ex.submit(restore_batch, batch, remove_archive)] = batch
                    except BrokenExecutor as e:
                        s["stopped"] = f"{WORKER_DIED}: {e}"
                        break
                    fed += len(batch)
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for f in done:
                    absorb(f, inflight.pop(f))
            if fed < len(jobs):
                s["skipped"] += len(jobs) - fed  # not attempted: archives untouched
            if caught:
                s["stopped"] = f"interrupted by {signal.Signals(caught[0]).name}"
                s["signal"] = caught[0]
    finally:
        ex.shutdown(wait=True)


def restore_tree(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = True,
    remove_archive: bool = False,
    max_files: int | None = None,
    workers: int | None = None,
    on_jobs: Callable[[int], None] | None = None,
    on_result: Callable[[tuple[str, str, str, int]], None] | None = None,
) -> dict[str, Any]:
    """Restore every session archive under *root* into its FINISHED_* dir (beside it).
    An archive whose session dir already exists is skipped. *on_jobs* is told how many
    restores will run, before they start (a progress bar's total)."""
    t0 = time.monotonic()
    root_p = check_root(root)
    if max_files is not None and max_files < 0:
        raise ValueError(f"max_files must be >= 0 (0 = no cap), got {max_files}")
    s = new_restore_summary(root_p, dry_run, "tree")
    with RootLock(root_p) if not dry_run else contextlib.nullcontext():
        jobs: list[tuple[str, str]] = []
        for e in iter_session_archives(root_p):
            s["scanned"] += 1
            dest = os.path.join(os.path.dirname(e.path), split_archive_name(e.name)[0])  # type: ignore[index]
            if os.path.lexists(dest):
                s["skipped"] += 1
                continue
            if max_files and s["candidates"] >= max_files:
                s["capped"] += 1
                continue
            s["candidates"] += 1
            try:
                s["bytes_in"] += e.stat(follow_symlinks=False).st_size
            except OSError:
                pass
            jobs.append((e.path, dest))
        if not dry_run:
            if on_jobs is not None:
                on_jobs(len(jobs))
            run_jobs(jobs, s, remove_archive=remove_archive, workers=workers, on_result=on_result)
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s


def undo_run(
    root: str | os.PathLike[str],
    run: str,
    *,
    dry_run: bool = True,
    workers: int | None = None,
    on_jobs: Callable[[int], None] | None = None,
    on_result: Callable[[tuple[str, str, str, int]], None] | None = None,
) -> dict[str, Any]:
    """Undo one ``sweep --execute`` of *root*: restore exactly the archives its manifest
    lists (run name from ``.session-archive/runs/``, or ``last``) to the session dirs they
    came from, removing each archive once its restore is durable. A session dir that exists
    again is skipped (never overwritten); an archive that is gone is a failure."""
    from .runlog import read_run, run_path

    t0 = time.monotonic()
    root_p = check_root(root)
    s = new_restore_summary(root_p, dry_run, "undo")
    path = run_path(root_p, run)
    s["run"] = os.path.basename(path)[:-len(".jsonl")]
    with RootLock(root_p) if not dry_run else contextlib.nullcontext():
        jobs: list[tuple[str, str]] = []
        kept: list[tuple[str, str]] = []
        for rec in read_run(path):
            s["scanned"] += 1
            archive, session = rec["archive"], rec["session"]
            inside = root_p + os.sep
            if not (archive.startswith(inside) and session.startswith(inside)):
                # The manifest is a plain file in the tree; never restore outside it.
                record_failure(s, archive, f"not under {root_p}; refused")
                continue
            if os.path.lexists(session):
                s["skipped"] += 1
                continue
            if not os.path.isfile(archive):
                record_failure(s, archive, "archive is gone; cannot restore " + session)
                continue
            s["candidates"] += 1
            s["bytes_in"] += os.path.getsize(archive)
            # "resumed": the archive existed before this run (which only deleted the
            # verified source), so putting the run back keeps it.
            (kept if rec.get("status") == "resumed" else jobs).append((archive, session))
        if not dry_run:
            if on_jobs is not None:
                on_jobs(len(jobs) + len(kept))
            run_jobs(jobs, s, remove_archive=True, workers=workers, on_result=on_result)
            if not s["stopped"]:
                run_jobs(kept, s, remove_archive=False, workers=workers, on_result=on_result)
            else:
                s["skipped"] += len(kept)  # not attempted
    s["elapsed"] = round(time.monotonic() - t0, 3)
    return s
