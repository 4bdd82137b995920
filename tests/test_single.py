"""One session <-> one archive: round trips, GNU tar interop, refusals, failure injection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from archive_tool.engine import commit, single, tarwrite
from archive_tool.engine.read import list_members, verify_archive
from archive_tool.engine.restore import restore_one
from archive_tool.engine.scan import scan_session
from archive_tool.errors import (
    ArchiveError,
    DurabilityError,
    SourceChanged,
    SourceUnreadable,
    UnsafeArchive,
    UnsafeSource,
    UnsupportedFormat,
    VerifyFailed,
)
from scitex_session.archive import archive_session_dir, restore_session_archive
from tests.conftest import (
    FORMATS,
    SID,
    as_nobody,
    make_session,
    needs_gnu_tar,
    needs_zstd,
    snapshot,
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_restores_every_byte_mode_mtime_and_link(tmp_path: Path, fmt: str) -> None:
    src = make_session(tmp_path / "FINISHED_SUCCESS")
    before = snapshot(src)
    archive = archive_session_dir(src, format=fmt)
    assert archive == src.with_name(src.name + "." + fmt)
    assert not src.exists()
    restored = restore_session_archive(archive)
    assert restored == src
    assert snapshot(restored) == before
    assert archive.exists()  # remove_archive defaults to False


@pytest.mark.parametrize("fmt", FORMATS)
def test_archive_top_level_dir_is_the_session_name(tmp_path: Path, fmt: str) -> None:
    src = make_session(tmp_path)
    archive = archive_session_dir(src, format=fmt, remove_src=False)
    tops = {m.name.split("/")[0] for m in list_members(archive)}
    assert tops == {src.name}
    assert src.exists()


def test_unknown_format_names_the_valid_ones(session: Path) -> None:
    with pytest.raises(UnsupportedFormat, match="tar.zst, tar.gz, tar.xz, tar"):
        archive_session_dir(session, format="zip")
    assert session.exists()


def test_existing_archive_is_never_overwritten(session: Path) -> None:
    existing = session.with_name(session.name + ".tar.gz")
    existing.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        archive_session_dir(session, format="tar.gz")
    assert existing.read_bytes() == b"precious"
    assert session.exists()


def test_stale_named_tmp_from_a_crash_is_removed(session: Path, monkeypatch) -> None:
    # Force the named-tmp fallback used on filesystems without O_TMPFILE.
    monkeypatch.setattr(commit, "_no_tmpfile_devs", {os.stat(session.parent).st_dev})
    stale = session.with_name(session.name + ".tar.zst.tmp")
    stale.write_bytes(b"half an archive")
    archive = archive_session_dir(session, format="tar.zst")
    assert not stale.exists()
    assert verify_archive(archive).members > 0
    assert sorted(p.name for p in session.parent.iterdir()) == [archive.name]


def test_large_file_streams_with_flat_memory(tmp_path: Path) -> None:
    src = tmp_path / f"{SID}-big"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:  # 80 MiB, not all zeros so it really compresses
        chunk = os.urandom(1 << 20)
        for i in range(80):
            f.write(chunk if i % 8 == 0 else b"\0" * (1 << 20))
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss
    # across fork+exec, so a child of a fat pytest would report pytest's size.
    code = (
        "import sys; from archive_tool.engine.single import archive_one;"
        "archive_one(sys.argv[1], 'tar.zst');"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                         check=True)
    peak_kib = int(out.stdout.strip())
    assert peak_kib < 80 * 1024, f"peak RSS {peak_kib} KiB: the file was loaded into memory"
    restored = restore_one(str(src) + ".tar.zst")
    assert (restored / "big.bin").stat().st_size == 80 << 20


@needs_gnu_tar
@pytest.mark.parametrize("fmt,flag", [
    ("tar.gz", "-z"), pytest.param("tar.zst", "--zstd", marks=needs_zstd), ("tar.xz", "-J"), ("tar", ""),
])
def test_gnu_tar_extracts_our_archive_to_identical_bytes(tmp_path: Path, fmt: str, flag: str) -> None:
    src = make_session(tmp_path / "F")
    before = snapshot(src)
    archive = archive_session_dir(src, format=fmt)
    out = tmp_path / "gnu"
    out.mkdir()
    cmd = ["tar", "-x", "-f", str(archive), "-C", str(out)] + ([flag] if flag else [])
    subprocess.run(cmd, check=True)
    assert snapshot(out / src.name) == before


@needs_gnu_tar
@pytest.mark.parametrize("fmt,flag", [
    ("tar.gz", "-z"), pytest.param("tar.zst", "--zstd", marks=needs_zstd), ("tar.xz", "-J"), ("tar", ""),
])
def test_we_restore_archives_written_by_gnu_tar(tmp_path: Path, fmt: str, flag: str) -> None:
    src = make_session(tmp_path / "F")
    before = snapshot(src)
    archive = tmp_path / "F" / f"{src.name}.{fmt}"
    cmd = ["tar", "-c", "-f", str(archive), "-C", str(src.parent), src.name] + ([flag] if flag else [])
    subprocess.run(cmd, check=True)
    restored = restore_one(archive, tmp_path / "restored")
    assert snapshot(restored) == before


@pytest.mark.parametrize("make", ["fifo", "socket", "device", "abs_link", "escaping_link", "dot_link_trick"])
def test_unsafe_entries_are_refused_and_the_session_kept(tmp_path: Path, make: str) -> None:
    src = make_session(tmp_path)
    if make == "fifo":
        os.mkfifo(src / "pipe")
    elif make == "socket":
        # Bound by a relative name: AF_UNIX paths are capped at 108 bytes, and pytest-xdist's
        # tmp paths can be longer.
        cwd = os.getcwd()
        os.chdir(src)
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind("sock")
        finally:
            os.chdir(cwd)
    elif make == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root (CI runs as root)")
        os.mknod(src / "dev", 0o600 | 0o020000, os.makedev(1, 3))
    elif make == "abs_link":
        os.symlink("/etc/passwd", src / "passwd")
    elif make == "escaping_link":
        os.symlink("../../outside", src / "logs" / "out")
    else:  # each link lexically inside, together outside: here -> ".", there -> "here/../x"
        os.symlink(".", src / "here")
        os.symlink("here/../x", src / "there")
    before = snapshot(src)
    with pytest.raises(UnsafeSource) as e:
        archive_session_dir(src, format="tar.zst")
    assert str(src) in str(e.value)
    assert snapshot(src) == before
    assert [p.name for p in src.parent.iterdir()] == [src.name]


def test_unreadable_file_gives_clear_error_and_keeps_source(world_dir: Path) -> None:
    # As root nothing is unreadable: run the pack as nobody on a tree nobody owns but one file.
    base = world_dir / "w"
    base.mkdir()
    src = make_session(base, extra=False)
    secret = src / "logs" / "secret.log"
    secret.write_text("x")
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(base):
            for n in [dirpath] + [os.path.join(dirpath, f) for f in dirnames + filenames]:
                os.chown(n, 65534, 65534)
        os.chown(secret, 0, 0)
        os.chmod(secret, 0o600)
    else:
        os.chmod(secret, 0)
    code = as_nobody("sys.argv = ['session-archive', 'pack', sys.argv[1]]; archive_tool.cli.main()")
    r = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: ") and "permission denied" in r.stderr
    assert "Traceback" not in r.stderr
    assert secret.exists() and not list(base.glob("*.tar.*"))


def test_file_growing_while_archived_is_detected_and_source_kept(session: Path, monkeypatch) -> None:
    victim = session / "logs" / "stdout.log"
    real_fstat = os.fstat
    victim_ino = victim.stat().st_ino
    calls = {"n": 0}

    def fstat_then_append(fd):  # a file's fstat is taken after reading it
        st = real_fstat(fd)
        if st.st_ino == victim_ino and not calls["n"]:
            calls["n"] += 1
            with open(victim, "a") as f:
                f.write("one more line\n")
        return st

    monkeypatch.setattr(single.os, "fstat", fstat_then_append)
    with pytest.raises(SourceChanged):
        archive_session_dir(session, format="tar.zst")
    monkeypatch.undo()
    assert victim.read_text().endswith("one more line\n")
    assert not list(session.parent.glob("*.tar*"))


def test_file_shrinking_while_archived_is_detected(session: Path, monkeypatch) -> None:
    victim = session / "logs" / "stdout.log"
    real_read = os.read

    def read_after_truncate(fd, n):
        if os.fstat(fd).st_ino == victim.stat().st_ino and victim.stat().st_size > 10:
            os.truncate(victim, 10)
        return real_read(fd, n)

    monkeypatch.setattr(single.os, "read", read_after_truncate)
    with pytest.raises(SourceChanged):
        archive_session_dir(session, format="tar.gz")
    assert session.exists() and not list(session.parent.glob("*.tar*"))


def test_file_added_after_archiving_stops_the_delete(session: Path, monkeypatch) -> None:
    real = commit.fsync_dir

    def fsync_then_write(fd, where):
        real(fd, where)
        (session / "logs" / "late.log").write_text("written after the archive was made\n")

    monkeypatch.setattr(commit, "fsync_dir", fsync_then_write)
    with pytest.raises(SourceChanged, match="appeared"):
        archive_session_dir(session, format="tar.zst")
    assert (session / "logs" / "late.log").exists()
    assert not list(session.parent.glob("*.tar.zst"))  # the stale archive is removed
    assert not list(session.parent.glob(".*"))  # no trash left


@pytest.mark.parametrize("step", ["verify", "fsync", "publish", "dir_fsync", "delete"])
def test_failure_at_any_step_leaves_the_source_intact(session: Path, monkeypatch, step: str) -> None:
    before = snapshot(session)

    def boom(*_a, **_k):
        raise OSError(5, "Input/output error")

    if step == "verify":
        monkeypatch.setattr(single, "decompress_bytes", lambda *a, **k: b"not the same")
        expected = VerifyFailed
    elif step == "fsync":
        monkeypatch.setattr(commit.os, "fsync", boom)
        expected = DurabilityError
    elif step == "publish":
        monkeypatch.setattr(commit.os, "link", boom)
        expected = ArchiveError
    elif step == "dir_fsync":
        monkeypatch.setattr(commit, "fsync_dir", lambda fd, p: (_ for _ in ()).throw(DurabilityError(p, "x")))
        expected = DurabilityError
    else:
        # The rename to the trash name (renameat2 NOREPLACE, os.rename where there is none).
        monkeypatch.setattr(commit.fs, "rename_noreplace_at", boom)
        monkeypatch.setattr(commit.os, "rename", boom)
        expected = OSError
    with pytest.raises(expected):
        archive_session_dir(session, format="tar.zst")
    monkeypatch.undo()
    assert snapshot(session) == before
    leftovers = [p.name for p in session.parent.iterdir() if p.name != session.name]
    if step in ("dir_fsync", "delete"):
        # The archive was committed before the failure: source + complete archive is a
        # recoverable state, and the archive must be complete.
        assert leftovers == [session.name + ".tar.zst"]
        assert verify_archive(session.parent / leftovers[0]).members == len(before) + 1
    else:
        assert leftovers == []


def test_archive_is_no_more_readable_than_its_most_private_file(session: Path) -> None:
    os.chmod(session / "CONFIGS" / "CONFIG.yaml", 0o600)
    archive = archive_session_dir(session, format="tar.zst")
    assert archive.stat().st_mode & 0o077 == 0


def test_restore_never_overwrites_and_leaves_nothing_on_refusal(session: Path) -> None:
    archive = archive_session_dir(session, format="tar.zst", remove_src=False)
    with pytest.raises(FileExistsError):
        restore_session_archive(archive)  # the session dir is still there
    empty = session.parent / "empty"
    empty.mkdir()
    with pytest.raises(FileExistsError):
        restore_session_archive(archive, dest_dir=empty)
    assert list(empty.iterdir()) == []


def test_restore_with_remove_archive_deletes_it_only_after_success(session: Path) -> None:
    archive = archive_session_dir(session, format="tar.gz")
    restored = restore_session_archive(archive, remove_archive=True)
    assert restored.is_dir() and not archive.exists()


@pytest.mark.parametrize("evil", ["abs", "dotdot", "symlink_escape", "hardlink_escape", "device"])
def test_restore_refuses_hostile_members_and_leaves_nothing(tmp_path: Path, evil: str) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        ti = tarfile.TarInfo(f"{SID}-x")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        ti = tarfile.TarInfo({"abs": "/tmp/evil_abs", "dotdot": f"{SID}-x/../../evil"}.get(evil, f"{SID}-x/e"))
        if evil == "symlink_escape":
            ti.type, ti.linkname = tarfile.SYMTYPE, "../../../etc"
        elif evil == "hardlink_escape":
            ti.type, ti.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        elif evil == "device":
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
        tf.addfile(ti, None)
    with pytest.raises(UnsafeArchive):
        restore_one(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]
    with pytest.raises(UnsafeArchive):
        verify_archive(archive)


def test_corrupt_archive_is_reported_not_extracted(session: Path) -> None:
    archive = archive_session_dir(session, format="tar.zst")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        verify_archive(archive)
    with pytest.raises(ArchiveError):
        restore_one(archive)
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]


def test_scan_lists_parents_before_children_sorted(session: Path) -> None:
    rels = [e.rel for e in scan_session(str(session))]
    assert rels[0] == ""
    for i, r in enumerate(rels[1:], 1):
        parent = r.rsplit("/", 1)[0] if "/" in r else ""
        assert parent in rels[:i]


def test_fast_header_is_byte_identical_to_tarfile(session: Path) -> None:
    top = session.name
    for e in scan_session(str(session)):
        name = f"{top}/{e.rel}" if e.rel else top
        assert tarwrite.tar_header(e, top) == tarwrite._header_tarfile(e, name), e.rel


def test_source_unreadable_dir_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreadable):
        single.prepare(tmp_path / "nope", "tar.zst")
