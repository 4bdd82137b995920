"""The archive's mode when its unnamed tmp is created with the mode it will have (issue 24:
no chmod when nothing differs): whatever the umask, a setgid dir or private files say,
the published archive has exactly archive_mode's bits."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from archive_tool.engine.single import archive_one
from tests.conftest import make_session


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027, 0o000])
def test_the_archive_mode_does_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    s = make_session(tmp_path / "FINISHED_SUCCESS")
    for p in [s, *s.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    old = os.umask(umask)
    try:
        archive = archive_one(s, "tar.zst")
    finally:
        os.umask(old)
    assert _mode(archive) == 0o644


def test_a_private_file_keeps_the_archive_private_whatever_the_umask(tmp_path: Path) -> None:
    s = make_session(tmp_path / "FINISHED_SUCCESS")
    private = next(p for p in s.rglob("*") if p.is_file())
    private.chmod(0o600)
    old = os.umask(0)
    try:
        archive = archive_one(s, "tar.gz")
    finally:
        os.umask(old)
    assert _mode(archive) == 0o600


def test_a_setgid_dir_of_another_group_takes_group_read_away(tmp_path: Path) -> None:
    """The archive gets the dir's group (setgid), not ours; a 0640 file of our group must
    not become readable by that group through the archive."""
    other = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getegid()), None)
    if other is None:
        pytest.skip("no second group on this host")
    parent = tmp_path / "FINISHED_SUCCESS"
    s = make_session(parent)
    for p in [s, *s.rglob("*")]:
        os.chmod(p, 0o750 if p.is_dir() else 0o640)
    os.chown(parent, -1, other)
    parent.chmod(0o2775)
    old = os.umask(0o022)
    try:
        archive = archive_one(s, "tar.zst")
    finally:
        os.umask(old)
    st = archive.stat()
    if os.geteuid() == 0:
        # As root the archive is handed to the session's owner and group (ours here).
        assert st.st_gid == os.getegid()
        assert _mode(archive) == 0o640
    else:
        assert st.st_gid == other
        assert _mode(archive) == 0o600
