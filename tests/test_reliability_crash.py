"""SIGKILL at random moments, SIGTERM/SIGINT: no session is ever lost, and the next sweep
finishes the job. A real ``session-archive sweep --execute`` process group on a generated
tree each trial; the recoverability check is tests/reliability.py.

The bounded version runs in CI; ``pytest -m stress`` (scripts/stress) runs many more trials.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive_tool.demo import make_tree
from archive_tool.sweep.packsweep import pack_sweep
from archive_tool.sweep.sessions import sweep
from tests.reliability import assert_all_archived_once, check, finished, record, snapshot_sessions

# Runs the CLI with O_TMPFILE disabled for the tree's filesystem: the named ``.tmp``
# fallback that NFS/Lustre take. In-process batches (-j 1) so the setting applies.
_FALLBACK = (
    "import os, sys\n"
    "from archive_tool.engine import commit\n"
    "commit._no_tmpfile_devs.add(os.stat(sys.argv[1]).st_dev)\n"
    "from archive_tool.cli import cli\n"
    "cli(['sweep', *sys.argv[1:]], prog_name='session-archive')\n"
)


def _start(root: Path, fmt: str, workers: int, fallback: bool, batch: int,
           pack: str | None = None) -> subprocess.Popen:
    args = [str(root), "--execute", "-q", "-j", str(workers)]
    # --pack writes tar.zst packs and takes no batch size (a pack is the unit of work).
    args += ["--pack", pack] if pack else ["-f", fmt, "--batch-size", str(batch)]
    cmd = ([sys.executable, "-c", _FALLBACK, *args] if fallback
           else [sys.executable, "-m", "archive_tool", "sweep", *args])
    # A process group of its own: the kill takes the sweeper and its workers (and its
    # forkserver, when it has one).
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _wait_for_lock(root: Path, p: subprocess.Popen, timeout: float = 30) -> bool:
    """True once the sweep holds its root lock (its pid is in the lock file): from then
    on it is discovering, archiving, committing or deleting."""
    lock = root / ".session-archive.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lock.read_bytes().split()[:1] == [str(p.pid).encode()]:
                return True
        except FileNotFoundError:
            pass
        if p.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("the sweep never took its lock")


def _work_seconds(tmp: Path, n: int) -> float:
    """How long a sweep of *n* sessions runs once it holds the lock (-j1 and -j2, longer)."""
    times = []
    for k in range(2):
        root = tmp / f"calibrate{k}"
        make_tree(root, n, seed=99 + k)
        p = _start(root, "tar.zst", 1 + k % 2, False, 4)
        _wait_for_lock(root, p)
        t = time.monotonic()
        p.communicate(timeout=120)
        times.append(time.monotonic() - t)
        assert p.returncode == 0
    return max(times)


def run_kill_trials(tmp: Path, trials: int, sessions: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    work = _work_seconds(tmp, sessions)
    totals = {"trials": 0, "sessions_checked": 0, "lost": 0, "killed_mid_run": 0,
              "both_after_kill": 0, "leftovers_after_kill": 0, "pack_trials": 0}
    for i in range(trials):
        root = tmp / f"t{i}"
        make_tree(root, sessions, seed=seed * 1000 + i)
        before = snapshot_sessions(root)
        fmt = rng.choice(["tar.zst", "tar.gz"])
        fallback = i % 4 == 3
        workers = 1 if fallback or i % 3 == 0 else 2
        # Every fifth trial kills a pack sweep (issue 14): packs beside the sessions.
        pack = rng.choice(["daily", "3"]) if i % 5 == 1 else None
        p = _start(root, fmt, workers, fallback, rng.choice([1, 4, 16]), pack)
        if i % 8 == 7:
            time.sleep(rng.uniform(0.0, 0.5))  # during start-up
        elif _wait_for_lock(root, p):
            time.sleep(rng.uniform(0.0, work))
        if p.poll() is None:
            totals["killed_mid_run"] += 1
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate(timeout=60)
        _reap_group(p.pid)
        rep = check(root, before)
        totals["trials"] += 1
        totals["sessions_checked"] += rep.checked
        totals["lost"] += len(rep.lost)
        totals["both_after_kill"] += rep.both
        totals["leftovers_after_kill"] += len(rep.leftovers)
        assert rep.ok, (f"trial {i} ({fmt}, -j{workers}, fallback={fallback}, pack={pack}): "
                        f"{rep}")
        totals["pack_trials"] += pack is not None
        # The kernel dropped the lock with the process: the next sweep runs and cleans up
        # (a pack sweep after a pack sweep: it finishes sources a published pack holds).
        if pack:
            s = pack_sweep(root, pack, dry_run=False, workers=1)
        else:
            s = sweep(root, dry_run=False, workers=1, format=fmt)
        assert s["failed"] == 0, s["failures"]
        assert_all_archived_once(root, before)
    return totals


def _reap_group(pgid: int) -> None:
    """Wait until no process of the killed group is left (workers die with it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process group {pgid} survived SIGKILL")


@pytest.mark.timeout(150)
def test_sigkill_at_any_moment_loses_no_session(tmp_path: Path) -> None:
    totals = run_kill_trials(tmp_path, trials=20, sessions=50, seed=6)
    record("crash (CI)", totals)
    assert totals["lost"] == 0
    # The kills really landed mid-run. Not "most": the kill moment is drawn over the
    # calibrated run time, and a loaded CI box can finish a sweep early (7 of 20 seen).
    assert totals["killed_mid_run"] >= 5, totals


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_sigkill_stress_many_trials_bigger_trees(tmp_path: Path) -> None:
    trials = int(os.environ.get("STRESS_TRIALS", "300"))
    totals = run_kill_trials(tmp_path, trials=trials, sessions=150, seed=int(time.time()))
    record("crash (stress)", totals)
    assert totals["lost"] == 0


def _wait_for_first_archive(root: Path, p: subprocess.Popen, timeout: float = 30) -> None:
    try:
        _poll_for_archive(root, p, timeout)
    except BaseException:
        # Never leave the sweep running behind a failed test: its Popen's ResourceWarning
        # would fail whichever later test the garbage collector happens to run in.
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=60)
        raise


def _poll_for_archive(root: Path, p: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # os.walk, not Path.rglob: the sweep deletes dirs while we look, and rglob raises
        # FileNotFoundError on one that vanished between listing and entering it.
        if any(f.endswith(".tar.zst") for _, _, files in os.walk(root) for f in files):
            return
        assert p.poll() is None, p.communicate()
        time.sleep(0.005)
    raise AssertionError("the sweep never started archiving")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(90)
def test_sigterm_and_sigint_stop_cleanly_with_a_consistent_tree(
    tmp_path: Path, sig: signal.Signals, workers: int
) -> None:
    root = tmp_path / "tree"
    make_tree(root, 250, seed=int(sig) + workers)
    before = snapshot_sessions(root)
    p = _start(root, "tar.zst", workers, False, 4)
    _wait_for_first_archive(root, p)
    os.killpg(p.pid, sig)  # what Ctrl-C (SIGINT) or `kill -TERM -PGID` does
    out, err = p.communicate(timeout=60)
    _reap_group(p.pid)
    assert p.returncode == 128 + sig, (p.returncode, err.decode())
    lines = err.decode().strip().splitlines()
    assert lines and lines[-1].startswith("Error: interrupted by"), err.decode()
    assert "Traceback" not in err.decode()
    rep = check(root, before)
    assert rep.ok, rep
    # Stopped cleanly: in-flight batches settled, nothing half-done.
    assert rep.both == 0 and not rep.leftovers, rep
    assert rep.as_dir > len(before) - len(finished(before)), "stopped before doing anything"
    s = sweep(root, dry_run=False, workers=1)
    assert s["failed"] == 0, s["failures"]
    assert_all_archived_once(root, before)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _pool_workers(pid: int) -> list[int]:
    """The sweep's pool workers: its forked children (they share its command line), or
    the children of its forkserver (executors.start_method)."""
    me, out = _cmdline(pid), []
    for c in _children(pid):
        cmd = _cmdline(c)
        if cmd == me:
            out.append(c)
        elif b"multiprocessing.forkserver" in cmd:
            out += _children(c)
    return out


@pytest.mark.timeout(90)
def test_a_worker_killed_mid_batch_loses_nothing_and_the_sweep_ends(tmp_path: Path) -> None:
    """The OOM killer takes one worker: its batch is reported failed, the sweep exits 1
    instead of hanging, and the next sweep finishes what the dead worker left."""
    root = tmp_path / "tree"
    make_tree(root, 400, seed=11)
    before = snapshot_sessions(root)
    p = _start(root, "tar.zst", 2, False, 4)
    _wait_for_first_archive(root, p)
    workers = _pool_workers(p.pid)
    assert workers, "no pool workers found"
    os.kill(workers[0], signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    _reap_group(p.pid) if p.returncode else None
    assert p.returncode == 1, (p.returncode, err.decode())
    assert "Traceback" not in err.decode()
    assert err.decode().strip().splitlines()[-1].startswith("Error: "), err.decode()
    rep = check(root, before)
    assert rep.ok, rep
    s = sweep(root, dry_run=False, workers=1)
    assert s["failed"] == 0, s["failures"]
    assert_all_archived_once(root, before)
