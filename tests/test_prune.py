"""session-archive prune: retention of session archives, dry run first, durable and logged."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archive_tool.cli import cli
from archive_tool.guard.lock import lock_path
from archive_tool.names import new_session_id
from archive_tool.retention.prune import started_at
from archive_tool.units import parse_age
from tests.conftest import make_session

DAY = 86400.0


def invoke(*args: object):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


# (script, state, days ago) -> each becomes one archive made by a real sweep.
RUNS = [
    ("a_out", "FINISHED_SUCCESS", 400), ("a_out", "FINISHED_SUCCESS", 300),
    ("a_out", "FINISHED_SUCCESS", 200), ("a_out", "FINISHED_SUCCESS", 10),
    ("a_out", "FINISHED_ERROR", 350), ("a_out", "FINISHED_ERROR", 5),
    ("b_out", "FINISHED_SUCCESS", 500),
]


@pytest.fixture
def archived(tmp_path: Path) -> dict[tuple[str, str, int], Path]:
    now = time.time()
    made = {}
    for i, (script, state, days) in enumerate(RUNS):
        name = new_session_id(now - days * DAY, f"r{i:03d}") + "-main"
        make_session(tmp_path / "proj" / script / state, name, extra=False)
        made[(script, state, days)] = tmp_path / "proj" / script / state / f"{name}.tar.zst"
    # A live session dir and a RUNNING one: prune must never touch either.
    make_session(tmp_path / "proj" / "a_out" / "RUNNING", new_session_id(now - 900 * DAY, "live"))
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    assert all(p.is_file() for p in made.values())
    make_session(tmp_path / "proj" / "a_out" / "FINISHED_SUCCESS",
                 new_session_id(now - 800 * DAY, "kept"))
    return made


def left(made: dict, tmp_path: Path) -> set[tuple[str, str, int]]:
    return {k for k, p in made.items() if p.exists()}


def test_prune_is_a_dry_run_by_default_and_lists_what_would_go(
        tmp_path: Path, archived: dict) -> None:
    r = invoke("prune", tmp_path, "--older-than", "180d")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    listed = [ln for ln in lines if ln.startswith("would delete ")]
    assert len(listed) == 4
    assert "dry run: would delete 4 of 7 archives" in r.output and "KiB" in r.output
    assert "kept: 2 newest success per script, 1 too recent" in r.output
    assert left(archived, tmp_path) == set(archived)


def test_prune_execute_deletes_old_archives_but_never_a_scripts_newest_success(
        tmp_path: Path, archived: dict) -> None:
    r = invoke("prune", tmp_path, "--older-than", "180d", "--execute", "--json")
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["deleted"] == 4 and isinstance(s["bytes_freed"], int)
    assert left(archived, tmp_path) == {
        ("a_out", "FINISHED_SUCCESS", 10), ("a_out", "FINISHED_ERROR", 5),
        ("b_out", "FINISHED_SUCCESS", 500),  # the only (so newest) success of b
    }
    # Session dirs (live or RUNNING) are untouched.
    assert len(list(tmp_path.glob("proj/a_out/*/*-main"))) == 0
    assert len([p for p in tmp_path.glob("proj/a_out/*/*") if p.is_dir()]) == 2
    log = [json.loads(x) for x in Path(s["log"]).read_text().splitlines()]
    assert sorted(x["archive"] for x in log) == sorted(a["path"] for a in s["archives"])
    assert sum(x["bytes"] for x in log) == s["bytes_freed"] == s["bytes"]


def test_prune_include_latest_lets_the_newest_success_go(tmp_path: Path, archived: dict) -> None:
    r = invoke("prune", tmp_path, "--older-than", "180d", "--include-latest", "--execute", "-q")
    assert r.exit_code == 0
    assert ("b_out", "FINISHED_SUCCESS", 500) not in left(archived, tmp_path)


def test_prune_keep_last_keeps_the_k_newest_per_script(tmp_path: Path, archived: dict) -> None:
    r = invoke("prune", tmp_path, "--keep-last", "3", "--execute", "-q")
    assert r.exit_code == 0
    assert left(archived, tmp_path) == {
        ("a_out", "FINISHED_SUCCESS", 10), ("a_out", "FINISHED_ERROR", 5),
        ("a_out", "FINISHED_SUCCESS", 200), ("b_out", "FINISHED_SUCCESS", 500),
    }


def test_prune_state_takes_only_that_state(tmp_path: Path, archived: dict) -> None:
    r = invoke("prune", tmp_path, "--state", "FINISHED_ERROR", "--execute", "-q")
    assert r.exit_code == 0
    assert left(archived, tmp_path) == set(archived) - {
        ("a_out", "FINISHED_ERROR", 350), ("a_out", "FINISHED_ERROR", 5)}


def test_prune_filters_combine(tmp_path: Path, archived: dict) -> None:
    r = invoke("prune", tmp_path, "--state", "FINISHED_ERROR", "--older-than", "30d",
               "--execute", "-q")
    assert r.exit_code == 0
    assert left(archived, tmp_path) == set(archived) - {("a_out", "FINISHED_ERROR", 350)}


@pytest.mark.parametrize("args", [[], ["--older-than", "soon"], ["--older-than", "-3d"],
                                  ["--keep-last", "-1"], ["--state", "RUNNING"]])
def test_prune_bad_or_missing_criteria_exit_2(tmp_path: Path, args: list[str]) -> None:
    r = invoke("prune", tmp_path, *args, "--execute")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_a_second_prune_in_parallel_exits_75(tmp_path: Path, archived: dict) -> None:
    fd = os.open(lock_path(str(tmp_path)), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = invoke("prune", tmp_path, "--older-than", "1d", "--execute")
    finally:
        os.close(fd)
    assert r.exit_code == 75 and left(archived, tmp_path) == set(archived)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace missing")
def test_prune_unlinks_relative_to_the_dir_fd_then_fsyncs_the_dir(
        tmp_path: Path, archived: dict) -> None:
    trace = tmp_path / "trace"
    r = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                        "trace=openat,unlinkat,fsync", sys.executable, "-m", "archive_tool",
                        "prune", str(tmp_path), "--state", "FINISHED_ERROR", "--execute"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    calls = [ln.split(None, 1)[1] for ln in trace.read_text().splitlines() if " " in ln]
    # Reached from the root one component at a time (fs.open_beneath): the last hop
    # opens "FINISHED_ERROR" relative to its parent's fd.
    opens = [c for c in calls if c.startswith("openat(") and '"FINISHED_ERROR"' in c
             and "O_NOFOLLOW" in c and "O_DIRECTORY" in c and not c.startswith("openat(AT_FDCWD")]
    # (The scan for packs walks the tree by fds first: the delete's open is the last.)
    assert opens
    dfd = opens[-1].rsplit("= ", 1)[1].strip()
    i = calls.index(opens[-1])
    unlinks = [c for c in calls[i:] if c.startswith(f"unlinkat({dfd}, ")]
    assert len(unlinks) == 2 and all(".tar.zst" in c and "/" not in c.split('"')[1]
                                     for c in unlinks)
    last_unlink = max(calls.index(c) for c in unlinks)
    assert f"fsync({dfd})" in [c.split("=")[0].strip() for c in calls[last_unlink:]]


def test_age_comes_from_the_session_id_not_the_archive_mtime(
        tmp_path: Path, archived: dict) -> None:
    for p in archived.values():
        os.utime(p, None)  # e.g. copied without -t: every archive looks new
    r = invoke("prune", tmp_path, "--older-than", "180d", "--json")
    assert json.loads(r.stdout)["selected"] == 4


def test_parse_age_and_id_timestamps() -> None:
    assert parse_age("180d") == 180 and parse_age("2w") == 14 and parse_age("36h") == 1.5
    assert parse_age("1y") == 365 and parse_age("7") == 7
    with pytest.raises(ValueError):
        parse_age("3 months")
    t = time.mktime((2026, 11, 23, 18, 39, 23, 0, 0, -1))
    assert started_at("2026Y-11M-23D-18h39m23s_KYwP-main") == t
    assert started_at("2026Y-13M-23D-18h39m23s_KYwP") is None  # falls back to mtime


def test_prune_of_a_finished_dir_itself_still_keeps_its_newest_success(
        tmp_path: Path, archived: dict) -> None:
    fin = tmp_path / "proj" / "a_out" / "FINISHED_SUCCESS"
    r = invoke("prune", fin, "--older-than", "180d", "--json")
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["selected"] == 3
    assert {a["script"] for a in s["archives"]} == {str(fin.parent)}


# ------------------------------------------------------------------ sessions inside packs


@pytest.fixture
def packed(tmp_path: Path) -> dict[tuple[str, str, int], str]:
    """RUNS swept into packs (one per FINISHED_* dir: `--pack 100`), plus one old
    per-session archive beside them; returns (script, state, days) -> session name."""
    from archive_tool.sweep.packsweep import pack_sweep

    now = time.time()
    made = {}
    for i, (script, state, days) in enumerate(RUNS):
        name = new_session_id(now - days * DAY, f"p{i:03d}") + "-main"
        make_session(tmp_path / "proj" / script / state, name, extra=False)
        made[(script, state, days)] = name
    pack_sweep(tmp_path, 100, dry_run=False, workers=1)
    name = new_session_id(now - 600 * DAY, "solo") + "-main"
    make_session(tmp_path / "proj" / "a_out" / "FINISHED_SUCCESS", name, extra=False)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    made[("a_out", "FINISHED_SUCCESS", 600)] = name
    return made


def _in_packs(tmp_path: Path) -> dict[str, bytes]:
    """Session name -> its compressed frame, over every pack under tmp_path."""
    from archive_tool.pack import packfile

    out = {}
    for pack in tmp_path.rglob("*.pack.tar.zst"):
        data = pack.read_bytes()
        with packfile.Pack(pack) as p:
            for i, n in enumerate(p.names):
                out[n] = data[p.frames.offset[i]:p.frames.offset[i] + p.frames.csize[i]]
    return out


def test_prune_dry_run_lists_sessions_inside_packs_with_their_pack(
        tmp_path: Path, packed: dict) -> None:
    frames = _in_packs(tmp_path)
    r = invoke("prune", tmp_path, "--older-than", "180d")
    assert r.exit_code == 0, r.output
    listed = sorted(ln.rsplit("::", 1)[1] for ln in r.output.splitlines()
                    if ln.startswith("would delete ") and "::" in ln)
    assert listed == sorted(packed[k] for k in [("a_out", "FINISHED_SUCCESS", 400),
                                                ("a_out", "FINISHED_SUCCESS", 300),
                                                ("a_out", "FINISHED_SUCCESS", 200),
                                                ("a_out", "FINISHED_ERROR", 350)])
    assert all(".pack.tar.zst::" in ln for ln in r.output.splitlines()
               if ln.startswith("would delete ") and "::" in ln)
    assert "would delete 5 of 8 archives" in r.output  # the per-session one too
    assert _in_packs(tmp_path) == frames


def test_prune_execute_repacks_packs_without_the_pruned_sessions(
        tmp_path: Path, packed: dict) -> None:
    from archive_tool.catalog import catalog

    frames = _in_packs(tmp_path)
    r = invoke("prune", tmp_path, "--older-than", "180d", "--keep-last", "1", "--execute",
               "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["deleted"] == 5 and s["failed"] == 0
    kept = {packed[k] for k in [("a_out", "FINISHED_SUCCESS", 10), ("a_out", "FINISHED_ERROR", 5),
                                ("b_out", "FINISHED_SUCCESS", 500)]}
    # The kept sessions' frames are exactly what they were; the pruned ones are nowhere.
    assert _in_packs(tmp_path) == {n: f for n, f in frames.items() if n in kept}
    assert not list(tmp_path.rglob("*solo*"))
    assert sorted(r["name"] for r in catalog.find(tmp_path)) == sorted(kept)
    log = [json.loads(x) for x in Path(s["log"]).read_text().splitlines()]
    assert sorted(x["archive"] for x in log) == sorted(a["path"] for a in s["archives"])
    assert sum(x["bytes"] for x in log) == s["bytes_freed"]
    r = invoke("prune", tmp_path, "--older-than", "180d", "--keep-last", "1", "--json")
    assert json.loads(r.stdout)["selected"] == 0


def test_pruned_archives_leave_the_catalog(tmp_path: Path) -> None:
    from archive_tool.catalog import catalog

    now = time.time()
    names = []
    for i, days in enumerate((400, 300, 5)):
        name = new_session_id(now - days * DAY, f"c{i:03d}") + "-main"
        make_session(tmp_path / "proj" / "a_out" / "FINISHED_SUCCESS", name, extra=False)
        names.append(name)
    assert invoke("sweep", tmp_path, "--execute", "--catalog", "-q", "-j", "1").exit_code == 0
    assert len(catalog.find(tmp_path)) == 3
    r = invoke("prune", tmp_path, "--older-than", "180d", "--execute", "-q")
    assert r.exit_code == 0, r.output
    assert [x["name"] for x in catalog.find(tmp_path)] == [names[2]]
