"""Bulk restore with --remove-archive commits per batch like the sweep (issue 15): every
archive of a batch is restored first, one group sync makes the trees durable (one syncfs
by default, or parallel fsyncs of every restored file and dir), and only then are the
archives unlinked. A failed sync keeps every archive of the batch."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.engine import commit
from archive_tool.engine.restore import restore_one
from archive_tool.engine.single import archive_one
from archive_tool.restore.many import restore_many, restore_tree
from tests.conftest import make_session, snapshot

IDS = [f"2026Y-11M-23D-18h39m{s:02d}s_KYwP" for s in range(10, 15)]


def _archives(parent: Path) -> tuple[list[Path], dict[str, dict]]:
    parent.mkdir(parents=True, exist_ok=True)
    out, before = [], {}
    for sid in IDS:
        src = make_session(parent, sid, extra=sid == IDS[0])
        before[sid] = snapshot(src)
        out.append(archive_one(src, "tar.zst"))
    return out, before


def _count_syncfs(monkeypatch, archives: list[Path], dests: list[Path]) -> list[tuple]:
    """Record, at each syncfs, how many archives still exist and how many trees are in
    place: the order of the group commit, seen from the filesystem."""
    calls: list[tuple] = []
    real = fs.syncfs

    def spy(fd: int) -> bool:
        calls.append((sum(a.exists() for a in archives), sum(d.is_dir() for d in dests)))
        return real(fd)

    monkeypatch.setattr(fs, "syncfs", spy)
    return calls


def test_bulk_restore_syncs_once_per_batch_before_unlinking_any_archive(tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "syncfs")
    archives, before = _archives(tmp_path / "flat")
    dests = [tmp_path / "flat" / sid for sid in IDS]
    calls = _count_syncfs(monkeypatch, archives, dests)
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1,
                     batch_size=32)
    assert s["restored"] == len(IDS) and s["failed"] == 0
    # One batch: one sync, taken when every tree was in place and no archive yet removed.
    assert calls == [(len(IDS), len(IDS))]
    assert not any(a.exists() for a in archives)
    assert {sid: snapshot(tmp_path / "flat" / sid) for sid in IDS} == before


def test_bulk_restore_takes_one_sync_per_batch(tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "syncfs")
    archives, _ = _archives(tmp_path / "flat")
    calls = _count_syncfs(monkeypatch, archives, [tmp_path / "flat" / sid for sid in IDS])
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1,
                     batch_size=2)
    assert s["restored"] == len(IDS)
    assert len(calls) == 3  # batches of 2, 2, 1


def _break_sync(monkeypatch, strategy: str) -> None:
    """Make the strategy's sync of restored files fail with EIO."""
    monkeypatch.setenv(commit.DURABILITY_ENV, strategy)

    def broken(*_a: object) -> bool:
        raise OSError(errno.EIO, "Input/output error")

    real = os.fsync
    monkeypatch.setattr(fs, "syncfs", broken)
    monkeypatch.setattr(os, "fsync", lambda fd: broken() if stat.S_ISREG(os.fstat(fd).st_mode)
                        else real(fd))


@pytest.mark.parametrize("strategy", ["fsync", "syncfs"])
def test_failed_sync_keeps_every_archive_of_the_batch(tmp_path, monkeypatch, strategy):
    archives, _ = _archives(tmp_path / "flat")
    _break_sync(monkeypatch, strategy)
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1)
    assert s["restored"] == 0 and s["failed"] == len(IDS)
    assert all(f"{strategy} failed" in f["reason"] for f in s["failures"])
    assert all(a.is_file() for a in archives)


def test_fsync_restore_fsyncs_every_restored_file_before_unlinking_any_archive(
        tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "fsync")
    archives, before = _archives(tmp_path / "flat")
    files = sum(1 for snap in before.values() for v in snap.values() if v[0] == "f")
    seen: list[int] = []  # archives still there at each fsync of a restored file
    real = os.fsync

    def spy(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(sum(a.exists() for a in archives))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1)
    assert s["restored"] == len(IDS)
    assert seen == [len(IDS)] * files
    assert not any(a.exists() for a in archives)


def test_failed_dir_fsync_keeps_every_archive_of_the_batch(tmp_path, monkeypatch):
    archives, _ = _archives(tmp_path / "flat")
    real = os.fsync

    def broken(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", broken)
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1)
    assert s["restored"] == 0 and s["failed"] == len(IDS)
    assert all(a.is_file() for a in archives)


def test_a_corrupt_archive_fails_alone_and_the_rest_of_the_batch_commits(tmp_path):
    archives, before = _archives(tmp_path / "flat")
    bad = archives[2]
    bad.write_bytes(bad.read_bytes()[:40])
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1)
    assert s["restored"] == len(IDS) - 1 and s["failed"] == 1
    assert s["failures"][0]["path"] == str(bad)
    assert bad.is_file() and not (tmp_path / "flat" / IDS[2]).exists()
    assert [a.exists() for a in archives] == [a == bad for a in archives]
    for sid in IDS[:2] + IDS[3:]:
        assert snapshot(tmp_path / "flat" / sid) == before[sid]


def test_tree_restore_commits_per_batch_across_finished_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "syncfs")
    a1, _ = _archives(tmp_path / "proj" / "FINISHED_SUCCESS")
    a2 = [archive_one(make_session(tmp_path / "proj2" / "FINISHED_ERROR", IDS[0]), "tar.gz")]
    calls = _count_syncfs(monkeypatch, a1 + a2, [])
    s = restore_tree(tmp_path, dry_run=False, remove_archive=True, workers=1)
    assert s["restored"] == len(IDS) + 1 and s["failed"] == 0
    assert len(calls) == 1 and calls[0][0] == len(IDS) + 1
    assert not any(a.exists() for a in a1 + a2)


def test_single_restore_still_syncs_before_unlinking(tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "syncfs")
    archives, before = _archives(tmp_path / "flat")
    calls = _count_syncfs(monkeypatch, archives[:1], [tmp_path / "flat" / IDS[0]])
    restore_one(archives[0], remove_archive=True)
    assert calls == [(1, 1)]
    assert not archives[0].exists()
    assert snapshot(tmp_path / "flat" / IDS[0]) == before[IDS[0]]


@pytest.mark.parametrize("strategy", ["fsync", "syncfs"])
def test_single_restore_with_failed_sync_keeps_its_archive(tmp_path, monkeypatch, strategy):
    archives, _ = _archives(tmp_path / "flat")
    _break_sync(monkeypatch, strategy)
    with pytest.raises(Exception, match=f"{strategy} failed"):
        restore_one(archives[0], remove_archive=True)
    assert archives[0].is_file()


def test_fsync_of_a_wide_tree_goes_in_chunks_and_misses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "fsync")
    src = make_session(tmp_path, IDS[0], extra=False)
    for i in range(300):
        (src / "logs" / f"part{i:03d}.log").write_text(f"line {i}\n")
    before = snapshot(src)
    archive = archive_one(src, "tar.zst")
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    out = restore_one(archive, remove_archive=True)
    assert snapshot(out) == before and not archive.exists()
    inodes = {p.lstat().st_ino for p in [out, *out.rglob("*")] if not p.is_symlink()}
    assert inodes <= set(synced)  # every restored file and dir, the tree's top included


def test_restore_defaults_to_one_syncfs_per_batch(tmp_path, monkeypatch):
    monkeypatch.delenv(commit.DURABILITY_ENV, raising=False)
    archives, _ = _archives(tmp_path / "flat")
    calls = _count_syncfs(monkeypatch, archives, [tmp_path / "flat" / sid for sid in IDS])
    s = restore_many(tmp_path / "flat", remove_archive=True, dry_run=False, workers=1)
    assert s["restored"] == len(IDS) and len(calls) == 1
