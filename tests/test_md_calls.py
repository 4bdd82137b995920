"""Issue 24: a sweep's metadata calls per session (what a parallel filesystem's metadata
server charges for), and the checks that kept their meaning when calls were removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.engine.read import verify_archive
from archive_tool.engine.single import archive_one
from archive_tool.sweep.sessions import sweep
from tests.conftest import HAS_FD, make_session, snapshot

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import md_calls  # noqa: E402

try:
    md_calls.shim_source()
    HAS_SHIM = shutil.which("gcc") is not None
except md_calls.ShimUnavailable:
    HAS_SHIM = False


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(BENCH.parent) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _demo(path: Path, n: int) -> int:
    subprocess.run([sys.executable, "-m", "archive_tool", "demo-tree", str(path), "-n", str(n)],
                   check=True, env=_env(), stdout=subprocess.DEVNULL)
    dry = subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(path), "--json"],
                         check=True, env=_env(), capture_output=True, text=True)
    return json.loads(dry.stdout)["candidates"]


def _calls(cmd, shell: bool = False) -> int:
    res = md_calls.run_counted(cmd, env=_env(), shell=shell)
    assert res["rc"] == 0, res
    return sum(res["counts"].values())


def _own_proc() -> list[str]:
    """A prefix that runs a command with a /proc of its own (a new PID namespace), where
    the machine allows it: the sweep's one pass over /proc/*/fd (holds.py) costs calls in
    proportion to the processes on the machine, which other jobs change from one run to
    the next (single runs of the plain bound gave 54.5 to 75.5 a session on this box)."""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc"]
    try:
        ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return cmd if ok else []


def _per_session(tmp_path: Path, args: list[str]) -> tuple[float, float]:
    """Marginal calls per session of ``session-archive sweep ROOT *args`` and of the tar
    floor: the difference between a 40- and a 200-session demo tree, so process start-up
    (imports, fd's own set-up) cancels out. Ours runs with a /proc of its own where it
    can (_own_proc), and counts as the fewer of two runs a size."""
    from bench_sweep import floor_cmd

    prefix = _own_proc()
    ours, tar = [], []
    sessions = []
    for n in (40, 200):
        pristine = tmp_path / f"p{n}"
        sessions.append(_demo(pristine, n))
        root = tmp_path / f"r{n}"
        runs = []
        for _ in range(2):
            shutil.copytree(pristine, root, symlinks=True)
            runs.append(_calls([*prefix, sys.executable, "-m", "archive_tool", "sweep",
                                str(root), *args]))
            assert not list(root.rglob("FINISHED_*/*_*-main")), "the sweep left sessions"
            shutil.rmtree(root)
        ours.append(min(runs))
        shutil.copytree(pristine, root, symlinks=True)
        tar.append(_calls(floor_cmd(str(root), str(tmp_path / "floor.tar.zst")), shell=True))
        shutil.rmtree(root)
    ds = sessions[1] - sessions[0]
    return (ours[1] - ours[0]) / ds, (tar[1] - tar[0]) / ds


@pytest.mark.skipif(not (HAS_SHIM and HAS_FD), reason="needs gcc, ../shared/tools/md_latency.c "
                                                       "and fd (the floor lists with it)")
def test_sweep_makes_at_most_1_3x_the_metadata_calls_of_tar_per_session(tmp_path: Path) -> None:
    per_ours, per_tar = _per_session(tmp_path, ["--execute", "-q", "-j", "1"])
    print(f"per session: ours {per_ours:.1f}, tar {per_tar:.1f}")
    assert per_ours <= 1.3 * per_tar, (per_ours, per_tar)


@pytest.mark.skipif(not (HAS_SHIM and HAS_FD), reason="needs gcc, ../shared/tools/md_latency.c "
                                                       "and fd (the floor lists with it)")
def test_pack_sweep_makes_at_most_1_3x_the_metadata_calls_of_tar_per_session(
        tmp_path: Path) -> None:
    """``sweep --pack daily`` (-j 1, as the plain sweep's bound) against the same floor.
    Daily packs of the demo tree hold ~1.2 sessions, so each pack's own calls (tmp,
    fsync, link) count nearly per session here."""
    per_ours, per_tar = _per_session(tmp_path, ["--pack", "daily", "--execute", "-q",
                                                "-j", "1"])
    print(f"pack, per session: ours {per_ours:.1f}, tar {per_tar:.1f}")
    assert per_ours <= 1.3 * per_tar, (per_ours, per_tar)


def test_a_leftover_trash_of_an_interrupted_delete_does_not_stop_the_next(session: Path) -> None:
    trash = session.parent / f".{session.name}.deleting"
    (trash / "logs").mkdir(parents=True)
    (trash / "logs" / "old.log").write_text("an earlier, archived copy\n")
    before = snapshot(session)
    archive = archive_one(session, "tar.zst")
    assert not session.exists() and not trash.exists()
    assert verify_archive(archive).members == len(before) + 1


def test_a_subdir_swapped_after_the_recheck_is_never_entered_by_the_delete(session: Path) -> None:
    """The delete walks the fds the re-check verified: a dir put in place of one after it
    is never entered (its file survives), and its rmdir fails: the source is not emptied."""
    trash = session.parent / f".{session.name}.deleting"

    def swap(point: str, _where: str) -> None:
        if point == "delete":
            os.rename(trash / "logs", trash / "logs.old")
            (trash / "logs").mkdir()
            (trash / "logs" / "new.txt").write_text("written after the re-check\n")

    fs.race_hook = swap
    try:
        with pytest.raises(OSError):
            archive_one(session, "tar.zst")
    finally:
        fs.race_hook = None
    assert (trash / "logs" / "new.txt").read_text() == "written after the re-check\n"
    archive = session.parent / f"{session.name}.tar.zst"
    assert verify_archive(archive).members > 0  # committed before the delete began


def test_an_archive_in_another_format_appearing_before_the_lock_skips_the_session(
    tmp_path: Path,
) -> None:
    """The batch's one listing is taken after every lock is held: it sees an archive
    another archiver finished just before, as the per-format stats did."""
    fin = tmp_path / "proj_out" / "FINISHED_SUCCESS"
    s = make_session(fin)
    other = fin / f"{s.name}.tar.gz"
    before = snapshot(s)

    def appear(point: str, _where: str) -> None:
        if point == "lock" and not other.exists():
            other.write_bytes(b"another archiver's archive")

    fs.race_hook = appear
    try:
        summary = sweep(tmp_path, dry_run=False, workers=1, use_fd=False, format="tar.zst")
    finally:
        fs.race_hook = None
    assert summary["archived"] == 0 and summary["skipped"] == 1, summary
    assert summary["skipped_reasons"] == {"archive appeared meanwhile": 1}
    assert snapshot(s) == before
    assert other.read_bytes() == b"another archiver's archive"
    assert not (fin / f"{s.name}.tar.zst").exists()


def test_default_workers_stay_one_per_core_on_a_local_disk(tmp_path: Path) -> None:
    from archive_tool.sweep import latency

    lat = latency.probe_latency(str(tmp_path))
    assert 0 < lat < 0.005
    assert latency.workers_for(lat, 2) == 2  # local tmp: microseconds a call


def test_default_workers_grow_with_metadata_latency_up_to_the_cap() -> None:
    from archive_tool.sweep.latency import MAX_WORKERS, workers_for

    local, lustre, slow = workers_for(5e-6, 2), workers_for(200e-6, 2), workers_for(1e-3, 2)
    assert local == 2 and 2 < lustre <= MAX_WORKERS and slow == MAX_WORKERS
    assert workers_for(1e-3, 64) == 64  # never fewer than one per core
