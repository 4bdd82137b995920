"""How a sweep batch is made durable (issue 15): parallel fsyncs by default, one syncfs
with SESSION_ARCHIVE_DURABILITY=syncfs. Either way a failure keeps every source of the
batch and publishes none of its archives."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.engine import commit
from archive_tool.sweep.sessions import sweep
from tests.conftest import make_session, snapshot
from tests.test_restore_group_commit import _break_sync

IDS = [f"2026Y-11M-23D-18h39m{s:02d}s_KYwP-main" for s in range(20, 26)]


def _tree(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    fin = tmp_path / "root" / "p" / "a_out" / "FINISHED_SUCCESS"
    before = {}
    for name in IDS:
        before[name] = snapshot(make_session(fin, name, extra=False))
    return fin, before


def _sweep(tmp_path: Path) -> dict:
    return sweep(tmp_path / "root", dry_run=False, workers=1, use_fd=False, batch_size=64,
                 format="tar.zst")


def _spy_syncfs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = fs.syncfs

    def spy(fd: int) -> bool:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(fs, "syncfs", spy)
    return calls


def test_default_batch_is_made_durable_by_fsyncs_not_syncfs(tmp_path, monkeypatch):
    monkeypatch.delenv(commit.DURABILITY_ENV, raising=False)
    fin, _ = _tree(tmp_path)
    calls = _spy_syncfs(monkeypatch)
    synced: list[int] = []
    real = os.fsync

    def count(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", count)
    s = _sweep(tmp_path)
    assert s["archived"] == len(IDS) and s["failed"] == 0
    assert calls == [] and len(synced) == len(IDS)
    assert sorted(p.name for p in fin.iterdir()) == sorted(f"{n}.tar.zst" for n in IDS)


def test_one_failed_fsync_keeps_every_source_of_the_batch(tmp_path, monkeypatch):
    monkeypatch.delenv(commit.DURABILITY_ENV, raising=False)
    fin, before = _tree(tmp_path)
    real = os.fsync
    seen = [0]

    def flaky(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen[0] += 1
            if seen[0] == 3:
                raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    s = _sweep(tmp_path)
    assert s["archived"] == 0 and s["failed"] == len(IDS)
    assert {n: snapshot(fin / n) for n in IDS} == before
    assert not list(fin.glob("*.tar.zst"))


def test_syncfs_strategy_syncs_once_per_batch(tmp_path, monkeypatch):
    monkeypatch.setenv(commit.DURABILITY_ENV, "syncfs")
    _tree(tmp_path)
    calls = _spy_syncfs(monkeypatch)
    s = _sweep(tmp_path)
    assert s["archived"] == len(IDS)
    assert len(calls) == 1


@pytest.mark.parametrize("strategy", ["syncfs", "fsync"])
def test_failed_sync_keeps_every_source_whatever_the_strategy(tmp_path, monkeypatch, strategy):
    fin, before = _tree(tmp_path)
    _break_sync(monkeypatch, strategy)
    s = _sweep(tmp_path)
    assert s["archived"] == 0 and s["failed"] == len(IDS)
    assert {n: snapshot(fin / n) for n in IDS} == before
    assert not list(fin.glob("*.tar.zst"))
