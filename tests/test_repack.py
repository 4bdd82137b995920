"""``repack``: packs rewritten without restored or dropped sessions, small packs merged;
frames copied compressed; the old pack goes only after the new one is durable and
catalogued (issue 14)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from archive_tool.catalog import catalog, rebuild
from archive_tool.pack import packfile
from archive_tool.retention.repack import repack
from archive_tool.sweep.packsweep import pack_sweep
from tests.conftest import crash_at, run_cli, snapshot
from tests.test_pack import DAY, _holdings, _packs, _tree

SUCCESS = "train_out/FINISHED_SUCCESS"


def _frames(pack: Path) -> dict[str, bytes]:
    """Session name -> its frame's compressed bytes."""
    data = pack.read_bytes()
    with packfile.Pack(pack) as p:
        return {n: data[p.frames.offset[i]:p.frames.offset[i] + p.frames.csize[i]]
                for i, n in enumerate(p.names)}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _three_days(root: Path) -> dict[str, dict]:
    before = {}
    for day in ("2026Y-11M-23D", "2026Y-11M-24D", "2026Y-11M-25D"):
        before |= _tree(root, 3, day=day)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    return before


def test_restored_sessions_are_dropped_and_every_kept_one_comes_back_byte_identical(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 8)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    old = root / SUCCESS / "2026-11-23.pack.tar.zst"
    old_frames = _frames(old)
    back = [f"{DAY}-10h01m00s_S001-main", f"{DAY}-10h04m00s_S004-main"]
    for name in back:
        assert run_cli("unpack", old, "-s", name).returncode == 0
    files = _files(root)
    r = run_cli("repack", root)  # dry run
    assert r.returncode == 0, r.stderr
    assert b"would repack 2026-11-23.pack.tar.zst" in r.stdout and b"2 dropped" in r.stdout
    assert _files(root) == files  # nothing changed, catalog included
    r = run_cli("repack", root, "--execute")
    assert r.returncode == 0, r.stderr
    new = root / SUCCESS / "2026-11-23.2.pack.tar.zst"
    assert not old.exists() and new.exists()
    assert run_cli("verify", new).returncode == 0
    kept = [n for n in old_frames if n not in back]
    # Frames copied as they were: the same compressed bytes, no recompression.
    assert _frames(new) == {n: old_frames[n] for n in kept}
    for name in back:  # the restored dirs stay, untouched
        assert snapshot(root / SUCCESS / name) == before[name]
    for name in kept:
        dest = tmp_path / "u" / name
        assert run_cli("unpack", new, "-s", name, "-d", dest).returncode == 0
        assert snapshot(dest) == before[name]
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", new, "-C", out], check=True)
    assert sorted(os.listdir(out)) == sorted(kept)
    for name in kept:
        assert snapshot(out / name) == before[name]
    rows = {r["name"]: r for r in catalog.all_rows(root) if r["state"] == "FINISHED_SUCCESS"}
    assert sorted(rows) == sorted(kept)  # restored sessions are no longer catalogued
    with packfile.Pack(new) as p:
        for name, row in rows.items():
            assert row["archive"] == f"{SUCCESS}/2026-11-23.2.pack.tar.zst"
            assert (row["frame"], row["offset"]) == (p.find(name), p.frames[p.find(name)].offset)
    assert run_cli("repack", root, "--execute").stdout.startswith(b"0 groups")  # nothing left


def test_merge_turns_daily_packs_into_one_monthly_pack_with_the_same_frames(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _three_days(root)
    dailies = sorted((root / SUCCESS).glob("*.pack.tar.zst"))
    assert len(dailies) == 3
    frames = {}
    for p in dailies:
        frames |= _frames(p)
    s = repack(root, merge="monthly", dry_run=False)
    assert s["failed"] == 0, s["failures"]
    assert sorted(p.name for p in (root / SUCCESS).glob("*.pack.tar.zst")) == [
        "2026-11.pack.tar.zst"]
    merged = root / SUCCESS / "2026-11.pack.tar.zst"
    assert _frames(merged) == frames
    with packfile.Pack(merged) as p:
        assert p.names == sorted(frames)
    assert _holdings(root, tmp_path / "h") == {n: [snap] for n, snap in before.items()}
    incremental = catalog.all_rows(root)
    os.unlink(catalog.catalog_path(root))
    rebuild.rebuild(root)
    assert catalog.all_rows(root) == incremental  # the catalog says what the files say


def test_drop_deletes_a_session_from_its_pack_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 4)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    sid = f"{DAY}-10h01m00s_S001"
    r = run_cli("repack", root, "--drop", sid, "--execute", "--json")
    assert r.returncode == 0, r.stderr
    with packfile.Pack(root / SUCCESS / "2026-11-23.2.pack.tar.zst") as p:
        assert p.names == [f"{DAY}-10h00m00s_S000-main", f"{DAY}-10h02m00s_S002-main"]
    assert not list(root.rglob(f"{sid}*"))
    assert len(catalog.find(root)) == 3
    r = run_cli("repack", root, "--drop", sid, "--execute")  # gone already: said, not failed
    assert r.returncode == 0 and b"warning: --drop" in r.stderr and b"no such session" in r.stderr


def test_a_pack_with_a_bad_seek_table_is_refused_and_nothing_is_deleted(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 4)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / SUCCESS / "2026-11-23.pack.tar.zst"
    name = f"{DAY}-10h01m00s_S001-main"
    assert run_cli("unpack", pack, "-s", name).returncode == 0
    orig = pack.read_bytes()
    data = bytearray(orig)
    n = struct.unpack("<I", data[-9:-5])[0]
    table = len(data) - 9 - 12 * n
    # Swap the sizes of the first two frames: the table still adds up to the file, but
    # each frame it names now straddles two sessions.
    e0, e1 = data[table:table + 4], data[table + 12:table + 16]
    data[table:table + 4], data[table + 12:table + 16] = e1, e0
    pack.write_bytes(bytes(data))
    files = _files(root)
    r = run_cli("repack", root, "--execute")  # comparing the restored dir reads the frame
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert b"not repacked, left as it is" in r.stderr and r.stderr.count(b"failed:") == 1
    assert _files(root) == files  # the pack, the restored dir, the catalog: all as they were
    # Dropping another session: the frames are copied as the table says, and the new
    # pack's verification refuses them.
    shutil.rmtree(pack.parent / name)
    files = _files(root)
    r = run_cli("repack", root, "--drop", f"{DAY}-10h02m00s_S002", "--execute")
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert b"does not verify" in r.stderr and r.stderr.count(b"failed:") == 1
    assert _files(root) == files
    odd = bytearray(orig)
    odd[table + 4] ^= 0x01  # frame 0's decompressed size off by one: not whole tar blocks
    pack.write_bytes(bytes(odd))
    files = _files(root)
    r = run_cli("repack", root, "--drop", f"{DAY}-10h02m00s_S002", "--execute")
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert b"does not verify" in r.stderr and b"frame 0" in r.stderr and _files(root) == files
    pack.write_bytes(bytes(data[:-3]))  # no seek table at all
    files = _files(root)
    r = run_cli("repack", root, "--execute")
    assert r.returncode == 1 and b"Traceback" not in r.stderr and b"seek table" in r.stderr
    assert _files(root) == files


_CRASH = crash_at("from archive_tool.retention.repack import repack\n"
                  'repack(sys.argv[1], merge="monthly", dry_run=False)')


@pytest.mark.parametrize(("point", "k"), [
    ("repack-frame", 4),  # frames being copied into the unnamed tmp
    ("repack-publish", 1),  # verified and fsynced, not linked
    ("publish", 1),  # inside the link step
    ("repack-published", 1),  # linked, dir fsynced, catalog not updated
    ("repack-catalog", 1),  # catalog updated, no old pack unlinked
    ("repack-unlink", 2),  # two of the three old packs unlinked
])
def test_a_crash_during_repack_leaves_every_session_recoverable_and_a_rerun_finishes(
        tmp_path: Path, point: str, k: int) -> None:
    root = tmp_path / "root"
    before = _three_days(root)
    restored = f"{DAY}-10h01m00s_S001-main"
    assert run_cli("unpack", root / SUCCESS / "2026-11-23.pack.tar.zst", "-s",
                   restored).returncode == 0
    r = subprocess.run([sys.executable, "-c", _CRASH, str(root), point, str(k)],
                       capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr  # it really died there
    held = _holdings(root, tmp_path / "a")
    for name, snap in before.items():
        assert snap in held.get(name, []), name  # in a complete pack, or its dir
    s = repack(root, merge="monthly", dry_run=False)
    assert s["failed"] == 0, s["failures"]
    assert _holdings(root, tmp_path / "b") == {n: [snap] for n, snap in before.items()}
    assert [p.name for p in _packs(root) if p.parent.name == "FINISHED_SUCCESS"] == [
        "2026-11.pack.tar.zst"]
    rows = catalog.all_rows(root)
    os.unlink(catalog.catalog_path(root))
    rebuild.rebuild(root)
    assert catalog.all_rows(root) == rows
    assert repack(root, merge="monthly", dry_run=False)["groups"] == []


def test_extract_tree_restores_sessions_from_packs_and_repack_then_drops_them(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 8)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    _tree(root, 2, day="2026Y-11M-25D", script="plain")  # per-session archives beside
    assert run_cli("sweep", root, "--execute", "-q").returncode == 0
    first = f"{DAY}-10h00m00s_S000-main"
    assert run_cli("unpack", root / SUCCESS / "2026-11-23.pack.tar.zst", "-s",
                   first).returncode == 0  # one already back: skipped, not overwritten
    packs = {p: p.read_bytes() for p in _packs(root)}
    r = run_cli("extract", root, "--tree", "--json")  # dry run
    assert r.returncode == 0, r.stderr
    assert b'"candidates": 9' in r.stdout and _packs(root) == sorted(packs)
    r = run_cli("extract", root, "--tree", "--execute", "--remove-archive", "--json")
    assert r.returncode == 0, r.stderr
    assert b'"restored": 9' in r.stdout
    for name, snap in before.items():
        state = "FINISHED_ERROR" if name[-8:-5] in ("003", "007") else "FINISHED_SUCCESS"
        assert snapshot(root / "train_out" / state / name) == snap
    assert {p: p.read_bytes() for p in _packs(root)} == packs  # packs are never rewritten
    assert not list(root.rglob("*.tar.zst")) or all(
        p.name.endswith(".pack.tar.zst") for p in root.rglob("*.tar.zst"))
    r = run_cli("repack", root, "--execute")  # every frame is now an identical dir
    assert r.returncode == 0, r.stderr
    assert _packs(root) == []
    assert catalog.find(root) == []


def test_a_restored_dir_that_was_changed_keeps_its_frame_in_the_pack(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 3)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / SUCCESS / "2026-11-23.pack.tar.zst"
    name = f"{DAY}-10h01m00s_S001-main"
    assert run_cli("unpack", pack, "-s", name).returncode == 0
    (root / SUCCESS / name / "logs" / "stdout.log").write_text("edited after the restore\n")
    files = _files(root)
    s = repack(root, dry_run=False)
    assert (s["groups"], s["failed"]) == ([], 0)
    assert _files(root) == files  # the pack still holds the state it verified


def test_repack_follows_no_symlink_and_waits_for_no_sweep(tmp_path: Path) -> None:
    import fcntl

    from archive_tool.guard.lock import lock_path

    outside = tmp_path / "outside"
    _tree(outside, 3)
    pack_sweep(outside, "daily", dry_run=False, workers=1)
    theirs = outside / SUCCESS / "2026-11-23.pack.tar.zst"
    name = f"{DAY}-10h01m00s_S001-main"
    assert run_cli("unpack", theirs, "-s", name).returncode == 0  # restored: droppable
    root = tmp_path / "root"
    (root / "a_out" / "FINISHED_SUCCESS").mkdir(parents=True)
    (root / "a_out" / "FINISHED_SUCCESS" / "2026-11-23.pack.tar.zst").symlink_to(theirs)
    (root / "b_out").mkdir()
    (root / "b_out" / "FINISHED_SUCCESS").symlink_to(theirs.parent, target_is_directory=True)
    files = _files(outside)
    r = run_cli("repack", root, "--execute")
    assert r.returncode == 0 and r.stdout.startswith(b"0 groups"), r.stdout + r.stderr
    assert _files(outside) == files
    fd = os.open(lock_path(str(outside)), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = run_cli("repack", outside, "--execute")
    finally:
        os.close(fd)
    assert r.returncode == 75 and r.stderr.count(b"\n") == 1
    assert _files(outside) == files


_LOW_FDS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
from archive_tool.retention.repack import repack
s = repack(sys.argv[1], merge="all", dry_run=False)
print(s["failures"])
sys.exit(1 if s["failed"] or s["packs_removed"] != 160 else 0)
"""


def test_merging_more_packs_than_the_process_may_open_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = {}
    for day in range(1, 5):  # 4 days x 30 successes (and 10 errors), a pack per session
        before |= _tree(root, 40, day=f"2026Y-11M-{day:02d}D")
    pack_sweep(root, 1, dry_run=False, workers=1)
    assert len(list((root / SUCCESS).glob("*.pack.tar.zst"))) == 120
    r = subprocess.run([sys.executable, "-c", _LOW_FDS, str(root)], capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (merged,) = (root / SUCCESS).glob("*.pack.tar.zst")
    assert merged.name == "2026-11-01_2026-11-04.pack.tar.zst"
    with packfile.Pack(merged) as p:
        assert len(p.names) == 120


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a repack over another user's tree")
def test_root_repacking_a_users_tree_gives_the_new_pack_to_that_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _three_days(root)
    (root / SUCCESS / "2026-11-24.pack.tar.zst").chmod(0o640)  # one pack not world-readable
    for p in [root, *root.rglob("*")]:
        os.lchown(p, 65534, 65534)
    s = repack(root, merge="monthly", dry_run=False)
    assert s["failed"] == 0, s["failures"]
    st = (root / SUCCESS / "2026-11.pack.tar.zst").stat()
    # The user's, and no more readable than the strictest pack merged into it.
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)
