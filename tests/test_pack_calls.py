"""Issue 24 for ``sweep --pack``: the checks that kept their meaning when the pack path's
metadata calls were cut (the per-session count bound is in test_md_calls.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.pack import packfile
from archive_tool.sweep.packsweep import pack_sweep
from tests.conftest import make_session, snapshot

DAY = "2026Y-11M-23D"


def _sessions(parent: Path, n: int, day: str = DAY) -> dict[str, dict]:
    parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        d = make_session(parent, f"{day}-10h{i:02d}m00s_P{i:03d}-main")
        out[d.name] = snapshot(d)
    return out


def _sweep(root: Path, hook=None, mode: str = "daily") -> dict:
    """An executed *mode* pack sweep of *root*, in-process, with *hook* at its race points."""
    fs.race_hook = hook
    try:
        return pack_sweep(root, mode, dry_run=False, workers=1)
    finally:
        fs.race_hook = None


def test_a_named_tmp_pack_a_crash_left_is_removed_and_a_dir_of_that_name_kept(
        tmp_path: Path) -> None:
    """The planner's listing names the leftover; the sweeping process unlinks it under the
    root lock before any worker writes (no listing of its own, no call where there is none)."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    _sessions(fin, 2)
    stale = fin / ("2026-11-20" + packfile.PACK_SUFFIX + ".tmp")
    stale.write_bytes(b"half a pack from a killed fallback run")
    same_day = fin / ("2026-11-23" + packfile.PACK_SUFFIX + ".tmp")
    same_day.write_bytes(b"the name this sweep's own fallback tmp would take")
    a_dir = fin / ("2026-11-21" + packfile.PACK_SUFFIX + ".tmp")
    a_dir.mkdir()
    s = _sweep(tmp_path)
    assert (s["archived"], s["failed"]) == (2, 0), s
    assert not stale.exists() and not same_day.exists()
    assert a_dir.is_dir()
    assert [p.name for p in fin.glob("*" + packfile.PACK_SUFFIX)] == [
        "2026-11-23" + packfile.PACK_SUFFIX]


def test_a_pack_name_taken_after_planning_goes_to_the_next_free_name(tmp_path: Path) -> None:
    """The first name is chosen from the planner's listing, not a stat: a pack of that
    name appearing afterwards is never replaced (the link fails, the next name is used)."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 2)
    taken = fin / ("2026-11-23" + packfile.PACK_SUFFIX)

    def appear(point: str, _where: str) -> None:
        if point == "pack-publish" and not taken.exists():
            taken.write_bytes(b"another writer's file")

    s = _sweep(tmp_path, appear)
    assert (s["archived"], s["failed"]) == (2, 0), s
    assert taken.read_bytes() == b"another writer's file"
    with packfile.Pack(fin / ("2026-11-23.2" + packfile.PACK_SUFFIX)) as p:
        assert sorted(p.names) == sorted(before)


def test_an_archive_appearing_before_the_lock_keeps_the_session_out_of_the_pack(
        tmp_path: Path) -> None:
    """One listing of the dir, taken once the job's sessions are locked, stands for the
    stat per format per session: it sees an archive another archiver finished before."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 3)
    victim = sorted(before)[1]
    other = fin / f"{victim}.tar.gz"

    def appear(point: str, _where: str) -> None:
        if point == "lock" and not other.exists():
            other.write_bytes(b"another archiver's archive")

    s = _sweep(tmp_path, appear)
    assert (s["archived"], s["skipped"], s["failed"]) == (2, 1, 0), s
    assert s["skipped_reasons"] == {"archived meanwhile by another process": 1}
    assert snapshot(fin / victim) == before[victim]
    assert other.read_bytes() == b"another archiver's archive"
    with packfile.Pack(fin / ("2026-11-23" + packfile.PACK_SUFFIX)) as p:
        assert sorted(p.names) == sorted(n for n in before if n != victim)


def test_a_session_dir_swapped_after_packing_is_kept_and_never_entered(tmp_path: Path) -> None:
    """The lock held from the scan serves the delete: a dir put in the session's place
    after its frame was written is not the locked inode, so it is renamed back, kept
    whole, and the pack keeps the frame of what was read."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 2)
    victim = sorted(before)[0]

    def swap(point: str, where: str) -> None:
        if point == "pack-published":
            (fin / victim).rename(fin / "moved-away")
            (fin / victim).mkdir()
            (fin / victim / "new.txt").write_text("not what was packed\n")

    s = _sweep(tmp_path, swap)
    assert (s["archived"], s["failed"]) == (1, 1), s
    assert "replaced" in s["failures"][0]["reason"], s["failures"]
    assert (fin / victim / "new.txt").read_text() == "not what was packed\n"
    assert snapshot(fin / "moved-away") == before[victim]
    with packfile.Pack(fin / ("2026-11-23" + packfile.PACK_SUFFIX)) as p:
        assert sorted(p.names) == sorted(before)


def test_a_subdir_replaced_after_packing_is_seen_by_the_recheck_and_the_source_kept(
        tmp_path: Path) -> None:
    """The delete's re-check lstats each subdir by name against the fd the scan kept (no
    second open): a dir put in its place is another inode, so the source is kept whole."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 2)
    victim = sorted(before)[1]

    def swap(point: str, _where: str) -> None:
        if point == "pack-published":
            (fin / victim / "logs").rename(fin / victim / "logs.old")
            (fin / victim / "logs").mkdir()

    s = _sweep(tmp_path, swap)
    assert (s["archived"], s["failed"]) == (1, 1), s
    assert "changed" in s["failures"][0]["reason"], s["failures"]
    assert (fin / victim / "logs").is_dir() and (fin / victim / "logs.old").is_dir()
    got = snapshot(fin / victim)
    assert {k: v for k, v in got.items() if not k.startswith("logs")} == {
        k: v for k, v in before[victim].items() if not k.startswith("logs")}


def test_a_session_renamed_away_after_its_lock_is_not_packed(tmp_path: Path) -> None:
    """lock_batch's listing, read once every lock is held, says each name still is the dir
    locked (in place of an lstat per session): one renamed away meanwhile is left alone."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 3)
    first, second = sorted(before)[:2]

    def move(point: str, where: str) -> None:
        if point == "lock" and where.endswith(second) and (fin / first).exists():
            (fin / first).rename(fin / "moved-away")  # first is locked already

    s = _sweep(tmp_path, move)
    assert (s["archived"], s["failed"]) == (2, 1), s
    assert snapshot(fin / "moved-away") == before[first]
    with packfile.Pack(fin / ("2026-11-23" + packfile.PACK_SUFFIX)) as p:
        assert first not in p.names and len(p.names) == 2


def test_a_listing_whose_inode_numbers_differ_from_stat_still_packs_every_session(
        tmp_path: Path, monkeypatch) -> None:
    """Where a filesystem's d_ino is not st_ino (overlayfs may do that), the lstat that
    lock_session_stat made decides: nothing is taken for gone."""
    from archive_tool.engine import single

    real = single._archived_listing

    def skewed(parent_fd: int, sessions: int):
        names = real(parent_fd, sessions)
        return None if names is None else {n: ino + 1 for n, ino in names.items()}

    monkeypatch.setattr(single, "_archived_listing", skewed)
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 3)
    s = _sweep(tmp_path)
    assert (s["archived"], s["failed"]) == (3, 0), s
    with packfile.Pack(fin / ("2026-11-23" + packfile.PACK_SUFFIX)) as p:
        assert sorted(p.names) == sorted(before)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root: packs are handed to the dir's owner")
@pytest.mark.parametrize("case", ["another user's dir", "root's setgid dir", "root's dir"])
def test_a_pack_belongs_to_its_dirs_owner_and_group_chowned_only_when_needed(
        tmp_path: Path, case: str) -> None:
    """open_tmp skips the fchown of a file born with the owner it would be given (our euid,
    and our egid or a setgid dir's group); every other pack is still chowned."""
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    _sessions(fin, 2)
    want = {"another user's dir": (65534, 65534), "root's setgid dir": (0, 65534),
            "root's dir": (0, 0)}[case]
    if case == "another user's dir":
        subprocess.run(["chown", "-R", "65534:65534", str(fin)], check=True)
    elif case == "root's setgid dir":
        subprocess.run(["chown", "-R", "0:65534", str(fin)], check=True)
        fin.chmod(0o2755)
    s = _sweep(tmp_path)
    assert (s["archived"], s["failed"]) == (2, 0), s
    st = (fin / ("2026-11-23" + packfile.PACK_SUFFIX)).stat()
    assert (st.st_uid, st.st_gid) == want


@pytest.mark.parametrize(("lock_ahead", "held_max"), [(2, 512), (128, 0), (2, 0)])
def test_a_pack_bigger_than_its_locks_or_fd_budget_still_packs_and_deletes_every_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock_ahead: int,
        held_max: int) -> None:
    """Over LOCK_AHEAD sessions a pack locks by chunks, unlocks each after its frame and
    locks it again to delete; past HELD_MAX the delete opens each subdir itself."""
    from archive_tool.sweep import packwork

    monkeypatch.setattr(packwork, "LOCK_AHEAD", lock_ahead)
    monkeypatch.setattr(packwork, "HELD_MAX", held_max)
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    before = _sessions(fin, 5)
    s = _sweep(tmp_path)
    assert (s["archived"], s["failed"], s["packs"]) == (5, 0, 1), s
    assert not [p for p in fin.iterdir() if p.is_dir()]
    with packfile.Pack(fin / ("2026-11-23" + packfile.PACK_SUFFIX)) as p:
        assert sorted(p.names) == sorted(before)
