"""Restore edge cases of issue 11: a restore with --remove-archive cut short between its
rename and the unlink finishes on a re-run; a small filesystem still takes a small session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.engine.restore import restore_one
from archive_tool.engine.single import archive_one
from tests.conftest import make_session, snapshot


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, dict]:
    src = make_session(tmp_path / "FINISHED_SUCCESS")
    before = snapshot(src)
    return archive_one(src, "tar.zst"), before


def test_remove_archive_cut_short_finishes_on_a_rerun(archived, monkeypatch) -> None:
    archive, before = archived
    real = fs.unlink_at

    def crash(dir_fd: int, name: str, missing_ok: bool = True) -> None:
        if name == archive.name:
            raise OSError(5, "Input/output error")
        real(dir_fd, name, missing_ok)

    monkeypatch.setattr(fs, "unlink_at", crash)
    with pytest.raises(OSError):
        restore_one(archive, remove_archive=True)
    monkeypatch.undo()
    dest = archive.parent / archive.name.removesuffix(".tar.zst")
    assert archive.exists() and snapshot(dest) == before
    assert restore_one(archive, remove_archive=True) == dest
    assert not archive.exists() and snapshot(dest) == before


def test_rerun_over_a_different_tree_keeps_the_archive(archived) -> None:
    archive, _ = archived
    restore_one(archive)  # archive kept
    dest = archive.parent / archive.name.removesuffix(".tar.zst")
    (dest / "logs" / "stdout.log").write_text("edited after the restore\n")
    with pytest.raises(FileExistsError, match="differs"):
        restore_one(archive, remove_archive=True)
    assert archive.exists()
    assert (dest / "logs" / "stdout.log").read_text() == "edited after the restore\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_small_filesystem_restores_a_small_session(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        src = mnt / "FINISHED_SUCCESS" / "2026Y-11M-23D-18h39m23s_KYwP-main"
        src.mkdir(parents=True)
        (src / "tiny.txt").write_text("6bytes")
        archive = archive_one(src, "tar.gz")
        # 8 MiB free is far below the old fixed 64 MiB reserve, which refused this.
        assert (restore_one(archive) / "tiny.txt").read_text() == "6bytes"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _leftover(parent: Path, dest_name: str, token: str) -> Path:
    """What a restore killed mid-extraction leaves: its hidden temp dir, half filled."""
    d = parent / f".{dest_name}.restore-{token}"
    (d / "logs").mkdir(parents=True)
    (d / "logs" / "half.log").write_text("cut short\n")
    return d


def test_next_restore_removes_a_killed_restores_temp_dir_but_not_a_live_one(archived) -> None:
    import fcntl

    archive, before = archived
    dest_name = archive.name.removesuffix(".tar.zst")
    dead = _leftover(archive.parent, dest_name, "deadbeef")
    live = _leftover(archive.parent, dest_name, "0badf00d")
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # a restore still working in it
    try:
        out = restore_one(archive)
    finally:
        os.close(held)
    assert snapshot(out) == before
    assert not dead.exists() and live.is_dir()


def test_bulk_restore_removes_leftovers_once_per_directory(tmp_path: Path) -> None:
    from archive_tool.restore.many import restore_many

    fin = tmp_path / "FINISHED_SUCCESS"
    names = [f"2026Y-11M-23D-18h39m23s_K{k:03d}-main" for k in range(3)]
    for n in names:
        archive_one(make_session(fin, n), "tar.zst")
    dead = _leftover(fin, names[1], "12345678")
    s = restore_many(fin, dry_run=False, workers=1)
    assert s["restored"] == 3 and s["failed"] == 0, s
    assert not dead.exists()
