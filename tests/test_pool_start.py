"""How the local pool starts its workers (issue 24): forked from a single-threaded sweep,
so a worker imports nothing again (on Lustre/GPFS/NFS each import is a few round trips to
the metadata server); what a forked worker inherits that it must not keep (the root lock,
a life beyond its sweep); and the forkserver whenever another thread runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from archive_tool.sweep import executors
from tests.conftest import HAS_FD
from tests.mdshim import HAS_SHIM, md_calls
from tests.mdshim import bench_env as _env


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_single_threaded_sweep_forks_its_workers_and_a_threaded_one_does_not() -> None:
    # The test process may run helper threads of its own (pytest plugins): look from a
    # fresh interpreter, with and without one more thread.
    code = textwrap.dedent("""
        import sys, threading, time
        from archive_tool.sweep import executors
        first = executors.start_method()
        t = threading.Thread(target=time.sleep, args=(1,))
        t.start()
        print(first, executors.start_method())
        t.join()
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["fork", "forkserver"]


def test_another_thread_running_means_a_forkserver() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert executors.start_method() == "forkserver"
    finally:
        stop.set()
        t.join()


_HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from archive_tool.guard.lock import RootLock
    from archive_tool.sweep import executors

    def fds(_):
        out = []
        for n in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink(f"/proc/self/fd/{n}"))
            except OSError:
                pass
        return out

    def nap(_):
        time.sleep(60)

    root = sys.argv[1]
    with RootLock(root):
        assert executors.start_method() == "fork"
        ex = executors.local_executor(2)
        seen = ex.submit(fds, 0).result()
        print(json.dumps({"fds": seen, "workers": [p.pid for p in ex._processes.values()]}),
              flush=True)
        if sys.argv[2] == "die":
            ex.submit(nap, 0)
            ex.submit(nap, 0)
            time.sleep(0.3)
            os.kill(os.getpid(), 9)
        ex.shutdown()
""")


def test_a_forked_worker_does_not_keep_the_root_lock(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", _HOLDER, str(tmp_path), "keep"], env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)["fds"]
    assert not [f for f in seen if f.endswith(".session-archive.lock")], seen


@pytest.mark.timeout(60)
def test_forked_workers_die_with_a_killed_sweep_and_free_the_root(tmp_path: Path) -> None:
    """An orphaned pool worker waits on its queue forever; killed with its sweep (kill -9,
    OOM), it leaves the root free for the next run at once."""
    with subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), "die"], env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        first = p.stdout.readline()
        _, err = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, err
    workers = json.loads(first)["workers"]
    assert len(workers) == 2
    end = time.monotonic() + 5
    while any(_alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.05)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, "pool workers outlived their sweep"
    from archive_tool.guard.lock import RootLock
    with RootLock(str(tmp_path)):
        pass  # not LockBusy


@pytest.mark.skipif(not (HAS_SHIM and HAS_FD), reason="needs gcc, ../shared/tools/md_latency.c "
                                                       "and fd")
def test_two_workers_cost_no_start_up_calls_over_one(tmp_path: Path) -> None:
    """-j 2 against -j 1 on the same tree, counted with the shim: a forkserver pool paid
    ~3,600 metadata calls more (two interpreters and two workers' imports); forked
    workers pay a few dozen (their own batch's parent dirs)."""
    subprocess.run([sys.executable, "-m", "archive_tool", "demo-tree", str(tmp_path / "p"),
                    "-n", "20"], check=True, env=_env(), stdout=subprocess.DEVNULL)
    totals = {}
    for j in (1, 2):
        root = tmp_path / f"r{j}"
        shutil.copytree(tmp_path / "p", root, symlinks=True)
        res = md_calls.run_counted([sys.executable, "-m", "archive_tool", "sweep", str(root),
                                    "--execute", "-q", "-j", str(j), "--batch-size", "4"],
                                   env=_env())
        assert res["rc"] == 0, res
        totals[j] = sum(res["counts"].values())
    # The /proc pass of the writers' check varies with what else runs on the host.
    assert totals[2] - totals[1] < 400, totals


_IDLE_KILL = textwrap.dedent("""
    import os, signal, sys, threading, time
    from archive_tool.sweep.executors import run_batches

    def task(batch):
        if batch == 0:
            time.sleep(2)  # one worker busy ...
        return [batch]

    def kill_the_idle_one():
        # ... the other one idle, waiting for a task: it holds the task queue's read
        # lock while it waits (multiprocessing.Queue.get), so the busy one, once done,
        # waits on that lock.
        me = os.getpid()
        for _ in range(200):
            kids = [p for p in os.listdir("/proc") if p.isdigit()
                    and open(f"/proc/{p}/stat").read().split(") ")[1].split()[1] == str(me)]
            idle = [p for p in kids if open(f"/proc/{p}/wchan").read() == "anon_pipe_read"]
            if len(kids) == 2 and len(idle) == 1:
                os.kill(int(idle[0]), signal.SIGKILL)
                print("killed", flush=True)
                return
            time.sleep(0.02)

    started = []
    def before(batch):
        if batch == 1 and not started:  # the pool's workers exist from the first submit
            started.append(threading.Thread(target=kill_the_idle_one, daemon=True))
            started[0].start()

    got = []
    out = run_batches([0, 1], task, (), absorb=got.extend,
                      lost=lambda b, e: [("lost", b)], workers=2, before_submit=before)
    print("stopped:", out.stopped is not None, sorted(map(str, got)), flush=True)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/wchan"), reason="needs /proc/PID/wchan")
def test_a_worker_killed_while_idle_does_not_leave_the_pool_joining_forever() -> None:
    """concurrent.futures fails the batches of a broken pool, SIGTERMs the other workers
    and joins them; the one that waits on the task queue's lock the dead worker held
    never takes that SIGTERM (between tasks the backstop leaves multiprocessing's code
    alone): run_batches kills what is still alive interrupt.KILL_AFTER later."""
    r = subprocess.run([sys.executable, "-c", _IDLE_KILL], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert r.returncode == 0, r.stderr
    assert "killed" in r.stdout, r.stdout + r.stderr  # the scenario happened
    assert "stopped: True" in r.stdout, r.stdout
