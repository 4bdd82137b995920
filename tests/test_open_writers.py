"""Issue 23 item 8 ("k1"): a process that still holds a finished session's log open and
writes to it after the sweep must lose no line. The sweep leaves any session a process on
this host has open for writing (holds.py: one /proc/*/fd pass), and by default any session
written within the quiet period (10 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from archive_tool.guard.holds import DEFAULT_QUIET_PERIOD, QUIET_PERIOD_ENV, open_for_writing
from archive_tool.sweep.sessions import sweep
from tests.conftest import SID, make_session, run_cli

OLD = time.time() - 3 * 86400


def _age(d: Path, when: float = OLD) -> None:
    for p in [d, *d.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def _sessions(root: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        d = make_session(root / "FINISHED_SUCCESS", f"{SID[:-4]}k{i:03d}-main", extra=False)
        _age(d)
        out.append(d)
    return out


WRITER = textwrap.dedent("""
    import sys, time
    logs = [open(p, "a", buffering=1) for p in sys.argv[2:]]
    n = int(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()          # the sweep runs now
    for f in logs:                # ... and the job goes on writing afterwards
        for i in range(n):
            f.write(f"late line {i}\\n")
        f.close()
""")


def test_k1_a_writer_holding_finished_sessions_logs_loses_no_line(tmp_path: Path) -> None:
    """30 finished sessions whose stdout.log a live process holds open for appending; the
    sweep (quiet period off, so only the /proc check protects them) runs, then the
    process writes 20 more lines to each. Every line is there, every session skipped
    with the writer's PID; once the writer is gone the next sweep archives them all."""
    root = tmp_path / "runs"
    sessions = _sessions(root, 30)
    logs = [str(d / "logs" / "stdout.log") for d in sessions]
    before = {p: Path(p).read_text() for p in logs}
    with subprocess.Popen([sys.executable, "-c", WRITER, "20", *logs], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as w:
        assert w.stdout.readline().strip() == "ready"
        r = run_cli("sweep", root, "--execute", "--json", "--quiet-period", "0", "-j", "2")
        w.stdin.write("go\n")
        w.stdin.flush()
        assert w.wait(timeout=30) == 0
    assert r.returncode == 0, r.stderr.decode()
    s = json.loads(r.stdout)
    assert s["archived"] == 0 and s["failed"] == 0, s
    assert s["skipped_reasons"] == {f"open for writing by PID {w.pid}": 30}, s
    lost = 0
    for p in logs:
        text = Path(p).read_text()
        want = before[p] + "".join(f"late line {i}\n" for i in range(20))
        lost += (want != text) * 20
    assert lost == 0
    # The writer is gone: the sessions go now, with every late line in the archive.
    s2 = sweep(root, dry_run=False, workers=1, quiet_period=0)
    assert s2["archived"] == 30 and s2["failed"] == 0, s2
    arch = str(sessions[0]) + ".tar.zst"
    out = subprocess.run(["tar", "--zstd", "-xOf", arch, f"{sessions[0].name}/logs/stdout.log"],
                         capture_output=True, check=True).stdout.decode()
    assert out.endswith("late line 19\n")


def test_a_file_open_only_for_reading_does_not_hold_a_session(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    (d,) = _sessions(root, 1)
    with subprocess.Popen([sys.executable, "-c",
                           "import sys; f = open(sys.argv[1]); print('ready', flush=True);"
                           " sys.stdin.readline()", str(d / "logs" / "stdout.log")],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as reader:
        assert reader.stdout.readline().strip() == "ready"
        s = sweep(root, dry_run=False, workers=1, quiet_period=0)
        reader.kill()
    assert s["archived"] == 1, s


def test_the_proc_pass_finds_a_write_fd_of_another_process_by_inode(tmp_path: Path) -> None:
    """Matched by (dev, inode), not by path: the file is renamed after the writer opened
    it, as RUNNING/ -> FINISHED_*/ renames a session under a live process."""
    f = tmp_path / "log"
    f.write_text("x\n")
    with subprocess.Popen([sys.executable, "-c",
                           "import sys; f = open(sys.argv[1], 'r+'); print('ready', flush=True);"
                           " sys.stdin.readline()", str(f)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as w:
        assert w.stdout.readline().strip() == "ready"
        f.rename(tmp_path / "renamed")
        st = os.stat(tmp_path / "renamed")
        t0 = time.perf_counter()
        found = open_for_writing()
        took = time.perf_counter() - t0
        w.kill()
    assert found.get((st.st_dev, st.st_ino)) == w.pid
    assert took < 2.0, took  # one pass over every fd on the host


def test_the_default_quiet_period_leaves_a_session_written_minutes_ago(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers on other nodes are invisible in /proc: by default a session whose newest
    file is younger than 10 minutes is left; older ones go; --quiet-period 0 turns it off."""
    monkeypatch.delenv(QUIET_PERIOD_ENV, raising=False)
    assert DEFAULT_QUIET_PERIOD == 600
    root = tmp_path / "runs"
    old, fresh = _sessions(root, 2)
    _age(fresh, time.time() - 300)  # finished 5 minutes ago
    os.utime(fresh / "logs" / "stdout.log", (time.time() - 60, time.time() - 60))
    env = {k: v for k, v in os.environ.items() if k != QUIET_PERIOD_ENV}
    r = run_cli("sweep", root, "--execute", "--json", "-j", "1", env=env)
    assert r.returncode == 0, r.stderr.decode()
    s = json.loads(r.stdout)
    assert s["archived"] == 1, s
    assert s["skipped_reasons"] == {"written within the quiet period (10m)": 1}, s
    assert fresh.is_dir() and not old.exists()
    # The same through --pack.
    r = run_cli("sweep", root, "--execute", "--json", "--pack", "daily", "-j", "1", env=env)
    assert json.loads(r.stdout)["skipped_reasons"] == {
        "written within the quiet period (10m)": 1}, r.stdout
    assert fresh.is_dir()
    r = run_cli("sweep", root, "--execute", "--json", "--quiet-period", "0", "-j", "1", env=env)
    assert json.loads(r.stdout)["archived"] == 1, r.stdout
    assert not fresh.exists()


def test_a_malformed_quiet_period_is_a_usage_error(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _sessions(root, 1)
    r = run_cli("sweep", root, "--execute", "--quiet-period", "soon")
    assert r.returncode == 2 and b"quiet period" in r.stderr, r.stderr
    r = run_cli("sweep", root, "--execute", env={**os.environ, QUIET_PERIOD_ENV: "-5m"})
    assert r.returncode == 2 and b"Error:" in r.stderr and b"Traceback" not in r.stderr, r.stderr
