"""Concurrency: two sweeps on one root, files written inside a session during a sweep, and
a decorator's own close (archive_one) racing a sweep on the same FINISHED dir.

scitex_session's close/archive_format was not importable when this was written: the
decorator's close is simulated with ``archive_tool.engine.single.archive_one(dir, "tar.gz")``
from another process, which is what it calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive_tool.demo import make_tree
from archive_tool.engine import single
from archive_tool.sweep.sessions import sweep
from tests.conftest import SID, make_session
from tests.reliability import assert_all_archived_once, check, finished, snapshot_sessions
from tests.test_reliability_crash import _reap_group, _start, _wait_for_lock


@pytest.mark.timeout(90)
def test_two_sweeps_on_one_root_one_works_the_other_exits_75(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root, 300, seed=3)
    before = snapshot_sessions(root)
    a = _start(root, "tar.zst", 1, False, 8)
    assert _wait_for_lock(root, a), "first sweep ended before taking its lock"
    b = subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(root), "--execute", "-q"],
                       capture_output=True, timeout=60)
    a_out, a_err = a.communicate(timeout=60)
    _reap_group(a.pid)
    assert b.returncode == 75, b.stderr.decode()
    assert b.stderr.decode().count("\n") == 1 and b.stderr.decode().startswith("Error: another sweep")
    assert a.returncode == 0, a_err.decode()
    assert_all_archived_once(root, before)


_WRITER = r"""
import os, select, sys, time
d, stop = sys.argv[1], sys.argv[2]
ok = 0
i = 0

def append():
    global i, ok
    i += 1
    try:
        with open(os.path.join(d, "logs", "stdout.log"), "a") as f:
            f.write(f"late line {i}\n")
        ok += 1
        if i % 50 == 0:
            with open(os.path.join(d, f"late-{i}.txt"), "w") as f:
                f.write("new file\n")
    except OSError:
        pass

while not os.path.exists(stop):
    # A line on stdin asks for one append now, acknowledged on stdout: the test uses it
    # to put a write inside the archiving window for sure, not by luck of the scheduler.
    if select.select([sys.stdin], [], [], 0.0005)[0]:
        if not sys.stdin.readline():
            break
        append()
        print("ack", flush=True)
    else:
        append()
print(ok)
"""


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.timeout(60)
def test_session_written_during_the_sweep_is_not_deleted(tmp_path: Path, batch: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    make_tree(root, 120, seed=5)
    fin = root / "project00" / "script0_out" / "FINISHED_SUCCESS"
    busy = make_session(fin, f"{SID[:-4]}BUSY-main", extra=False)
    stop = tmp_path / "stop"
    w = subprocess.Popen([sys.executable, "-c", _WRITER, str(busy), str(stop)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    real_prepare = single.prepare
    overlapped = []

    def prepare_then_write(src, *a, **k):
        # workers=1 runs batches in this process: right after the busy session was read
        # and its archive written, and before its commit re-checks it, the writer appends.
        # (When the read itself saw the writer and raised, the window was hit anyway.)
        try:
            return real_prepare(src, *a, **k)
        finally:
            if os.fspath(src) == str(busy):
                w.stdin.write(b"w\n")
                w.stdin.flush()
                overlapped.append(w.stdout.readline())

    monkeypatch.setattr(single, "prepare", prepare_then_write)
    try:
        while not (busy / "logs" / "stdout.log").read_text().count("late line"):
            time.sleep(0.001)
        s = sweep(root, dry_run=False, workers=1, batch_size=batch)
    finally:
        stop.touch()
        written = int(w.communicate(timeout=30)[0])
    assert overlapped == [b"ack\n"], "the writer did not write inside the archiving window"
    assert busy.is_dir(), "a session being written was deleted"
    lines = (busy / "logs" / "stdout.log").read_text().count("late line")
    assert lines == written, f"{written} lines written, {lines} kept"
    assert not any(busy.parent.glob(f"{busy.name}.tar*")), "stale archive of a changed session"
    assert [f["path"] for f in s["failures"]] == [str(busy)], s["failures"]
    assert any(w in s["failures"][0]["reason"] for w in ("changed", "appeared", "grew", "shrank")), s


_DECORATOR = r"""
import os, sys
from archive_tool.engine.single import archive_one
done = 0
for d in sys.argv[2:]:
    try:
        archive_one(d, sys.argv[1])
        done += 1
    except Exception:
        pass
print(done)
"""


@pytest.mark.parametrize("decorator_format", ["tar.gz", "tar.zst"])
@pytest.mark.timeout(120)
def test_decorator_close_racing_a_sweep_archives_every_session_exactly_once(
    tmp_path: Path, decorator_format: str
) -> None:
    trials, checked = 0, 0
    for k in range(4):
        root = tmp_path / f"t{k}"
        make_tree(root, 80, seed=20 + k)
        before = snapshot_sessions(root)
        dirs = sorted(str(root / r) for r in finished(before))
        if k % 2:
            dirs.reverse()  # meet the sweep head-on, then run alongside it
        sw = _start(root, "tar.zst", 1 + k % 2, False, 4)
        deco = subprocess.Popen([sys.executable, "-c", _DECORATOR, decorator_format, *dirs],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        d_out, d_err = deco.communicate(timeout=90)
        _s_out, s_err = sw.communicate(timeout=90)
        _reap_group(sw.pid)
        assert deco.returncode == 0, d_err.decode()
        rep = check(root, before)
        trials += 1
        checked += rep.checked
        assert rep.ok, rep  # no loss, no incomplete archive, no session archived twice
        assert rep.both == 0 and not rep.leftovers, rep
        # Whatever either side reported, a later sweep finds nothing left to do.
        s = sweep(root, dry_run=False, workers=1)
        assert s["failed"] == 0 and s["archived"] == 0 and s["resumed"] == 0, s
        assert_all_archived_once(root, before)
    assert trials == 4 and checked
