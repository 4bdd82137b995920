"""I/O errors injected SQLite-style: count every file-system operation the engine makes
while archiving (open, read, write, fsync, syncfs, link, rename, unlink, rmdir, scandir,
chmod/chown), then re-run failing the Nth one — for every N — once, or from the Nth on
(a dying disk). After each run every session must be recoverable (tests/reliability.py),
and a clean run afterwards must finish the job with nothing left over.

Batches run in-process (``workers=1``: InlineExecutor) so the patched ``os`` is the one
the engine calls; discovery uses the scandir backend (fd is a subprocess).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from archive_tool import fs
from archive_tool.engine import commit
from archive_tool.engine.single import archive_one
from archive_tool.errors import ArchiveError
from archive_tool.sweep.sessions import sweep
from tests.conftest import SID, make_session
from tests.reliability import assert_all_archived_once, check, record, snapshot_sessions

OPS = ("open", "read", "pread", "write", "fsync", "link", "rename", "unlink", "rmdir",
       "scandir", "fchmod", "fchown", "ftruncate")


class Faults:
    """Counts operations; fails the *fail_at*-th (and with *persistent* every later one)."""

    def __init__(self, fail_at: int = 0, persistent: bool = False, err: int = errno.EIO) -> None:
        self.fail_at, self.persistent, self.err = fail_at, persistent, err
        self.n = 0
        self.fired: list[str] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def op(*a: Any, **k: Any) -> Any:
            self.n += 1
            if self.fail_at and (self.n == self.fail_at or (self.persistent and self.n > self.fail_at)):
                self.fired.append(name)
                e = errno.ENOSPC if name == "write" and self.err == errno.ENOSPC else self.err
                raise OSError(e, os.strerror(e))
            return fn(*a, **k)
        return op

    def install(self, mp: pytest.MonkeyPatch) -> None:
        for name in OPS:
            mp.setattr(os, name, self.wrap(name, getattr(os, name)))
        mp.setattr(commit, "_syncfs", self.wrap("syncfs", commit._syncfs))
        # The rename of a source to its trash name is renameat2(NOREPLACE) through libc
        # (issue 24), which the os wrappers above do not see.
        mp.setattr(fs, "rename_noreplace_at", self.wrap("rename", fs.rename_noreplace_at))


def _template(tmp: Path) -> Path:
    """Three fresh sessions, one with a committed archive beside it (a crash before the
    delete), one trash dir of an interrupted delete, one RUNNING session."""
    t = tmp / "template"
    fin = t / "p" / "a_out" / "FINISHED_SUCCESS"
    for k in range(3):
        make_session(fin, f"{SID[:-4]}NEW{k}-main", extra=k == 0)
    both = make_session(fin, f"{SID[:-4]}BOTH-main", extra=False)
    archive_one(both, "tar.zst", remove_src=False)
    gone = make_session(fin, f"{SID[:-4]}TRSH-main", extra=False)
    archive_one(gone, "tar.zst", remove_src=False)
    make_session(t / "p" / "a_out" / "RUNNING", f"{SID[:-4]}RUNN-main", extra=False)
    before = snapshot_sessions(t)
    os.rename(gone, fin / f".{gone.name}.deleting")
    return t, before


def _run(fn: Callable[[], Any], faults: Faults, mp: pytest.MonkeyPatch) -> BaseException | None:
    with mp.context() as m:
        faults.install(m)
        try:
            fn()
        except (ArchiveError, OSError) as e:  # an error reported to the caller is fine
            return e
    return None


def _sweep(root: Path, batch: int) -> Callable[[], Any]:
    return lambda: sweep(root, dry_run=False, workers=1, use_fd=False, batch_size=batch,
                         format="tar.zst")


def _single(root: Path) -> Callable[[], Any]:
    src = root / "p" / "a_out" / "FINISHED_SUCCESS" / f"{SID[:-4]}NEW0-main"
    return lambda: archive_one(src, "tar.gz")


@pytest.mark.parametrize("persistent", [False, True], ids=["fail-once", "fail-from-N-on"])
@pytest.mark.parametrize("what", ["batch-commit", "one-per-batch", "single-session"])
@pytest.mark.timeout(120)
def test_io_error_at_every_step_leaves_every_session_recoverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, persistent: bool
) -> None:
    template, before = _template(tmp_path)

    def job(root: Path) -> Callable[[], Any]:
        if what == "single-session":
            return _single(root)
        return _sweep(root, 8 if what == "batch-commit" else 1)

    # Count the operations of a clean run, then fail each one in turn.
    probe = tmp_path / "probe"
    shutil.copytree(template, probe, symlinks=True)
    counting = Faults()
    assert _run(job(probe), counting, monkeypatch) is None
    total = counting.n
    assert total > 40, total
    kinds: set[str] = set()
    checked = 0
    for n in range(1, total + 1):
        root = tmp_path / f"n{n}"
        shutil.copytree(template, root, symlinks=True)
        faults = Faults(n, persistent)
        _run(job(root), faults, monkeypatch)
        kinds.update(faults.fired)
        rep = check(root, before)
        checked += rep.checked
        assert rep.ok, f"failing op #{n} ({faults.fired[:1]}): {rep}"
        # Nothing on the disk is broken, and no lock or fd was left held: a clean run
        # finishes the job.
        s = sweep(root, dry_run=False, workers=1, use_fd=False, format="tar.zst")
        assert s["failed"] == 0, (n, faults.fired[:1], s["failures"])
        if what != "single-session":
            assert_all_archived_once(root, before)
        shutil.rmtree(root)
    record(f"io errors ({what}, {'persistent' if persistent else 'once'})",
           {"runs": total, "sessions_checked": checked, "lost": 0})
    assert {"write", "fsync", "link", "unlink", "rename"} <= kinds, kinds
    if what == "batch-commit" and commit.durability() == "syncfs":
        assert "syncfs" in kinds


@pytest.mark.parametrize("fallback", [False, True], ids=["o_tmpfile", "named-tmp"])
def test_enospc_while_writing_keeps_source_and_leaves_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool
) -> None:
    template, before = _template(tmp_path)
    root = tmp_path / "r"
    shutil.copytree(template, root, symlinks=True)
    if fallback:
        monkeypatch.setattr(commit, "_no_tmpfile_devs", {os.stat(root).st_dev})
    with monkeypatch.context() as m:
        m.setattr(os, "write", Faults(1, True, errno.ENOSPC).wrap("write", os.write))
        s = sweep(root, dry_run=False, workers=1, use_fd=False, batch_size=1, format="tar.zst")
    assert s["stopped"] and "disk full" in s["stopped"], s
    rep = check(root, before)
    assert rep.ok and not [p for p in rep.leftovers if p.endswith(".tmp")], rep
