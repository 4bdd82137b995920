"""Bulk sweep: discovery parity between backends, planning rules, execution, accounting."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from archive_tool import api
from archive_tool.demo import make_tree
from archive_tool.engine.read import verify_archive
from archive_tool.engine.scan import scan_session
from archive_tool.errors import BadRoot, DangerousRoot
from archive_tool.names import is_session_name
from archive_tool.restore.many import restore_many
from archive_tool.sweep import sessions as sweep_mod
from archive_tool.sweep.discover import Discovery
from archive_tool.sweep.sessions import sweep
from tests.conftest import BACKENDS, HAS_FD, SID, make_session, needs_gnu_tar, snapshot

S = "FINISHED_SUCCESS"


def _tricky_tree(root: Path) -> dict[str, list[Path]]:
    """Sessions a sweep must take and dirs it must leave, in one tree."""
    take = [
        make_session(root / "proj" / "a_out" / S, f"{SID}-main", extra=False),
        make_session(root / "proj" / "a_out" / "FINISHED_ERROR", f"{SID[:-4]}ERRR", extra=False),
        make_session(root / "proj" / "a_out" / "FINISHED", f"{SID[:-4]}FNSH-with-dashes-x", extra=False),
        make_session(root / "deep" / "er" / "still" / "b_out" / S, f"{SID[:-4]}DEEP-train", extra=False),
        make_session(root / ".hidden" / "c_out" / S, f"{SID[:-4]}HIDN-main", extra=False),
        make_session(root / "ignored" / "d_out" / S, f"{SID[:-4]}IGNR-main", extra=False),
    ]
    (root / ".gitignore").write_text("ignored/\n*_out/\n")
    (root / "ignored" / ".gitignore").write_text("*\n")
    leave = [
        make_session(root / "proj" / "a_out" / "RUNNING", f"{SID[:-4]}RUNN-main", extra=False),
        make_session(root / "proj" / "a_out" / "RUNNING" / "sub" / S, f"{SID[:-4]}RUN2-main", extra=False),
        make_session(root / "proj" / "elsewhere", f"{SID[:-4]}ELSE-main", extra=False),  # no FINISHED_* parent
        make_session(root / "proj" / "a_out" / S, "not-a-session", extra=False),
        make_session(root / "proj" / "a_out" / S, f"{SID}-", extra=False),  # empty suffix
    ]
    # A session inside a session is part of it, not a second one.
    make_session(take[0] / S, f"{SID[:-4]}NEST-main", extra=False)
    # A symlinked dir that points at sessions: never followed.
    os.symlink(root / "proj" / "a_out", root / "link_to_a_out")
    (root / "proj" / "a_out" / S / "notes.txt").write_text("clutter\n")
    return {"take": take, "leave": leave}


@pytest.mark.parametrize("use_fd", BACKENDS)
def test_both_backends_find_exactly_the_finished_sessions(tmp_path: Path, use_fd: bool) -> None:
    t = _tricky_tree(tmp_path)
    found = sorted(Discovery(str(tmp_path), flat=False, use_fd=use_fd).paths())
    s = sweep(tmp_path, dry_run=True, use_fd=use_fd)
    assert s["backend"] == ("fd" if use_fd else "scandir")
    assert s["candidates"] == s["scanned"] == len(t["take"])
    on_disk = {str(p) for p in t["take"]}
    assert on_disk <= set(found)
    assert not {str(p) for p in t["leave"]} & set(found) - {str(t["leave"][2])}


@pytest.mark.skipif(not HAS_FD, reason="fd not installed: ./scripts/test installs it as root")
def test_fd_and_scandir_give_identical_results(tmp_path: Path) -> None:
    _tricky_tree(tmp_path)
    make_tree(str(tmp_path / "gen"), 150, seed=3)
    for flat_root, flat in ((tmp_path, False), (tmp_path / "proj" / "a_out" / S, True)):
        a = sorted(Discovery(str(flat_root), flat, use_fd=True).paths())
        b = sorted(Discovery(str(flat_root), flat, use_fd=False).paths())
        assert a == b and a


@pytest.mark.parametrize("use_fd", BACKENDS)
def test_dry_run_changes_nothing(tmp_path: Path, use_fd: bool) -> None:
    _tricky_tree(tmp_path)
    before = snapshot(tmp_path)
    s = sweep(tmp_path, dry_run=True, use_fd=use_fd, track_bytes=True, older_than_days=0)
    assert s["candidates"] > 0 and s["archived"] == 0
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("use_fd", BACKENDS)
@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz"])
def test_execute_archives_each_finished_session_once_then_nothing(
    tmp_path: Path, use_fd: bool, fmt: str
) -> None:
    t = _tricky_tree(tmp_path)
    leave_before = {str(p): snapshot(p) for p in t["leave"]}
    s = sweep(tmp_path, dry_run=False, use_fd=use_fd, format=fmt, workers=2)
    assert (s["archived"], s["failed"]) == (len(t["take"]), 0), s["failures"]
    for p in t["take"]:
        assert not p.exists()
        assert verify_archive(f"{p}.{fmt}").top == p.name
    for p in t["leave"]:
        assert snapshot(p) == leave_before[str(p)]
    again = sweep(tmp_path, dry_run=False, use_fd=use_fd, format=fmt)
    assert (again["scanned"], again["archived"]) == (0, 0)


def test_summary_counts_and_track_bytes_match_a_walk(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 120, seed=1)
    walked_bytes = walked_inodes = n = 0
    for state in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
        for d in tmp_path.glob(f"*/*/{state}/*"):
            if not is_session_name(d.name):
                continue
            n += 1
            entries = scan_session(str(d))
            walked_inodes += len(entries)
            walked_bytes += sum(e.size for e in entries)
    dry = sweep(tmp_path, dry_run=True, track_bytes=True)
    assert (dry["candidates"], dry["inodes_in"], dry["bytes_in"]) == (n, walked_inodes, walked_bytes)
    s = sweep(tmp_path, dry_run=False, track_bytes=True, workers=2)
    assert (s["archived"], s["inodes_in"], s["bytes_in"]) == (n, walked_inodes, walked_bytes)
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*/*/FINISHED_*/*.tar.zst"))
    assert s["bytes_out"] == on_disk
    assert set(s) >= {"scanned", "candidates", "archived", "skipped", "failed", "bytes_in",
                      "bytes_out", "inodes_in", "elapsed", "failures"}


def test_bytes_stay_zero_without_track_bytes(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 20, seed=2)
    s = sweep(tmp_path, dry_run=False, workers=1)
    assert s["archived"] > 0 and (s["bytes_in"], s["bytes_out"]) == (0, 0)


def test_one_failing_session_does_not_stop_the_rest(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 40, seed=4)
    bad = sorted(p for p in tmp_path.glob(f"*/*/{S}/*") if is_session_name(p.name))[0]
    os.mkfifo(bad / "pipe")
    s = sweep(tmp_path, dry_run=False, workers=2)
    assert s["failed"] == 1 and s["failures"][0]["path"] == str(bad)
    assert "FIFO" in s["failures"][0]["reason"]
    assert s["archived"] == s["candidates"] - 1
    assert bad.exists() and not Path(f"{bad}.tar.zst").exists()


def test_older_than_days_looks_at_the_newest_file_not_just_the_dir(tmp_path: Path) -> None:
    old = make_session(tmp_path / "x_out" / S, f"{SID[:-4]}OLD1-main", extra=False)
    appended = make_session(tmp_path / "x_out" / S, f"{SID[:-4]}APND-main", extra=False)
    ten_days = 10 * 86400
    import time
    t_old = time.time() - ten_days
    for d in (old, appended):
        for p in [d, *d.rglob("*")]:
            os.utime(p, (t_old, t_old), follow_symlinks=False)
    # Appending to a file changes the file's mtime, not the dir's.
    with open(appended / "logs" / "stdout.log", "a") as f:
        f.write("still being written\n")
    for dry in (True, False):
        s = sweep(tmp_path, dry_run=dry, older_than_days=5, workers=1)
        assert s["skipped_reasons"].get("too recent") == 1
    assert appended.exists() and not old.exists()


def test_pattern_and_max_dirs_limit_the_candidates(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 60, seed=5)
    s = sweep(tmp_path, dry_run=True, max_dirs=7)
    assert s["candidates"] == 7 and s["scanned"] > 7
    names = sorted(p.name for p in tmp_path.glob(f"*/*/{S}/*") if is_session_name(p.name))
    frag = names[0][:12]
    s = sweep(tmp_path, dry_run=True, pattern=frag)
    assert s["candidates"] == sum(
        frag in p.name for p in tmp_path.glob("*/*/FINISHED_*/*") if is_session_name(p.name)) > 0


@pytest.mark.parametrize("root", ["/", "/etc", "/usr", "/home", "/tmp"])
def test_dangerous_roots_are_refused(root: str) -> None:
    with pytest.raises(DangerousRoot):
        sweep(root, dry_run=True)


def test_roots_through_git_or_running_are_refused(tmp_path: Path) -> None:
    for bad in (tmp_path / ".git" / "x", tmp_path / "a_out" / "RUNNING"):
        bad.mkdir(parents=True)
        with pytest.raises(DangerousRoot):
            sweep(bad, dry_run=True)
    with pytest.raises(BadRoot):
        sweep(tmp_path / "missing", dry_run=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadRoot):
        sweep(tmp_path / "file", dry_run=True)


@pytest.mark.parametrize("suffix", ["-main", ""], ids=["suffixed", "bare-id"])
@pytest.mark.parametrize("use_fd", BACKENDS)
def test_crash_leftovers_are_finished_by_the_next_sweep(tmp_path: Path, suffix: str, use_fd: bool) -> None:
    fin = tmp_path / "a_out" / S
    # 1. source + committed archive (crash before delete); 2. trash of an interrupted delete
    both = make_session(fin, f"{SID[:-4]}BOTH{suffix}")
    api.archive_session_dir(both, format="tar.zst", remove_src=False)
    trashed = make_session(fin, f"{SID[:-4]}TRSH{suffix}")
    api.archive_session_dir(trashed, format="tar.zst", remove_src=False)
    os.rename(trashed, fin / f".{trashed.name}.deleting")
    orphan = make_session(fin, f"{SID[:-4]}ORPH{suffix}")  # trash with no archive: put back
    os.rename(orphan, fin / f".{orphan.name}.deleting")
    s = sweep(tmp_path, dry_run=False, workers=1, use_fd=use_fd)
    assert (s["resumed"], s["cleaned"], s["failed"]) == (1, 2, 0), s
    assert sorted(p.name for p in fin.iterdir()) == sorted(
        [f"{both.name}.tar.zst", f"{trashed.name}.tar.zst", orphan.name])


def test_existing_archive_with_other_content_keeps_both(tmp_path: Path) -> None:
    fin = tmp_path / "a_out" / S
    d = make_session(fin, f"{SID[:-4]}DIFF-main")
    api.archive_session_dir(d, format="tar.gz", remove_src=False)
    (d / "logs" / "stdout.log").write_text("rewritten after archiving\n")
    s = sweep(tmp_path, dry_run=False, workers=1)
    assert s["failed"] == 1 and "does not match" in s["failures"][0]["reason"]
    assert d.exists() and Path(f"{d}.tar.gz").exists()


def test_archive_existing_is_flat_and_matches_api_md(tmp_path: Path) -> None:
    from scitex_session import archive as public

    sig = inspect.signature(public.archive_existing)
    assert list(sig.parameters)[:8] == ["root", "older_than_days", "format", "pattern",
                                        "dry_run", "max_dirs", "track_bytes", "use_fd"]
    assert [sig.parameters[k].default for k in list(sig.parameters)[1:8]] == [
        None, "tar.gz", None, True, None, False, True]
    fin = tmp_path / S
    a = make_session(fin, f"{SID[:-4]}FLT1-main", extra=False)
    make_session(fin / "nested" / S, f"{SID[:-4]}FLT2-main", extra=False)  # not a direct child
    s = public.archive_existing(fin)
    assert (s["candidates"], s["archived"]) == (1, 0)  # dry run by default
    s = public.archive_existing(fin, dry_run=False)
    assert s["archived"] == 1 and Path(f"{a}.tar.gz").exists()
    assert (fin / "nested" / S / f"{SID[:-4]}FLT2-main").exists()


@needs_gnu_tar
def test_restore_existing_restores_every_format_including_gnu_tar(tmp_path: Path) -> None:
    from scitex_session import archive as public

    fin = tmp_path / S
    want = {}
    for fmt in ("tar.zst", "tar.gz", "tar", "tar.xz"):
        d = make_session(fin, f"{SID[:-4]}{fmt.replace('.', '')[-4:].upper():>4}-main".replace(" ", "X"))
        want[d.name] = snapshot(d)
        api.archive_session_dir(d, format=fmt)
    g = make_session(fin, f"{SID[:-4]}GNUT-main")
    want[g.name] = snapshot(g)
    subprocess.run(["tar", "-czf", f"{g}.tar.gz", "-C", str(fin), g.name], check=True)
    import shutil
    shutil.rmtree(g)
    # pattern=None: every format (API.md's default "*.tar.gz" takes only two of these)
    dry = public.restore_existing(fin, pattern=None)
    assert dry["candidates"] == 5 and dry["restored"] == 0
    s = public.restore_existing(fin, pattern=None, dry_run=False, dest_root=tmp_path / "back",
                                remove_archive=True)
    assert (s["restored"], s["failed"]) == (5, 0), s
    for name, snap in want.items():
        assert snapshot(tmp_path / "back" / name) == snap
    assert list(fin.iterdir()) == []


def test_workers_never_raise_across_the_pool(tmp_path: Path, monkeypatch) -> None:
    make_tree(str(tmp_path), 10, seed=6)

    def explode(*_a, **_k):
        raise RuntimeError("bug in a worker")

    monkeypatch.setattr(sweep_mod.single, "prepare", explode)
    s = sweep(tmp_path, dry_run=False, workers=1)
    assert s["failed"] == s["candidates"] > 0
    assert all("bug in a worker" in f["reason"] for f in s["failures"])
    assert len(list(tmp_path.glob("*/*/FINISHED_*/*.tar.*"))) == 0


def test_bad_numbers_are_value_errors(tmp_path: Path) -> None:
    for kw in ({"workers": 0}, {"max_dirs": -1}, {"older_than_days": -2}, {"batch_size": 0},
               {"shard": "3/2"}, {"format": "zip"}):
        with pytest.raises(ValueError):
            sweep(tmp_path, dry_run=True, **kw)


def test_sweep_at_a_scripts_top_level_works_with_forked_workers(tmp_path: Path) -> None:
    # No `if __name__ == "__main__":` guard. A single-threaded script's pool is forked
    # (executors.start_method): workers do not import the script again, so it just works.
    root = tmp_path / "runs"
    make_tree(str(root), 20, seed=5)
    candidates = sweep(str(root), dry_run=True)["candidates"]
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import json\n"
        "from archive_tool.sweep.sessions import sweep\n"
        f"s = sweep({str(root)!r}, dry_run=False, workers=2)\n"
        "print(json.dumps({k: s[k] for k in ('archived', 'failed', 'stopped')}))\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    first = json.loads(r.stdout.strip().splitlines()[0])
    assert candidates > 0
    assert first == {"archived": candidates, "failed": 0, "stopped": None}


def test_sweep_at_a_scripts_top_level_stops_with_a_hint_and_loses_nothing(tmp_path: Path) -> None:
    # No `if __name__ == "__main__":` guard and another thread running: the pool starts
    # from a forkserver, every worker imports the script, runs the sweep again, finds the
    # root locked and dies while starting.
    root = tmp_path / "runs"
    make_tree(str(root), 20, seed=5)
    before = snapshot(root)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import json, threading\n"
        "from archive_tool.sweep.sessions import sweep\n"
        "stop = threading.Event()\n"
        "t = threading.Thread(target=stop.wait)\n"
        "t.start()\n"
        f"s = sweep({str(root)!r}, dry_run=False, workers=2)\n"
        "stop.set()\n"
        "print(json.dumps({k: s[k] for k in ('archived', 'failed', 'stopped')}))\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    first = json.loads(r.stdout.strip().splitlines()[0])
    assert first["archived"] == 0 and first["failed"] > 0, first
    assert "if __name__ == '__main__'" in first["stopped"]
    after = {k: v for k, v in snapshot(root).items() if k != ".session-archive.lock"}
    assert after == before


class _DyingPool(Executor):
    """A pool whose worker died: the first batch comes back broken, later submits refuse."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > 1:
            raise BrokenProcessPool("pool is broken")
        f: Future = Future()
        f.set_exception(BrokenProcessPool("a worker was killed"))
        return f


def test_bulk_restore_with_a_dead_worker_stops_keeps_every_archive_and_reports(tmp_path: Path) -> None:
    flat = tmp_path / "FINISHED_SUCCESS"
    for i in range(6):
        api.archive_session_dir(make_session(flat, f"{SID[:-4]}R{i:03d}-main"), format="tar.zst")
    before = snapshot(flat)
    s = restore_many(flat, dry_run=False, executor=_DyingPool(), batch_size=2)
    assert s["restored"] == 0 and s["failed"] == 2 and s["skipped"] == 4, s
    assert all("worker lost" in f["reason"] for f in s["failures"])
    assert s["stopped"].startswith("a worker process died or could not start")
    assert snapshot(flat) == before
