"""Issue 16, what an operator relies on: no silent caps, human units, honest progress,
retention (prune), putting a tree or one sweep run back (extract --tree / --undo)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archive_tool.cli import cli
from archive_tool.demo import make_tree
from archive_tool.guard.lock import lock_path
from archive_tool.names import new_session_id
from archive_tool.progress import want_progress
from archive_tool.sweep.runlog import list_runs
from archive_tool.units import human_bytes, human_count
from tests.conftest import make_session


def invoke(*args: object):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def tree_state(root: Path) -> dict[str, tuple]:
    """Names, kinds, bytes, modes and mtimes of everything a sweep and its undo touch:
    the FINISHED_*/RUNNING dirs' own mtimes change (entries come and go) and the tool's
    own state (lock file, .session-archive/) is left out."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".session-archive")]
        for name in dirnames + filenames:
            if name.startswith(".session-archive"):
                continue
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            inside_session = "FINISHED" in rel and not p.name.startswith("FINISHED")
            mtime = int(st.st_mtime) if inside_session or not stat.S_ISDIR(st.st_mode) else None
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p), mtime)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), mtime)
            else:
                out[rel] = ("f", p.read_bytes(), stat.S_IMODE(st.st_mode), mtime)
    return out


def flat_sessions(parent: Path, n: int, start: float = 1_700_000_000) -> list[Path]:
    return [make_session(parent, new_session_id(start + i, "aaaa") + "-main", extra=False)
            for i in range(n)]


# ------------------------------------------------------------------------------- caps


def test_compress_has_no_default_cap_and_an_explicit_cap_exits_3_naming_what_is_left(
        tmp_path: Path) -> None:
    fin = tmp_path / "FINISHED_SUCCESS"
    flat_sessions(fin, 12)
    r = invoke("compress", fin, "--execute", "--max-dirs", "5", "-q", "-j", "1")
    assert r.exit_code == 3
    assert r.stderr == "stopped at 5 of 12; rerun or pass --max-dirs 12\n"
    assert len(list(fin.glob("*.tar.gz"))) == 5
    r = invoke("compress", fin, "--execute", "-q", "-j", "1")  # no flag: no cap
    assert r.exit_code == 0, r.output
    assert len(list(fin.glob("*.tar.gz"))) == 12 and not list(fin.glob("*-main"))


def test_sweep_cap_counts_only_sessions_a_rerun_would_take(tmp_path: Path) -> None:
    out = tmp_path / "a_out" / "FINISHED_SUCCESS"
    old = flat_sessions(out, 6)
    new = make_session(out, new_session_id(time.time(), "bbbb") + "-main", extra=False)
    for d in old:
        for p in [*d.rglob("*"), d]:
            os.utime(p, (1_600_000_000, 1_600_000_000))
    r = invoke("sweep", tmp_path, "--older-than-days", "1", "--max-dirs", "2")
    assert r.exit_code == 3 and "stopped at 2 of 6; rerun or pass --max-dirs 6" in r.stderr
    assert new.exists()


def test_extract_cap_exits_3_and_the_rest_follows_on_a_rerun(tmp_path: Path) -> None:
    fin = tmp_path / "FINISHED_SUCCESS"
    flat_sessions(fin, 7)
    assert invoke("compress", fin, "--execute", "-q", "-j", "1").exit_code == 0
    r = invoke("extract", fin, "--execute", "--max-files", "3", "--remove-archive", "-j", "1")
    assert r.exit_code == 3 and r.stderr.endswith("stopped at 3 of 7; rerun or pass --max-files 7\n")
    r = invoke("extract", fin, "--execute", "--remove-archive", "-j", "1")
    assert r.exit_code == 0 and len(list(fin.glob("*-main"))) == 7
    assert not list(fin.glob("*.tar.gz"))


# ------------------------------------------------------------------------------ units


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1,023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024**2, "5.0 MiB"), (3 * 1024**3 + 1, "3.0 GiB"), (2048 * 1024**4, "2.0 PiB"),
    (None, "-"),
])
def test_human_bytes_uses_binary_units(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def test_human_count_groups_thousands() -> None:
    assert human_count(1234567) == "1,234,567" and human_count(12) == "12"


def test_summaries_print_human_units_but_json_keeps_raw_integers(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 40, seed=3)
    r = invoke("sweep", tmp_path, "--track-bytes")
    assert r.exit_code == 0 and " KiB" in r.output
    r = invoke("sweep", tmp_path, "--execute", "--track-bytes", "-j", "2")
    assert r.exit_code == 0 and " KiB ->" in r.output and "inodes" in r.output
    r = invoke("sweep", tmp_path, "--json", "--track-bytes")
    s = json.loads(r.stdout)
    assert isinstance(s["bytes_in"], int)


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("quiet, flag, tty, shown", [
    (False, None, True, True),     # a person watching
    (False, None, False, False),   # cron, a pipe, a log file
    (False, True, False, True),    # --progress asks for it anyway
    (False, False, True, False),   # --no-progress
    (True, True, True, False),     # --quiet always wins
])
def test_progress_shows_on_a_tty_or_when_asked_and_never_with_quiet(
        quiet: bool, flag: bool | None, tty: bool, shown: bool) -> None:
    assert want_progress(quiet, flag, isatty=lambda: tty) is shown


def test_no_progress_bar_on_a_non_tty_unless_asked(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 30, seed=4)
    r = invoke("sweep", tmp_path, "--execute", "-j", "2")  # CliRunner's stderr is no TTY
    assert r.exit_code == 0 and r.stderr == ""


def test_progress_bar_has_a_total_rate_and_eta_when_asked(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 200, seed=5)
    n = json.loads(invoke("sweep", tmp_path, "--json").stdout)["candidates"]
    # A subprocess: tqdm's final refresh and the counting thread need a real stderr.
    r = subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(tmp_path),
                        "--execute", "--progress", "-j", "2", "--batch-size", "4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    last = r.stderr.rstrip().split("\r")[-1]
    assert f"{n}/{n}" in last and "sessions/s" in last and "100%" in last
    r = invoke("sweep", tmp_path, "--execute", "--progress", "--quiet")
    assert r.exit_code == 0 and r.stderr == ""


def test_flat_extract_shows_a_bar_with_its_total_when_asked(tmp_path: Path) -> None:
    from tests.conftest import make_session

    fin = tmp_path / "FINISHED_SUCCESS"
    for k in range(12):
        make_session(fin, f"2026Y-11M-23D-18h39m23s_P{k:03d}-main", extra=False)
    assert invoke("compress", fin, "--execute").exit_code == 0
    n = len(list(fin.glob("*.tar.gz")))
    r = subprocess.run([sys.executable, "-m", "archive_tool", "extract", str(fin),
                        "--execute", "--progress", "-j", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    last = r.stderr.rstrip().split("\r")[-1]
    assert f"{n}/{n}" in last and "100%" in last, r.stderr


# ---------------------------------------------------------------------- help examples


def test_every_command_help_has_one_example_line() -> None:
    for name, cmd in cli.commands.items():
        if cmd.hidden:  # an old name (pack -> archive): its help is the new command's
            continue
        r = invoke(name, "--help")
        lines = [ln for ln in r.output.splitlines() if ln.strip().startswith("Example: ")]
        assert len(lines) == 1, name
        assert f"session-archive {name} " in lines[0], name


# ------------------------------------------------------------------- sweep manifest, undo


def test_sweep_then_undo_puts_the_tree_back_exactly(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 300, seed=11)
    before = tree_state(tmp_path)
    r = invoke("sweep", tmp_path, "--execute", "--json", "-j", "2")
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["archived"] > 200
    [run] = list_runs(str(tmp_path))
    assert s["run"] == run
    lines = (tmp_path / ".session-archive" / "runs" / f"{run}.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == s["archived"]
    assert all(os.path.getsize(x["archive"]) == x["bytes"] and not os.path.exists(x["session"])
               for x in recs)
    assert tree_state(tmp_path) != before
    r = invoke("extract", tmp_path, "--undo", run)  # dry run: nothing changes
    assert r.exit_code == 0 and f"would restore {s['archived']} archives" in r.output
    r = invoke("extract", tmp_path, "--undo", run, "--execute", "--json", "-j", "2")
    assert r.exit_code == 0 and json.loads(r.stdout)["restored"] == s["archived"]
    assert tree_state(tmp_path) == before
    assert not list(tmp_path.rglob("*.tar.zst"))


def test_undo_restores_only_the_named_run(tmp_path: Path) -> None:
    out = tmp_path / "a_out" / "FINISHED_SUCCESS"
    first = flat_sessions(out, 4)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    time.sleep(1.1)  # run names are UTC seconds
    second = flat_sessions(out, 3, start=1_800_000_000)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    runs = list_runs(str(tmp_path))
    assert len(runs) == 2
    r = invoke("extract", tmp_path, "--undo", "last", "--execute", "-q", "-j", "1")
    assert r.exit_code == 0, r.output
    assert all(d.is_dir() for d in second) and not any(d.exists() for d in first)
    assert len(list(out.glob("*.tar.zst"))) == 4
    # Undoing it again changes nothing: every session dir is back (skipped, never overwritten).
    r = invoke("extract", tmp_path, "--undo", runs[-1], "--execute", "--json", "-j", "1")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 3


def test_undo_of_an_unknown_run_is_a_one_line_usage_error(tmp_path: Path) -> None:
    r = invoke("extract", tmp_path, "--undo", "20990101T000000Z")
    assert r.exit_code == 2 and r.stderr.startswith("Error: no sweep run")
    assert r.stderr.count("\n") == 1


def test_a_dry_run_or_an_empty_sweep_leaves_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "a_out" / "FINISHED_SUCCESS").mkdir(parents=True)
    assert invoke("sweep", tmp_path, "--execute", "-q").exit_code == 0
    flat_sessions(tmp_path / "a_out" / "FINISHED_SUCCESS", 2)
    assert invoke("sweep", tmp_path, "-q").exit_code == 0
    assert list_runs(str(tmp_path)) == []


def test_extract_tree_restores_every_archive_into_its_finished_dir(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 60, seed=12)
    before = tree_state(tmp_path)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "2").exit_code == 0
    # Archives not from a manifest: e.g. swept by an older version, or the runs dir deleted.
    for p in (tmp_path / ".session-archive" / "runs").iterdir():
        p.unlink()
    r = invoke("extract", tmp_path, "--tree")
    assert r.exit_code == 0 and "would restore" in r.output
    r = invoke("extract", tmp_path, "--tree", "--execute", "--remove-archive", "-j", "2")
    assert r.exit_code == 0, r.output
    assert tree_state(tmp_path) == before


def test_extract_tree_keeps_archives_by_default_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "p" / "a_out" / "FINISHED_ERROR"
    flat_sessions(out, 3)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    r = invoke("extract", tmp_path, "--tree", "--execute", "--json", "-j", "1")
    assert json.loads(r.stdout)["restored"] == 3
    assert len(list(out.glob("*.tar.zst"))) == 3 and len(list(out.glob("*-main"))) == 3
    r = invoke("extract", tmp_path, "--tree", "--execute", "--json", "-j", "1")
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["restored"] == 0 and s["skipped"] == 3


def test_extract_tree_and_undo_exit_75_while_a_sweep_holds_the_lock(tmp_path: Path) -> None:
    flat_sessions(tmp_path / "a_out" / "FINISHED_SUCCESS", 2)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    fd = os.open(lock_path(str(tmp_path)), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert invoke("extract", tmp_path, "--tree", "--execute").exit_code == 75
        assert invoke("extract", tmp_path, "--undo", "last", "--execute").exit_code == 75
    finally:
        os.close(fd)


def test_sigterm_during_tree_restore_leaves_every_session_whole_and_a_rerun_finishes(
        tmp_path: Path) -> None:
    make_tree(str(tmp_path), 400, seed=13)
    before = tree_state(tmp_path)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "2").exit_code == 0
    archives = list(tmp_path.rglob("*.tar.zst"))
    proc = subprocess.Popen([sys.executable, "-m", "archive_tool", "extract", str(tmp_path),
                             "--tree", "--execute", "--remove-archive", "-j", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(1 for a in archives if not a.exists()) >= 20:
            proc.terminate()
            break
        time.sleep(0.002)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 143), err
    if proc.returncode == 143:
        assert "interrupted by SIGTERM" in err and "Traceback" not in err
        assert any(a.exists() for a in archives)  # it stopped before the end
    for a in archives:  # each session: its archive, or its dir, never neither
        assert a.exists() or a.with_name(a.name[:-len(".tar.zst")]).is_dir()
    r = invoke("extract", tmp_path, "--tree", "--execute", "--remove-archive", "-j", "2")
    assert r.exit_code == 0
    assert tree_state(tmp_path) == before


def test_undo_keeps_an_archive_that_existed_before_the_run(tmp_path: Path) -> None:
    out = tmp_path / ".hidden_project" / "a_out" / "FINISHED_SUCCESS"
    [kept_src, fresh] = flat_sessions(out, 2)
    assert invoke("pack", kept_src, "--keep-source").exit_code == 0  # source + archive
    r = invoke("sweep", tmp_path, "--execute", "--json", "-j", "1")
    s = json.loads(r.stdout)
    assert s["resumed"] == 1 and s["archived"] == 1
    r = invoke("extract", tmp_path, "--undo", "last", "--execute", "-j", "1")
    assert r.exit_code == 0, r.output
    assert kept_src.is_dir() and Path(f"{kept_src}.tar.zst").is_file()  # as before the run
    assert fresh.is_dir() and not Path(f"{fresh}.tar.zst").exists()


def test_extract_tree_and_prune_find_archives_in_hidden_dirs_but_not_in_trash(
        tmp_path: Path) -> None:
    out = tmp_path / ".hidden_project" / "a_out" / "FINISHED_SUCCESS"
    [d] = flat_sessions(out, 1)
    assert invoke("sweep", tmp_path, "--execute", "-q", "-j", "1").exit_code == 0
    # An archive-named file inside a crash's trash dir is session content, not ours.
    trash = out / f".{d.name}x.deleting"
    trash.mkdir()
    (trash / f"{d.name}.tar.zst").write_bytes(b"not ours")
    r = invoke("extract", tmp_path, "--tree", "--json")
    assert json.loads(r.stdout)["candidates"] == 1
    r = invoke("prune", tmp_path, "--older-than", "1d", "--include-latest", "--json")
    assert [a["path"] for a in json.loads(r.stdout)["archives"]] == [f"{d}.tar.zst"]


def test_a_sweep_that_cannot_write_its_manifest_still_archives_and_says_so(
        tmp_path: Path) -> None:
    [d] = flat_sessions(tmp_path / "a_out" / "FINISHED_SUCCESS", 1)
    (tmp_path / ".session-archive").write_text("in the way")  # e.g. made unusable for us
    r = invoke("sweep", tmp_path, "--execute", "-q", "-j", "1")
    assert r.exit_code == 0 and not d.exists() and Path(f"{d}.tar.zst").is_file()
    assert r.stderr.startswith("warning: cannot create a run manifest")
    assert "extract --tree" in r.stderr


def test_a_full_disk_under_the_manifest_never_raises_into_the_sweep(tmp_path: Path) -> None:
    from archive_tool.sweep.runlog import RunLog

    [d] = flat_sessions(tmp_path / "a_out" / "FINISHED_SUCCESS", 1)
    Path(f"{d}.tar.zst").write_bytes(b"x")
    seen = []
    log = RunLog(str(tmp_path), seen.append)
    log._f.close()
    log._f = open("/dev/full", "w", encoding="utf-8")  # every flush: ENOSPC
    log((str(d), "archived", "", 1, 1, 1, False))
    log((str(d), "archived", "", 1, 1, 1, False))
    log.close()
    assert len(seen) == 2 and log.count == 0 and "No space left" in (log.error or "")


def test_readme_documents_every_operator_option_and_exit_code_3() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in ("prune", "extract", "sweep", "compress"):
        for p in cli.commands[name].params:
            for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
                if opt in ("--tree", "--undo", "--max-files", "--max-dirs", "--progress",
                           "--no-progress") or name == "prune" and opt.startswith("--"):
                    assert opt in readme or opt == "--help", (name, opt)
    assert "| 3 |" in readme and "stopped at N of M" in readme
    assert "Cron recipe" in readme


def test_two_runs_in_one_second_get_separate_manifests(tmp_path: Path) -> None:
    from archive_tool.sweep.runlog import RunLog, read_run, run_path

    out = tmp_path / "a_out" / "FINISHED_SUCCESS"
    a, b = flat_sessions(out, 2)
    for d in (a, b):
        Path(f"{d}.tar.zst").write_bytes(b"x")
    logs = [RunLog(str(tmp_path), now=1_800_000_000) for _ in range(2)]
    for log, d in zip(logs, (a, b), strict=True):
        log((str(d), "archived", "", 10, 1, 3, False))
        log((str(d) + "x", "failed", "boom", 0, 0, 0, False))  # not undoable: not listed
        log.close()
    assert [log.name for log in logs] == ["20270115T080000Z", "20270115T080000Z-1"]
    assert list_runs(str(tmp_path)) == [log.name for log in logs]
    assert [r["session"] for r in read_run(run_path(str(tmp_path), "last"))] == [str(b)]


def test_a_torn_last_manifest_line_is_ignored_but_a_torn_middle_line_is_an_error(
        tmp_path: Path) -> None:
    from archive_tool.sweep.runlog import read_run

    good = json.dumps({"session": "/r/s", "archive": "/r/s.tar.zst", "bytes": 1})
    p = tmp_path / "run.jsonl"
    p.write_text(f"{good}\n{good[:17]}")  # a crash mid-write: no newline, half a line
    assert len(read_run(str(p))) == 1
    p.write_text(f"{good[:17]}\n{good}\n")
    with pytest.raises(ValueError, match="run.jsonl:1"):
        read_run(str(p))
