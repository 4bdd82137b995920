"""Issue 23: SIGTERM and SIGINT end every long command within 2 s of arrival, at any point
(inside a long member, between sessions, in a pool worker, in a catalog rebuild), with
exit 128+N, nothing left behind (no *.tmp, no .restore-* temp dir, no .deleting trash, no
catalog.sqlite.rebuild-PID, no worker process) and no session lost.

Each command is interrupted at a few random points (seeded; the seed is in the failure
message), by a signal to its PID alone (the parent must stop its workers itself) or to its
process group (what Ctrl-C and `kill -TERM -PGID` do). The trees are consumed point by
point, so every point lands on a command that still has work to do.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from archive_tool.demo import make_tree
from archive_tool.guard.lock import LOCK_NAME
from archive_tool.names import FINISHED_STATES
from tests.reliability import check, leftovers, snapshot_sessions

SEED = int(os.environ.get("SIGNAL_TEST_SEED", time.time_ns() % 100_000))
LIMIT = 2.0  # seconds from the signal to the exit: the promise


def _group_alive(pgid: int) -> list[int]:
    out = []
    for n in os.listdir("/proc"):
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(n))
    return out


def _catches_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def interrupt_at(tmp_path: Path, args: list[str], delay: float, sig: int = signal.SIGTERM,
                 group: bool = False, ready: Callable[[int], bool] | None = None) -> bool:
    """Run ``session-archive ARGS``, send *sig* after *delay* s; False if it had already
    finished (exit 0). Otherwise assert the promise: exit 128+sig within LIMIT, one
    ``Error: interrupted by`` line and no traceback, no process of it left."""
    err = tmp_path / f"stderr-{time.monotonic_ns()}"
    with open(err, "wb") as ef:
        p = subprocess.Popen([sys.executable, "-m", "archive_tool", *args],
                             stdout=subprocess.DEVNULL, stderr=ef, start_new_session=True)
    try:
        # Count from the moment its handlers are in (SigCgt has SIGTERM): before that the
        # interpreter is still starting, and a signal has its default effect (-15).
        while p.poll() is None and not _catches_sigterm(p.pid):
            time.sleep(0.005)
        # ... or from the moment its real work starts (it holds the root's lock).
        while ready is not None and p.poll() is None and not ready(p.pid):
            time.sleep(0.005)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.01)
        if p.poll() is not None:
            assert p.returncode in (0, 1), (args, p.returncode, err.read_text())
            return False
        t0 = time.monotonic()
        (os.killpg if group else os.kill)(p.pid, sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - t0
        print(f"signal-latency {args[0]} {took:.3f}")  # pytest -s: the numbers for RESULTS
        text = err.read_text()
        what = f"{args} sig {sig} after {delay:.2f}s (seed {SEED})"
        assert took < LIMIT, (what, f"exited {took:.2f}s after the signal")
        if p.returncode == 0 and not text:
            return False  # it was already exiting (signals held pending): not a hit
        assert p.returncode == 128 + sig, (what, p.returncode, text)
        assert "Traceback" not in text, (what, text)
        assert text.strip().splitlines()[-1].startswith("Error: interrupted by"), (what, text)
        # Its workers and forkserver end with it (a pool killed only by its parent's
        # exit could keep deleting).
        end = time.monotonic() + 1.5
        while _group_alive(p.pid) and time.monotonic() < end:
            time.sleep(0.02)
        assert not _group_alive(p.pid), (what, "processes of the command survived it")
        return True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for pid in _group_alive(p.pid):
            os.kill(pid, signal.SIGKILL)


def holds_lock(root: Path) -> Callable[[int], bool]:
    def ready(pid: int) -> bool:
        try:
            # The lock file holds "PID HOST START" (the busy error names the holder).
            return (root / LOCK_NAME).read_bytes().split()[:1] == [str(pid).encode()]
        except FileNotFoundError:
            return False
    return ready


def rebuilding(root: Path) -> Callable[[int], bool]:
    return lambda pid: (root / ".session-archive" / f"catalog.sqlite.rebuild-{pid}").exists()


def nothing_left(root: Path) -> None:
    left = leftovers(root)
    for d, _dirs, files in os.walk(root):
        left += [os.path.join(d, f) for f in files if ".rebuild-" in f]
    assert not left, left


def _points(rng: random.Random, n: int, lo: float, hi: float) -> list[tuple[float, int, bool]]:
    """n (delay, signal, to the group?) points: mostly SIGTERM to the PID alone."""
    # Ascending: each point runs on the work the earlier ones left, so the earliest goes
    # first (a fast machine may finish a command before a late point).
    delays = sorted(rng.uniform(lo, hi) for _ in range(n))
    return [(d, signal.SIGINT if i == n - 1 else signal.SIGTERM, i % 2 == 1)
            for i, d in enumerate(delays)]


def _tree(root: Path, n: int, seed: int, big: bool = True) -> None:
    make_tree(str(root), n, seed=seed)
    if big:
        # One session with a 48 MB member: some points land inside it (write, verify).
        d = root / "project00" / "script0_out" / "FINISHED_SUCCESS"
        s = d / "2025Y-01M-02D-03h04m05s_BIGx-main"
        (s / "data").mkdir(parents=True)
        (s / "data" / "blob.bin").write_bytes(os.urandom(48 << 20))
        old = time.time() - 86400 * 30
        for p in (s / "data" / "blob.bin", s / "data", s):
            os.utime(p, (old, old))


def _hits(tmp_path: Path, root: Path, before: dict, args: list[str], rng: random.Random,
          n: int = 3, lo: float = 0.0, hi: float = 0.6, lost_ok: bool = False,
          ready: Callable[[int], bool] | None = None) -> int:
    hit = 0
    for delay, sig, group in _points(rng, n, lo, hi):
        if interrupt_at(tmp_path, args, delay, sig, group, ready):
            hit += 1
        nothing_left(root)
        if not lost_ok:
            rep = check(root, before)
            assert rep.ok, (args, SEED, rep)
    return hit


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sweep_stops_on_sigterm_within_2s_losing_nothing(tmp_path: Path, workers: str) -> None:
    """In-process (-j 1: the signal lands in the batch itself) and on the pool (-j 2: the
    parent forwards it to its workers); the run is then finished by a clean sweep."""
    rng = random.Random(SEED * 10 + int(workers))
    root = tmp_path / "tree"
    _tree(root, 200, SEED + int(workers))
    before = snapshot_sessions(root)
    assert _hits(tmp_path, root, before, ["sweep", str(root), "--execute", "-q", "-j", workers,
                                          "--batch-size", "16"], rng, ready=holds_lock(root)) >= 1, SEED
    r = subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(root), "--execute",
                        "-q", "-j", workers], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    rep = check(root, before)
    assert rep.ok and rep.both == 0 and not rep.leftovers, rep


@pytest.mark.timeout(180)
def test_catalog_verify_extract_and_prune_stop_on_sigterm_within_2s(tmp_path: Path) -> None:
    rng = random.Random(SEED * 10 + 3)
    root = tmp_path / "tree"
    _tree(root, 300, SEED)
    before = snapshot_sessions(root)
    r = subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(root), "--execute",
                        "-q"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()

    # catalog --rebuild: no rebuild-PID file left.
    assert _hits(tmp_path, root, before, ["catalog", str(root), "--rebuild"], rng,
                 ready=rebuilding(root)) >= 1, SEED
    # verify every archive: read-only, stops between and inside archives.
    archives = sorted(str(p) for st in FINISHED_STATES for p in root.rglob(f"{st}/*.tar.zst"))
    assert _hits(tmp_path, root, before, ["verify", "-q", *archives], rng, lo=0.0,
                 hi=0.3) >= 1, SEED
    # extract --tree: temp dirs removed, each session a dir or its archive.
    assert _hits(tmp_path, root, before, ["extract", str(root), "--tree", "--execute", "-q"],
                 rng, ready=holds_lock(root)) >= 1, SEED
    # prune (deletes by design: only the exit, the time and leftovers are checked).
    _hits(tmp_path, root, before, ["prune", str(root), "--older-than", "1d", "--keep-last",
                                   "0", "--include-latest", "--execute", "-q"], rng,
          hi=0.3, lost_ok=True, ready=holds_lock(root))


@pytest.mark.timeout(240)
def test_pack_sweep_and_repack_stop_on_sigterm_within_2s(tmp_path: Path) -> None:
    rng = random.Random(SEED * 10 + 7)
    root = tmp_path / "tree"
    _tree(root, 200, SEED + 1, big=False)
    before = snapshot_sessions(root)
    assert _hits(tmp_path, root, before, ["sweep", str(root), "--execute", "-q", "--pack", "5",
                                          "-j", "2"], rng, hi=0.5, ready=holds_lock(root)) >= 1, SEED
    r = subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(root), "--execute",
                        "-q", "--pack", "5"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    assert check(root, before).ok
    # repack --merge all: old packs stay until the merged one is linked and catalogued.
    hit = _hits(tmp_path, root, before, ["repack", str(root), "--merge", "all", "--execute",
                                         "-q"], rng, hi=0.4, ready=holds_lock(root))
    assert hit >= 1, SEED
    rep = check(root, before)
    assert rep.ok, rep


def _many_member_archive(path: Path, members: int) -> None:
    """A session archive of *members* empty files, written as GNU tar would (fast)."""
    import tarfile

    import zstandard

    top = path.name.removesuffix(".tar.zst")
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo(top)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tf.addfile(ti)
        for i in range(members):
            ti = tarfile.TarInfo(f"{top}/f{i:07d}")
            ti.mode, ti.mtime = 0o644, 1_700_000_000
            tf.addfile(ti)


@pytest.mark.timeout(120)
def test_flat_extract_of_a_many_member_archive_stops_on_sigterm_within_2s(
        tmp_path: Path) -> None:
    """The issue's 10M-entry archive ignored SIGTERM for 4m43s; 60k entries here take
    several seconds to extract, and each point must end within 2 s with no temp dir."""
    d = tmp_path / "FINISHED_SUCCESS"
    d.mkdir()
    _many_member_archive(d / "2025Y-01M-02D-03h04m05s_MANY-main.tar.zst", 60_000)
    rng = random.Random(SEED * 10 + 9)
    hit = 0
    for delay, sig, group in _points(rng, 3, 0.3, 1.5):
        # In-process (-j 1), the case. On the pool a worker still deleting a huge
        # temp dir 1 s after the signal is killed, and the next restore removes what it
        # left (RELIABILITY.md, "Signals"): not "nothing behind" within 2 s under load.
        hit += interrupt_at(tmp_path, ["extract", str(d), "--execute", "-q", "-j", "1"],
                            delay, sig, group)
        nothing_left(tmp_path)
        assert (d / "2025Y-01M-02D-03h04m05s_MANY-main.tar.zst").is_file()
        if (d / "2025Y-01M-02D-03h04m05s_MANY-main").exists():
            break  # finished before a point: nothing more to interrupt
    assert hit >= 1, SEED
