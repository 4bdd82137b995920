"""Operator output and leftovers (issue 26): dry runs summed up per project (every item
with --list, JSON with --json), the lock-busy error naming its holder, and
--finalize-stale removing the RUNNING/ dir it emptied (never one still holding a run)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from archive_tool.guard.liveness import hostname
from archive_tool.guard.lock import RootLock
from archive_tool.stale import finalize as stale
from tests.conftest import make_session, run_cli
from tests.test_stale import Run, age, runs  # noqa: F401 - `runs` is a fixture


def _archived_tree(root: Path, per_project: dict[str, int]) -> None:
    for proj, n in per_project.items():
        parent = root / proj / "train_out" / "FINISHED_SUCCESS"
        for i in range(n):
            make_session(parent, f"2025Y-01M-{1 + i % 28:02d}D-10h{i // 28:02d}m00s_S{i:03d}-main",
                         extra=False)
    assert run_cli("sweep", root, "--execute", "-q").returncode == 0


def test_a_prune_dry_run_prints_a_summary_per_project_and_the_first_items(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    _archived_tree(root, {"alpha": 30, "beta": 12})
    r = run_cli("prune", root, "--older-than", "30d", "--include-latest")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert sum(ln.startswith("would delete") for ln in out) == 5
    assert any(ln.startswith("  alpha: 30 archives") for ln in out)
    assert any(ln.startswith("  beta: 12 archives") for ln in out)
    assert "  ... and 37 more archives (--list shows all)" in out
    assert len(out) < 15
    full = run_cli("prune", root, "--older-than", "30d", "--include-latest", "--list")
    assert sum(ln.startswith("would delete") for ln in full.stdout.decode().splitlines()) == 42
    as_json = json.loads(run_cli("prune", root, "--older-than", "30d", "--include-latest",
                                 "--json").stdout)
    assert len(as_json["archives"]) == 42


def test_a_sweep_dry_run_sums_up_its_candidates_per_project(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for proj, n in (("alpha", 9), ("beta", 3)):
        for i in range(n):
            make_session(root / proj / "x_out" / "FINISHED_SUCCESS",
                         f"2025Y-01M-01D-10h{i:02d}m00s_S{i:03d}-main", extra=False)
    out = run_cli("sweep", root, "-n").stdout.decode().splitlines()
    assert "  alpha: 9 sessions (75 %)" in out and "  beta: 3 sessions (25 %)" in out
    assert "  ... and 7 more sessions (--list shows all)" in out
    assert any(ln.startswith("dry run: would archive 12 of 12") for ln in out)


def test_lock_busy_names_the_holders_pid_host_and_start(tmp_path: Path) -> None:
    make_session(tmp_path / "x_out" / "FINISHED_SUCCESS", "2025Y-01M-01D-10h00m00s_AAAA-main")
    with RootLock(str(tmp_path)):
        r = run_cli("sweep", tmp_path, "--execute")
    assert r.returncode == 75
    err = r.stderr.decode()
    assert err.count("\n") == 1
    assert f"(PID {os.getpid()} on host {hostname()}, started " in err
    assert time.strftime("%Y-%m-%d", time.gmtime()) in err and "UTC)" in err


def test_finalize_stale_removes_the_running_dir_it_emptied(tmp_path: Path,
                                                          runs: list) -> None:  # noqa: F811
    run = Run(tmp_path / "a", "heartbeat_interval=0.5")
    runs.append(run)
    run.kill()
    age(run.dir, 10)
    s = stale.finalize_stale(str(run.out), dry_run=False)
    assert (s["finalized"], s["running_dirs_removed"]) == (1, 1)
    assert not (run.out / "RUNNING").exists()
    assert (run.out / "FINISHED_ERROR" / run.dir.name).is_dir()


def test_finalize_stale_keeps_a_running_dir_that_still_holds_a_run(tmp_path: Path,
                                                                  runs: list) -> None:  # noqa: F811
    dead = Run(tmp_path, "heartbeat_interval=0.5")
    runs.append(dead)
    dead.kill()
    age(dead.dir, 10)
    # Another run of the script, without heartbeat (never finalized without --stale-after).
    other = make_session(dead.dir.parent, "2026Y-01M-01D-10h00m00s_LIVE-main")
    s = stale.finalize_stale(str(dead.out), dry_run=False)
    assert (s["finalized"], s["no_heartbeat"], s["running_dirs_removed"]) == (1, 1, 0)
    assert other.is_dir() and other.parent.name == "RUNNING"


def test_a_run_whose_pid_is_gone_on_this_host_is_stale_before_its_threshold(
        tmp_path: Path, runs: list) -> None:  # noqa: F811
    from archive_tool.catalog.reportview import format_report
    from archive_tool.stale.staleness import STALE, classify

    run = Run(tmp_path, "heartbeat_interval=0.5")
    runs.append(run)
    run.kill()
    age(run.dir, 2)  # 4 beats missed: far below the 10-beat threshold (5 s)
    v = classify(run.dir)
    assert v.state == STALE and f"PID {run.proc.pid} is gone" in v.reason
    # In the report's RUNNING table the dead run's subtree comes first, before
    # alphabetically earlier subtrees of runs without heartbeat.
    for i in range(3):
        make_session(tmp_path / f"aaa{i}_out" / "RUNNING", f"2026Y-01M-01D-10h00m0{i}s_NOHB-main",
                     extra=False)
    from archive_tool.catalog.report import build_report

    text = format_report(build_report(tmp_path, sample=0))
    table = text.split("RUNNING runs:")[1].splitlines()
    assert "1 stale" in table[0]
    head = next(i for i, ln in enumerate(table) if ln.startswith("subtree"))
    assert table[head + 1].startswith("exp_out")  # the row after the header: the stale one
