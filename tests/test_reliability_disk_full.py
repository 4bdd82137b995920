"""A real full disk: a size-limited tmpfs (mounted by the test; needs root, skipped
otherwise) filled mid-sweep. Sources kept, one clear error, exit 1, no tmp files; after
the filesystem grows, the next sweep finishes the job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from archive_tool.demo import make_tree
from archive_tool.sweep.sessions import sweep
from tests.reliability import assert_all_archived_once, check, snapshot_sessions
from tests.test_reliability_crash import _FALLBACK


@pytest.fixture
def small_fs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=755", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("fallback", [False, True], ids=["o_tmpfile", "named-tmp"])
@pytest.mark.timeout(60)
def test_disk_full_mid_sweep_keeps_sources_and_exits_1(small_fs: Path, fallback: bool) -> None:
    root = small_fs / "tree"
    # ~60 KiB of incompressible bytes per session: ~4 MiB of sessions on a 6 MiB disk,
    # archived in batches of 32, so archives fill it before the first sources go.
    make_tree(root, 70, seed=8, blob_bytes=60_000)
    before = snapshot_sessions(root)
    args = [str(root), "--execute", "-q", "-j", "1", "--batch-size", "32"]
    cmd = ([sys.executable, "-c", _FALLBACK, *args] if fallback
           else [sys.executable, "-m", "archive_tool", "sweep", *args])
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: disk full, sweep stopped") and "No space left" in last, err
    rep = check(root, before)
    assert rep.ok, rep
    assert rep.as_dir > 0, "the disk never filled up"
    assert not rep.leftovers, rep  # no *.tmp, no trash
    # More room, next sweep: everything archived once, nothing left over.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    s = sweep(root, dry_run=False, workers=1)
    assert s["failed"] == 0, s["failures"]
    assert_all_archived_once(root, before)
