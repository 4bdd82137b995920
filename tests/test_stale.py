"""Runs that die: heartbeat + identity recorded by real decorated scripts, stale RUNNING runs
finalized into FINISHED_ERROR/ and archived, live ones never touched. Races are made
deterministic with ``archive_tool.stale.finalize._hook`` and /proc/locks, not with sleeps."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
import zstandard

from archive_tool.errors import BadArgument
from archive_tool.guard import liveness as liveness_mod
from archive_tool.stale import finalize as stale
from archive_tool.stale import staleness
from tests.conftest import run_cli
from tests.session_scripts.helpers import load_config, run_script, write_script

WAITING = """
import os, pathlib, sys, time
import scitex_session as stx

@stx.session({kw})
def main():
    print("started", os.getpid(), flush=True)
    go = pathlib.Path(os.environ["GO_FILE"])
    while not go.exists():
        time.sleep(0.01)
    return 0

if __name__ == "__main__":
    sys.exit(main())
"""

HOUR = 3600.0


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "SCITEX_SESSION_OUT_DIR" and not k.startswith("SLURM_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", GO_FILE=str(tmp_path / "go"), **extra)
    return env


class Run:
    """A decorated script running in its own process, waiting for ``go``."""

    def __init__(self, tmp_path: Path, kw: str = "heartbeat_interval=3600", **env: str) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_path
        self.script = write_script(tmp_path, WAITING.format(kw=kw))
        self.out = tmp_path / "exp_out"
        self.proc = subprocess.Popen([sys.executable, str(self.script)], cwd=tmp_path,
                                     env=_env(tmp_path, **env), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.dir = self._wait_for_dir(heartbeat="SCITEX_SESSION_HEARTBEAT" not in env)

    def _wait_for_dir(self, heartbeat: bool) -> Path:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = list((self.out / "RUNNING").glob("*")) if (self.out / "RUNNING").is_dir() else []
            # stdout.log holding "started" means start() is done and main() is waiting.
            if runs and "started" in _read(runs[0] / "logs" / "stdout.log"):
                assert not heartbeat or (runs[0] / ".heartbeat").is_file()
                return runs[0]
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.01)
        raise AssertionError("the run never started")

    def go(self) -> None:
        (self.tmp / "go").touch()

    def finish(self) -> subprocess.CompletedProcess[str]:
        self.go()
        out, err = self.proc.communicate(timeout=60)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)  # reaped: no zombie keeps the PID alive

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for r in started:
        r.close()


@pytest.fixture(autouse=True)
def _no_hook() -> Iterator[None]:
    yield
    stale._hook = None


def age(path: Path, seconds: float) -> None:
    """Make *path* and everything in it look *seconds* old (as if time had passed)."""
    t = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (t, t), follow_symlinks=False)
    os.utime(path, (t, t))


def tree(out: Path) -> dict[str, list[str]]:
    # .session-archive/ holds the sweep's run manifests (runlog.py), not sessions.
    return {d.name: sorted(c.name for c in d.iterdir()) for d in sorted(out.iterdir())
            if d.is_dir() and any(d.iterdir()) and d.name != ".session-archive"}


def members(archive: Path) -> dict[str, bytes]:
    """Read independently of the engine."""
    with open(archive, "rb") as raw:
        f = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=f, mode="r|") as tf:
            return {m.name: (tf.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                    for m in tf}


def _summary(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ------------------------------------------------------------------ what a run records


def test_run_records_host_pid_start_time_and_slurm_job_and_removes_heartbeat_at_close(
        tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        import os, sys, json, pathlib
        import scitex_session as stx

        @stx.session(heartbeat_interval=0.05)
        def main():
            hb = pathlib.Path(CONFIG["SDIR_RUN"]) / ".heartbeat"
            print("IDENT", hb.read_text().strip(), flush=True)
            first = hb.stat().st_mtime_ns
            while hb.stat().st_mtime_ns == first:  # the thread really beats
                pass
            print("BEAT", flush=True)
            return 3

        if __name__ == "__main__":
            sys.exit(main())
    """)
    r = run_script(script, env={"SLURM_JOB_ID": "777", "SLURM_ARRAY_JOB_ID": "770",
                                "SLURM_ARRAY_TASK_ID": "7"})
    assert r.returncode == 3, r.stderr  # the run's own status, heartbeat or not
    assert "BEAT" in r.stdout
    ident = json.loads(r.stdout.split("IDENT ", 1)[1].splitlines()[0])
    sess = next((tmp_path / "exp_out" / "FINISHED_ERROR").iterdir())
    liveness = load_config(sess)["LIVENESS"]
    assert liveness == ident
    assert liveness["HOST"] == os.uname().nodename
    assert isinstance(liveness["PID"], int) and isinstance(liveness["PROC_START_TICKS"], int)
    assert liveness["BOOT_ID"] == liveness_mod.boot_id()
    assert (liveness["SLURM_JOB_ID"], liveness["SLURM_ARRAY_JOB_ID"],
            liveness["SLURM_ARRAY_TASK_ID"]) == ("777", "770", "7")
    assert liveness["HEARTBEAT_INTERVAL"] == 0.05
    assert not (sess / ".heartbeat").exists()  # liveness is a RUNNING thing
    assert "Traceback" not in r.stderr


def test_heartbeat_can_be_disabled_and_a_bad_env_value_never_fails_the_run(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        import sys, pathlib
        import scitex_session as stx

        @stx.session
        def main():
            print("HB", (pathlib.Path(CONFIG["SDIR_RUN"]) / ".heartbeat").exists())

        if __name__ == "__main__":
            sys.exit(main())
    """)
    off = run_script(script, env={"SCITEX_SESSION_HEARTBEAT": "0"})
    assert off.returncode == 0 and "HB False" in off.stdout, off.stderr
    bad = run_script(script, env={"SCITEX_SESSION_HEARTBEAT": "soon"})
    assert bad.returncode == 0 and "HB True" in bad.stdout, bad.stderr
    assert "ignoring SCITEX_SESSION_HEARTBEAT='soon'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_proc_stat_start_time_tells_a_reused_pid_from_the_original() -> None:
    state, ticks = liveness_mod.proc_stat()  # type: ignore[misc]
    me = {"PID": os.getpid(), "PROC_START_TICKS": ticks, "BOOT_ID": liveness_mod.boot_id()}
    assert state == "R" and staleness.process_gone(me) is None
    assert "another process" in staleness.process_gone({**me, "PROC_START_TICKS": ticks - 1})
    assert "rebooted" in staleness.process_gone({**me, "BOOT_ID": "not-this-boot"})
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    assert "is gone" in staleness.process_gone({"PID": int(p.stdout), "PROC_START_TICKS": 1})


# ------------------------------------------------------------------------ finalizing


def test_run_killed_with_sigkill_is_finalized_and_archived(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, "heartbeat_interval=0.5")
    runs.append(run)
    run.kill()
    age(run.dir, 10)  # threshold 10 x 0.5 s: the heartbeat stopped 10 s ago
    root = tmp_path / "exp_out"

    dry = run_cli("sweep", root, "--finalize-stale")
    assert dry.returncode == 0, dry.stderr
    assert f"would finalize: {run.dir}" in dry.stdout.decode()
    assert "PID" in dry.stdout.decode() and "is gone" in dry.stdout.decode()
    assert run.dir.is_dir()  # a dry run moves nothing

    s = _summary(run_cli("sweep", root, "--finalize-stale", "--execute", "--json", "-q"))
    assert s["stale"]["finalized"] == 1 and s["archived"] == 1 and s["failed"] == 0
    assert tree(root) == {"FINISHED_ERROR": [f"{run.dir.name}.tar.zst"]}
    m = members(root / "FINISHED_ERROR" / f"{run.dir.name}.tar.zst")
    marker = json.loads(m[f"{run.dir.name}/{stale.MARKER_NAME}"])
    assert "is gone" in marker["reason"] and marker["identity"]["PID"] == run.proc.pid
    assert marker["finalized_at"].startswith(time.strftime("%Y-", time.gmtime()))
    assert b"started" in m[f"{run.dir.name}/logs/stdout.log"]


def test_live_slow_run_is_never_touched_even_with_an_old_heartbeat(
        tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path)
    runs.append(run)
    age(run.dir / ".heartbeat", 10 * HOUR)  # a hung heartbeat thread: the PID still runs
    root = tmp_path / "exp_out"
    before = sorted(p.name for p in run.dir.rglob("*"))
    for extra in ([], ["--stale-after", "0s"]):
        s = _summary(run_cli("sweep", root, "--finalize-stale", "--execute", "--json", *extra))
        assert (s["stale"]["live"], s["stale"]["stale"], s["stale"]["finalized"]) == (1, 0, 0)
    assert sorted(p.name for p in run.dir.rglob("*")) == before
    done = run.finish()
    assert done.returncode == 0, done.stderr
    assert tree(root) == {"FINISHED_SUCCESS": [run.dir.name]}
    assert not (root / "FINISHED_SUCCESS" / run.dir.name / stale.MARKER_NAME).exists()


def _claim_other_host(run: Run) -> None:
    """What a run on another node looks like on a shared filesystem: its identity says so."""
    hb = run.dir / ".heartbeat"
    ident = json.loads(hb.read_text())
    ident["HOST"] = "other-node-7"
    tmp = run.dir / ".hb.tmp"
    tmp.write_text(json.dumps(ident))
    os.replace(tmp, hb)


def test_run_on_another_host_with_a_fresh_heartbeat_is_left_alone(
        tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path)
    runs.append(run)
    _claim_other_host(run)
    root = tmp_path / "exp_out"
    s = _summary(run_cli("sweep", root, "--finalize-stale", "--execute", "--json"))
    assert (s["stale"]["live"], s["stale"]["finalized"]) == (1, 0)
    assert run.dir.is_dir()
    # Only the heartbeat speaks for another host: once it is old, the run is stale there.
    v = staleness.classify(run.dir, now=time.time() + 11 * HOUR)
    assert v.state == stale.STALE and "other-node-7" in v.reason
    assert run.finish().returncode == 0


def test_heartbeat_moving_during_the_check_aborts_the_finalize(
        tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, "heartbeat_interval=0.5")
    runs.append(run)
    run.kill()
    age(run.dir, 10)
    seen: list[str] = []

    def beat(stage: str, path: str) -> None:
        seen.append(stage)
        if stage == "locked":
            os.utime(Path(path) / ".heartbeat")  # a beat lands between judging and moving

    stale._hook = beat
    c = stale.finalize_stale(str(tmp_path / "exp_out"), dry_run=False)
    assert seen == ["classified", "locked"]
    assert (c["stale"], c["finalized"], c["skipped"]) == (1, 0, 1)
    assert c["runs"][0]["action"] == "skipped: heartbeat moved during the check"
    assert run.dir.is_dir() and not (run.dir / stale.MARKER_NAME).exists()
    assert not (tmp_path / "exp_out" / "FINISHED_ERROR").exists()


def _flock_waiter_on(path: Path) -> bool:
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any("->" in line and "FLOCK" in line and line.split()[-3].endswith(f":{ino}")
                   for line in f)


def _wait(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_run_closing_while_finalize_holds_its_lock_ends_as_one_finished_session(
        tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path)
    runs.append(run)
    _claim_other_host(run)  # judged by the heartbeat alone: stale with --stale-after 0

    def release_the_run(stage: str, path: str) -> None:
        if stage == "locked":
            run.go()
            # Deterministic: proceed only once the run's close is blocked on our flock.
            _wait(lambda: _flock_waiter_on(run.dir), "close never waited for the lock")

    stale._hook = release_the_run
    c = stale.finalize_stale(str(run.out), dry_run=False, stale_after=0)
    assert c["finalized"] == 1, c
    done = run.finish()
    assert done.returncode == 0, done.stderr
    assert "finalized as stale while it was still running" in done.stderr
    assert tree(run.out) == {"FINISHED_SUCCESS": [run.dir.name]}  # exactly one session
    sess = run.out / "FINISHED_SUCCESS" / run.dir.name
    assert not (sess / stale.MARKER_NAME).exists() and not (sess / ".heartbeat").exists()
    cfg = yaml.safe_load((sess / "CONFIGS" / "CONFIG.yaml").read_text())
    assert cfg["SDIR_RUN"] == str(sess) and cfg["EXIT_STATUS"] == 0


def test_run_finishing_before_finalize_locks_it_is_skipped(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path)
    runs.append(run)
    _claim_other_host(run)

    def finish_first(stage: str, _path: str) -> None:
        if stage == "classified":
            assert run.finish().returncode == 0

    stale._hook = finish_first
    c = stale.finalize_stale(str(run.out), dry_run=False, stale_after=0)
    assert (c["finalized"], c["skipped"], c["failed"]) == (0, 1, 0)
    assert c["runs"][0]["action"] == "skipped: finished meanwhile"
    assert tree(run.out) == {"FINISHED_SUCCESS": [run.dir.name]}


def test_run_without_heartbeat_is_finalized_only_with_stale_after(
        tmp_path: Path, runs: list[Run]) -> None:
    # The published package writes no heartbeat; a disabled one looks the same.
    run = Run(tmp_path, "", SCITEX_SESSION_HEARTBEAT="0")
    runs.append(run)
    run.kill()
    assert not (run.dir / ".heartbeat").exists()
    age(run.dir, 2 * HOUR)
    root = tmp_path / "exp_out"
    s = _summary(run_cli("sweep", root, "--finalize-stale", "--execute", "--json"))
    assert (s["stale"]["no_heartbeat"], s["stale"]["finalized"]) == (1, 0)
    s = _summary(run_cli("sweep", root, "--finalize-stale", "--stale-after", "3h",
                         "--execute", "--json"))
    assert (s["stale"]["live"], s["stale"]["finalized"]) == (1, 0)  # wrote 2 h ago
    s = _summary(run_cli("sweep", root, "--finalize-stale", "--stale-after", "1h",
                         "--execute", "--json"))
    assert (s["stale"]["finalized"], s["archived"]) == (1, 1)
    assert tree(root) == {"FINISHED_ERROR": [f"{run.dir.name}.tar.zst"]}


def test_finalize_never_replaces_an_existing_finished_error_entry(
        tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, "heartbeat_interval=0.5")
    runs.append(run)
    run.kill()
    age(run.dir, 10)
    (run.out / "FINISHED_ERROR" / run.dir.name).mkdir(parents=True)  # empty: rename would replace it
    r = run_cli("sweep", run.out, "--finalize-stale", "--execute")
    assert r.returncode == 1
    assert b"cannot finalize" in r.stderr and b"Traceback" not in r.stderr
    assert run.dir.is_dir() and not (run.dir / stale.MARKER_NAME).exists()


def test_stale_after_needs_finalize_stale_and_a_duration(tmp_path: Path) -> None:
    r = run_cli("sweep", tmp_path, "--stale-after", "1h")
    assert r.returncode == 2 and b"--finalize-stale" in r.stderr
    r = run_cli("sweep", tmp_path, "--finalize-stale", "--stale-after", "soon")
    assert r.returncode == 2 and b"duration" in r.stderr and b"Traceback" not in r.stderr
    assert staleness.parse_duration("2") == 2 * 86400 and staleness.parse_duration("90s") == 90
    with pytest.raises(BadArgument):
        stale.finalize_stale(str(tmp_path), stale_after=-1)


# --------------------------------------------------------------------------- report


def test_report_lists_live_and_stale_running_runs_per_subtree(
        tmp_path: Path, runs: list[Run]) -> None:
    live = Run(tmp_path / "a")
    dead = Run(tmp_path / "b", "heartbeat_interval=0.5")
    runs += [live, dead]
    dead.kill()
    age(dead.dir, 10)
    r = run_cli("report", tmp_path, "--json", "--sample", "0")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["running"]
    assert run["subtrees"] == [  # stale first, though "b" sorts after "a"
        {"subtree": "b/exp_out", "live": 0, "stale": 1, "no_heartbeat": 0},
        {"subtree": "a/exp_out", "live": 1, "stale": 0, "no_heartbeat": 0},
    ]
    assert [s["path"] for s in run["stale_runs"]] == [str(dead.dir)]
    text = run_cli("report", tmp_path, "--sample", "0").stdout.decode()
    assert "RUNNING runs: 1 live, 1 stale, 0 without heartbeat" in text
    assert f"stale: {dead.dir}" in text
    table = text[text.index("RUNNING runs:"):].splitlines()
    rows = [ln.split()[0] for ln in table if ln.endswith("_out") or "_out " in ln]
    assert rows == ["b/exp_out", "a/exp_out"], table
    assert dead.dir.is_dir() and live.dir.is_dir()  # report changes nothing


def _dead_run(out: Path) -> Path:
    """A RUNNING dir as a SIGKILLed run leaves it: identity of a process that is gone."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    run = out / "RUNNING" / "2026Y-11M-20D-10h00m00s_dead-main"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "stdout.log").write_text("partial\n")
    ident = {"HOST": os.uname().nodename, "PID": int(p.stdout), "PROC_START_TICKS": 1,
             "BOOT_ID": liveness_mod.boot_id(), "HEARTBEAT_INTERVAL": 60}
    (run / ".heartbeat").write_text(json.dumps(ident))
    age(run, 2 * HOUR)
    return run


def test_finalize_follows_no_symlink_to_a_running_dir_or_run(tmp_path: Path) -> None:
    elsewhere = _dead_run(tmp_path / "other" / "exp_out")
    root = tmp_path / "root"
    (root / "a_out").mkdir(parents=True)
    os.symlink(elsewhere.parent, root / "a_out" / "RUNNING")  # RUNNING itself a link
    (root / "b_out" / "RUNNING").mkdir(parents=True)
    os.symlink(elsewhere, root / "b_out" / "RUNNING" / elsewhere.name)  # a run a link
    os.symlink(tmp_path / "other", root / "c_link")  # a link to a whole tree
    c = stale.finalize_stale(str(root), dry_run=False)
    assert (c["running"], c["finalized"]) == (0, 0)
    assert elsewhere.is_dir() and not (elsewhere / stale.MARKER_NAME).exists()
    assert stale.finalize_stale(str(tmp_path / "other"), dry_run=False)["finalized"] == 1


def test_a_run_whose_dir_is_locked_is_skipped_not_moved(tmp_path: Path) -> None:
    run = _dead_run(tmp_path / "exp_out")
    fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a finishing close holds
        c = stale.finalize_stale(str(tmp_path), dry_run=False)
    finally:
        os.close(fd)
    assert (c["stale"], c["skipped"], c["finalized"]) == (1, 1, 0)
    assert "locked by another process" in c["runs"][0]["action"]
    assert run.is_dir()


def test_sigkilled_run_on_this_host_is_stale_at_once(tmp_path: Path, runs: list[Run]) -> None:
    # heartbeat_interval=3600: the old rule waited 10 hours before calling it stale.
    run = Run(tmp_path)
    runs.append(run)
    assert staleness.classify(run.dir).state == staleness.LIVE
    run.kill()
    v = staleness.classify(run.dir)
    assert v.state == staleness.STALE and "is gone" in v.reason, v
    root = tmp_path / "exp_out"
    s = _summary(run_cli("sweep", root, "--finalize-stale", "--execute", "--json", "-q"))
    assert s["stale"]["finalized"] == 1 and s["archived"] == 1
    assert tree(root) == {"FINISHED_ERROR": [f"{run.dir.name}.tar.zst"]}


def test_dead_pid_in_another_pid_namespace_waits_for_the_heartbeat(
        tmp_path: Path, runs: list[Run]) -> None:
    """A container sharing the host name but not the PID namespace records PIDs that mean
    nothing here: its run is judged by heartbeat age alone, as before."""
    run = Run(tmp_path)
    runs.append(run)
    run.kill()
    hb = run.dir / ".heartbeat"
    ident = json.loads(hb.read_text())
    assert ident["PID_NS"].startswith("pid:[")
    for ns in ("pid:[1]", None):  # another namespace; an identity from before PID_NS
        ident["PID_NS"] = ns
        hb.write_text(json.dumps(ident))
        assert staleness.classify(run.dir).state == staleness.LIVE
        v = staleness.classify(run.dir, now=time.time() + 11 * HOUR)
        assert v.state == staleness.STALE and "is gone" in v.reason
