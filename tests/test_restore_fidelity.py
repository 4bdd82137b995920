"""What a restore gives back (issue 11's fidelity list): modes as GNU tar gives them to the
user running it, special bits only on root's explicit request, sparse files stay sparse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from archive_tool.engine.extract import restore_mode
from archive_tool.engine.restore import restore_one
from archive_tool.engine.single import archive_one
from tests.conftest import make_session, run_cli


@pytest.mark.parametrize(("archived", "umask", "restored"), [
    (0o000, 0o022, 0o000),
    (0o664, 0o022, 0o644),
    (0o664, 0o002, 0o664),
    (0o4755, 0o022, 0o755),
    (0o2775, 0o002, 0o775),
    (0o1777, 0o022, 0o755),
])
def test_restore_mode_is_the_archived_bits_less_the_umask(archived: int, umask: int,
                                                          restored: int) -> None:
    assert restore_mode(archived, umask) == restored


def test_special_bits_only_on_explicit_request() -> None:
    assert restore_mode(0o4755, 0o022, keep_special=True) == 0o4755


def _round_trip(tmp_path: Path, modes: dict[str, int], **kw) -> Path:
    src = make_session(tmp_path / "FINISHED_SUCCESS", extra=False)
    for name, mode in modes.items():
        p = src / name
        p.write_text("x")
        os.chmod(p, mode)
    archive = archive_one(src, "tar.gz")
    return restore_one(archive, **kw)


def test_modes_survive_the_round_trip(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = _round_trip(tmp_path, {"none": 0o000, "shared": 0o664, "tool": 0o4755})
    finally:
        os.umask(old)
    assert (out / "none").stat().st_mode & 0o7777 == 0o000
    assert (out / "shared").stat().st_mode & 0o7777 == 0o644
    assert (out / "tool").stat().st_mode & 0o7777 == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="--keep-setuid is root's")
def test_root_keeps_setuid_only_when_asked(tmp_path: Path) -> None:
    src = make_session(tmp_path / "FINISHED_SUCCESS", extra=False)
    (src / "tool").write_text("x")
    os.chmod(src / "tool", 0o4755)
    archive = archive_one(src, "tar.gz", remove_src=False)
    r = run_cli("unpack", archive, "--dest", tmp_path / "a", "--keep-setuid")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "tool").stat().st_mode & 0o7777 == 0o4755
    r = run_cli("unpack", archive, "--dest", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b" / "tool").stat().st_mode & 0o7777 == 0o755


def test_sparse_file_restores_sparse(tmp_path: Path) -> None:
    src = make_session(tmp_path / "FINISHED_SUCCESS", extra=False)
    big = src / "sparse.bin"
    with open(big, "wb") as f:
        f.write(b"head")
        f.truncate(64 * 1024 * 1024)  # 64 MiB, nearly all hole
    archive = archive_one(src, "tar.zst")
    assert archive.stat().st_size < 1024 * 1024
    out = restore_one(archive)
    st = (out / "sparse.bin").stat()
    assert st.st_size == 64 * 1024 * 1024
    assert st.st_blocks * 512 < 4 * 1024 * 1024, st.st_blocks  # not 64 MiB of real disk
    with open(out / "sparse.bin", "rb") as f:
        assert f.read(4) == b"head" and f.read(1 << 20) == bytes(1 << 20)
