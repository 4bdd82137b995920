"""Issue 24 for ``sweep --pack auto``: the checks that kept their meaning when the
spanning pack worker (sweep/packspan.py) took packwork's cuts: locks by lock_batch below
the pack's dir, each lock kept to its delete within an fd budget, the scan's subdir fds
kept for the re-check (the per-session count bound is in test_md_calls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archive_tool.pack import packfile
from archive_tool.sweep import packspan
from tests.conftest import make_session, snapshot
from tests.test_pack_calls import _sweep as sweep_with_hook

DAY = "2026Y-11M-23D"


def _tree(root: Path, dirs: int, per_dir: int) -> dict[str, dict]:
    """*dirs* scripts' FINISHED_SUCCESS dirs of *per_dir* sessions: {entry path: snapshot}."""
    out = {}
    for d in range(dirs):
        fin = root / "proj" / f"s{d:03d}_out" / "FINISHED_SUCCESS"
        fin.mkdir(parents=True)
        for i in range(per_dir):
            s = make_session(fin, f"{DAY}-10h{i:02d}m{d % 60:02d}s_P{d:03d}{i:02d}-main")
            out[str(s.relative_to(root / "proj"))] = snapshot(s)
    return out


def _sweep(root: Path, hook=None) -> dict:
    return sweep_with_hook(root, hook, "auto")


def _left(root: Path) -> list[Path]:
    return sorted(root.rglob(f"FINISHED_SUCCESS/{DAY}-*-main"))


def _all_packed(root: Path, before: dict[str, dict], n: int) -> None:
    """*n* sessions archived into one pack in ROOT/proj, none left, none failed."""
    s = _sweep(root)
    assert (s["archived"], s["failed"], s["packs"]) == (n, 0, 1), s
    assert not _left(root)
    (pack,) = (root / "proj").glob("*" + packfile.PACK_SUFFIX)
    with packfile.Pack(pack) as p:
        assert sorted(p.names) == sorted(before)


def test_a_pack_over_more_dirs_than_its_dir_cache_packs_and_deletes_every_session(
        tmp_path: Path) -> None:
    """70 dirs in one lock batch (LOCK_AHEAD 128) against an EntryDirs cache of 64: the
    listing that follows the locks is taken on each session's own dir, never on an fd the
    cache closed and the kernel gave to another dir."""
    _all_packed(tmp_path, _tree(tmp_path, 70, 1), 70)


@pytest.mark.parametrize(("lock_ahead", "budget"), [(2, 1_000), (128, 0), (2, 3)])
def test_a_pack_past_its_locks_or_fd_budget_still_packs_and_deletes_every_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock_ahead: int, budget: int) -> None:
    """Locks taken LOCK_AHEAD at a time; past the fd budget a session's lock is closed
    after its frame and taken again (below the pack's dir) to delete."""
    monkeypatch.setattr(packspan, "LOCK_AHEAD", lock_ahead)
    monkeypatch.setattr(packspan, "_fd_budget", lambda: budget)
    _all_packed(tmp_path, _tree(tmp_path, 3, 2), 6)


@pytest.mark.parametrize("budget", [1_000, 0])
def test_a_session_dir_swapped_after_an_auto_pack_is_kept_and_never_entered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """The lock kept from the scan (or, past the budget, taken again) serves the delete:
    a dir put in the session's place after the pack was linked is not the inode packed,
    so it is renamed back and kept whole; the pack keeps the frame of what was read."""
    monkeypatch.setattr(packspan, "_fd_budget", lambda: budget)
    before = _tree(tmp_path, 2, 1)
    victim = tmp_path / "proj" / sorted(before)[0]

    def swap(point: str, _where: str) -> None:
        if point == "pack-published":
            victim.rename(victim.parent / "moved-away")
            victim.mkdir()
            (victim / "new.txt").write_text("not what was packed\n")

    s = _sweep(tmp_path, swap)
    assert (s["archived"], s["failed"]) == (1, 1), s
    assert "replaced" in s["failures"][0]["reason"], s["failures"]
    assert (victim / "new.txt").read_text() == "not what was packed\n"
    assert snapshot(victim.parent / "moved-away") == before[sorted(before)[0]]


def test_a_subdir_replaced_after_an_auto_pack_is_seen_by_the_recheck_and_kept(
        tmp_path: Path) -> None:
    """The scan's subdir fds kept for the delete: a dir put in a subdir's place after
    packing is another inode, so the re-check keeps the source whole."""
    _tree(tmp_path, 2, 1)
    victim = _left(tmp_path)[0]
    sub = next(p for p in victim.iterdir() if p.is_dir())

    def swap(point: str, _where: str) -> None:
        if point == "pack-published":
            sub.rename(victim / "old-sub")
            sub.mkdir()

    s = _sweep(tmp_path, swap)
    assert (s["archived"], s["failed"]) == (1, 1), s
    assert victim.is_dir() and (victim / "old-sub").is_dir()
