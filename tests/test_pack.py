"""Packs (issue 14): many sessions per seekable-zstd file, one frame each; the catalog."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.catalog import catalog
from archive_tool.pack import packfile, seekable
from archive_tool.pack.restore import restore_session
from archive_tool.summary import ARCHIVED, FAILED
from archive_tool.sweep.packplan import period_of
from archive_tool.sweep.packsweep import pack_sweep
from tests.conftest import crash_at, make_session, run_cli, snapshot

DAY = "2026Y-11M-23D"


def _tree(root: Path, n: int = 8, day: str = DAY, script: str = "train",
          lr: float = 0.01) -> dict[str, dict]:
    """Sessions of one day in FINISHED_SUCCESS (and every 4th in FINISHED_ERROR); returns
    name -> snapshot of the source, to compare with what comes back."""
    out = {}
    for i in range(n):
        state = "FINISHED_ERROR" if i % 4 == 3 else "FINISHED_SUCCESS"
        parent = root / f"{script}_out" / state
        parent.mkdir(parents=True, exist_ok=True)
        name = f"{day}-10h{i:02d}m00s_S{i:03d}-main"
        d = make_session(parent, name, extra=i % 2 == 0)
        (d / "CONFIGS" / "CONFIG.yaml").write_text(
            f"ID: {name}\nSEED: {i}\nEXIT_STATUS: {1 if state == 'FINISHED_ERROR' else 0}\n"
            f"ARGS:\n  lr: {lr if i % 2 == 0 else 0.1}\n  epochs: {i}\n")
        out[name] = snapshot(d)
    return out


def _packs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*" + packfile.PACK_SUFFIX))


def _sources(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*-main") if p.is_dir())


def _restored(pack: Path, name: str, tmp: Path) -> dict:
    dest = tmp / f"r-{hashlib.md5(f'{pack}{name}'.encode()).hexdigest()[:8]}"
    restore_session(pack, name, dest)
    return snapshot(dest)


def test_every_session_of_a_pack_round_trips_and_its_source_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 10)
    s = pack_sweep(root, "daily", dry_run=False, workers=1)
    assert (s["archived"], s["failed"], s["packs"]) == (10, 0, 2)
    assert _sources(root) == []
    packs = _packs(root)
    assert [p.name for p in packs] == ["2026-11-23.pack.tar.zst"] * 2
    seen = {}
    for p in packs:
        with packfile.Pack(p) as pk:
            for name in pk.names:
                seen[name] = _restored(p, name, tmp_path)
    assert seen == before


def test_gnu_tar_lists_and_extracts_a_whole_pack(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 6)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / "train_out" / "FINISHED_SUCCESS" / "2026-11-23.pack.tar.zst"
    listed = subprocess.run(["tar", "--zstd", "-tf", pack], capture_output=True, check=True,
                            text=True).stdout.split()
    tops = sorted({m.split("/")[0] for m in listed})
    assert tops == sorted(n for n in before if "S003" not in n and "S007" not in n)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", pack, "-C", out], check=True)
    for name in tops:
        assert snapshot(out / name) == before[name]
    subprocess.run(["zstd", "-tq", pack], check=True)  # the zstd CLI reads it whole too


def test_the_seek_table_follows_the_seekable_spec(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 5)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / "train_out" / "FINISHED_SUCCESS" / "2026-11-23.pack.tar.zst"
    data = pack.read_bytes()
    n, desc, magic = struct.unpack("<IBI", data[-9:])
    assert magic == 0x8F92EAB1 and desc == 0x80
    assert n == 4 + 2  # four sessions, the end-of-tar frame, the index
    table_start = len(data) - 9 - 12 * n - 8
    assert struct.unpack("<II", data[table_start:table_start + 8]) == (0x184D2A5E, 12 * n + 9)
    off = 0
    for i in range(n):
        c, d, chk = struct.unpack("<III", data[table_start + 8 + 12 * i:table_start + 20 + 12 * i])
        frame = data[off:off + c]
        if d:
            assert frame[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
            assert chk == int.from_bytes(frame[-4:], "little")  # its XXH64, low 32 bits
        off += c
    assert off == table_start


def test_show_and_unpack_read_one_session_and_never_rewrite_the_pack(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 6)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / "train_out" / "FINISHED_SUCCESS" / "2026-11-23.pack.tar.zst"
    digest = hashlib.sha256(pack.read_bytes()).hexdigest()
    name = f"{DAY}-10h04m00s_S004-main"
    r = run_cli("show", pack, "--session", name.rsplit("-", 1)[0], "CONFIGS/CONFIG.yaml")
    assert r.returncode == 0 and b"epochs: 4" in r.stdout
    r = run_cli("show", pack, "-s", name)
    assert r.returncode == 0 and f"{name}/bin.dat".encode() in r.stdout
    r = run_cli("unpack", pack, "-s", name)
    assert r.returncode == 0, r.stderr
    assert snapshot(pack.parent / name) == before[name]
    r = run_cli("unpack", pack, "-s", name)  # never overwrites
    assert r.returncode == 1 and b"already exists" in r.stderr
    r = run_cli("show", pack, "-s", "2026Y-01M-01D-00h00m00s_NONE")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"no session" in r.stderr
    assert hashlib.sha256(pack.read_bytes()).hexdigest() == digest


def test_a_second_pack_of_the_same_period_gets_a_new_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 3)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    first = (root / "train_out/FINISHED_SUCCESS/2026-11-23.pack.tar.zst").read_bytes()
    parent = root / "train_out" / "FINISHED_SUCCESS"
    make_session(parent, f"{DAY}-23h00m00s_LATE-main")
    s = pack_sweep(root, "daily", dry_run=False, workers=1)
    assert s["archived"] == 1
    assert (parent / "2026-11-23.pack.tar.zst").read_bytes() == first
    with packfile.Pack(parent / "2026-11-23.2.pack.tar.zst") as p:
        assert p.names == [f"{DAY}-23h00m00s_LATE-main"]


def test_pack_periods_group_by_day_week_or_count(tmp_path: Path) -> None:
    assert period_of(f"{DAY}-10h00m00s_X-main", "daily") == "2026-11-23"
    assert period_of(f"{DAY}-10h00m00s_X-main", "weekly") == "2026-W48"
    root = tmp_path / "root"
    _tree(root, 8)
    s = pack_sweep(root, 3, dry_run=False, workers=1)
    assert s["archived"] == 8
    sizes = sorted(len(packfile.Pack(p).names) for p in _packs(root))
    assert sizes == [2, 3, 3]  # 6 successes in packs of 3, 2 errors in one
    # Named by when their first session started: never mistaken for a session's archive.
    assert sorted(p.name for p in _packs(root)) == [
        "2026-11-23T100000.pack.tar.zst", "2026-11-23T100300.pack.tar.zst",
        "2026-11-23T100400.pack.tar.zst"]


def test_a_source_changed_before_its_delete_is_kept_with_the_pack(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 3)
    victim = root / "train_out/FINISHED_SUCCESS" / f"{DAY}-10h01m00s_S001-main"

    def hook(point: str, _where: str) -> None:
        if point == "pack-published":
            (victim / "logs" / "stdout.log").write_text("appended later\n")

    fs.race_hook = hook
    try:
        results = []
        pack_sweep(root, "daily", dry_run=False, workers=1, on_result=results.append)
    finally:
        fs.race_hook = None
    by = {Path(r.path).name: r for r in results}
    assert by[victim.name].status == FAILED and "source kept" in by[victim.name].reason
    assert victim.is_dir() and (victim / "logs/stdout.log").read_text() == "appended later\n"
    assert by[f"{DAY}-10h00m00s_S000-main"].status == ARCHIVED
    with packfile.Pack(victim.parent / "2026-11-23.pack.tar.zst") as p:
        assert victim.name in p.names  # the pack keeps the state it verified
    new_state = snapshot(victim)
    s = pack_sweep(root, "daily", dry_run=False, workers=1)  # the new state: a new pack
    assert (s["archived"], s["failed"]) == (1, 0) and not victim.exists()
    assert _restored(victim.parent / "2026-11-23.2.pack.tar.zst", victim.name,
                     tmp_path) == new_state


_CRASH = crash_at("from archive_tool.sweep.packsweep import pack_sweep\n"
                  'pack_sweep(sys.argv[1], "daily", dry_run=False, workers=1)')


def _holdings(root: Path, tmp: Path) -> dict[str, list[dict]]:
    """name -> every copy of the session: its source dir, and each pack frame holding it."""
    got: dict[str, list[dict]] = {}
    for p in root.rglob("*-main"):
        if p.is_dir():
            got.setdefault(p.name, []).append(snapshot(p))
    for pack in _packs(root):
        with packfile.Pack(pack) as pk:
            names = list(pk.names)
        for name in names:
            got.setdefault(name, []).append(_restored(pack, name, tmp))
    return got


@pytest.mark.parametrize(("point", "k"), [
    ("pack-frame", 3),  # while frames are being written into the unnamed tmp
    ("pack-publish", 1),  # verified and fsynced, not yet linked
    ("publish", 1),  # inside the link step
    ("pack-published", 1),  # linked and dir fsynced, no source deleted yet
    ("delete", 2),  # one source deleted, the next renamed to trash and half-checked
])
def test_a_crash_during_a_pack_sweep_loses_no_session(tmp_path: Path, point: str,
                                                      k: int) -> None:
    root = tmp_path / "root"
    before = _tree(root, 6)
    r = subprocess.run([sys.executable, "-c", _CRASH, str(root), point, str(k)],
                       capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr  # it really died at that point
    held = _holdings(root, tmp_path / "a")
    for name, snap in before.items():
        # Each session is its source or in a complete pack (trash counts as neither here:
        # a crash mid-delete leaves only sessions that are already in a durable pack).
        assert snap in held.get(name, []) or any(
            name in packfile.Pack(p).names for p in _packs(root)), name
    s = pack_sweep(root, "daily", dry_run=False, workers=1)  # the next run finishes it
    assert s["failed"] == 0, s["failures"]
    assert _sources(root) == [] and not list(root.rglob(".*.deleting"))
    held = _holdings(root, tmp_path / "b")
    assert held == {name: [snap] for name, snap in before.items()}  # each exactly once


def test_catalog_rebuilt_from_scratch_equals_the_incremental_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 6)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    _tree(root, 3, day="2026Y-11M-24D", script="eval")
    pack_sweep(root, "weekly", dry_run=False, workers=1)
    _tree(root, 2, day="2026Y-11M-25D", script="plain")  # per-session archives, --catalog
    r = run_cli("sweep", root, "--execute", "--catalog", "-j", "1")
    assert r.returncode == 0, r.stderr
    incremental = catalog.all_rows(root)
    assert len(incremental) == 11
    assert sorted(r["frame"] for r in incremental if r["script"] == "plain_out") == [-1, -1]
    os.unlink(catalog.catalog_path(root))
    res = run_cli("catalog", root, "--rebuild", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sessions"] == 11
    assert catalog.all_rows(root) == incremental
    row = next(r for r in incremental if r["name"].endswith("S002-main"))
    assert row["config"]["ARGS.lr"] == 0.01 and row["exit_status"] == 0
    assert row["state"] == "FINISHED_SUCCESS" and row["script"] == "train_out"
    assert row["started"] == "2026-11-23T10:02:00" and row["inodes"] == 12
    # The offset is where the frame is: reading there gives that session.
    with packfile.Pack(root / row["archive"]) as p:
        assert p.frames[row["frame"]].offset == row["offset"]
        assert p.names[row["frame"]] == row["name"]


def test_find_filters_by_config_state_and_date_from_the_catalog_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 8, lr=0.01)
    _tree(root, 4, day="2026Y-09M-01D", script="old", lr=0.01)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    for p in _packs(root):  # find must not need them
        p.chmod(0)
    r = run_cli("find", root, "--where", "ARGS.lr=0.01", "--state", "FINISHED_SUCCESS",
                "--since", "2026-10-01", "--json")
    assert r.returncode == 0, r.stderr
    names = sorted(x["name"] for x in json.loads(r.stdout))
    assert names == [f"{DAY}-10h{i:02d}m00s_S{i:03d}-main" for i in (0, 2, 4, 6)]
    rows = catalog.find(root, ["ARGS.epochs>=5", "ARGS.lr!=0.01"])
    assert sorted(x["name"][-9:] for x in rows) == ["S005-main", "S007-main"]
    assert len(catalog.find(root, ["ARGS.lr=0.010"])) == 6  # numbers compare as numbers
    assert len(catalog.find(root, until="2026-10-01")) == 4
    r = run_cli("find", root, "--where", "nonsense")
    assert r.returncode == 2 and b"KEY=VALUE" in r.stderr and b"Traceback" not in r.stderr
    r = run_cli("find", root, "--state", "FINISHED_ERROR")
    assert r.returncode == 0 and r.stdout.count(b"\n") == 3


def test_bad_pack_arguments_are_one_line_usage_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 1)
    for bad in ("hourly", "0"):
        r = run_cli("sweep", root, "--execute", "--pack", bad)
        assert r.returncode == 2 and b"--pack" in r.stderr and b"Traceback" not in r.stderr
    assert _sources(root) != []
    r = run_cli("find", root)
    assert r.returncode == 2 and b"no catalog" in r.stderr


def test_a_damaged_pack_is_refused_with_one_line_not_misread(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 3)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / "train_out/FINISHED_SUCCESS/2026-11-23.pack.tar.zst"
    data = pack.read_bytes()
    cut = tmp_path / "cut.pack.tar.zst"
    cut.write_bytes(data[:-5])
    fd = os.open(cut, os.O_RDONLY)
    try:
        with pytest.raises(packfile.CorruptArchive, match="seek table"):
            seekable.read_seek_table(fd, str(cut))
    finally:
        os.close(fd)
    flipped = bytearray(data)
    flipped[40] ^= 0xFF  # inside the first session's frame
    bad = tmp_path / "bad.pack.tar.zst"
    bad.write_bytes(bytes(flipped))
    name = f"{DAY}-10h00m00s_S000-main"
    for p in (cut, bad):
        r = run_cli("show", p, "-s", name, "CONFIGS/CONFIG.yaml")
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
        assert b"Traceback" not in r.stderr and r.stdout == b""


def test_a_full_disk_mid_pack_commits_nothing_and_keeps_every_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    root = tmp_path / "root"
    before = _tree(root, 3)  # one pack: S000 written, S001's frame hits the full disk
    real = packfile.PackWriter._write
    calls = [0]

    def full(self: packfile.PackWriter, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 2:
            self.broken = True
            raise packfile.commit.disk_error(self.tmp.final, OSError(errno.ENOSPC, "full"),
                                             "cannot write pack")
        real(self, data)

    monkeypatch.setattr(packfile.PackWriter, "_write", full)
    s = pack_sweep(root, "daily", dry_run=False, workers=1)
    assert (s["archived"], s["failed"], s["skipped"]) == (0, 1, 2)
    assert "disk full" in s["stopped"]
    assert _packs(root) == []
    assert {n: snapshot(p) for n in before
            for p in root.rglob(n)} == before  # every source, unchanged


def test_verify_checks_what_only_a_pack_has(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 3)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    pack = root / "train_out/FINISHED_SUCCESS/2026-11-23.pack.tar.zst"
    assert run_cli("verify", pack).returncode == 0
    data = bytearray(pack.read_bytes())
    # A seek-table entry wrong: the tar stream still reads whole (zstd skips the table),
    # but a reader of one session would get the wrong bytes.
    table = len(data) - 9 - 12 * 5
    data[table + 1] ^= 0x01
    bad = tmp_path / "table.pack.tar.zst"
    bad.write_bytes(bytes(data))
    assert subprocess.run(["tar", "--zstd", "-tf", bad], capture_output=True).returncode == 0
    r = run_cli("verify", bad)
    assert r.returncode == 1 and b"BAD" in r.stdout and b"seek table" in r.stdout
    # An index that names a frame after another session.
    with packfile.Pack(pack) as p:
        frames = [p.members(i) for i in range(len(p.names))]
        names = list(p.names)
    out = tmp_path / "lying"
    out.mkdir()
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    tmp = packfile.commit.open_tmp(dfd, str(out / "x.pack.tar.zst"), 0o644)
    w = packfile.PackWriter(tmp)
    w.add(names[1], frames[0])
    w.finish()
    packfile.commit.publish(tmp)
    tmp.close()
    os.close(dfd)
    r = run_cli("verify", out / "x.pack.tar.zst")
    assert r.returncode == 1 and f"({names[1]}) holds".encode() in r.stdout


def test_show_and_unpack_find_a_session_by_id_through_the_root_catalog(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 4)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    _tree(root, 1, day="2026Y-11M-25D", script="plain")
    assert run_cli("sweep", root, "--execute", "--catalog").returncode == 0
    sid = f"{DAY}-10h02m00s_S002"
    r = run_cli("show", root, "-s", sid, "CONFIGS/CONFIG.yaml")
    assert r.returncode == 0 and b"epochs: 2" in r.stdout, r.stderr
    r = run_cli("unpack", root, "-s", sid, "-d", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    assert snapshot(tmp_path / "back") == before[f"{sid}-main"]
    plain = "2026Y-11M-25D-10h00m00s_S000"  # a per-session archive, found the same way
    r = run_cli("show", root, "-s", plain, "CONFIGS/CONFIG.yaml")
    assert r.returncode == 0 and b"epochs: 0" in r.stdout, r.stderr
    r = run_cli("show", root, "-s", "2026Y-01M-01D-00h00m00s_NONE")
    assert r.returncode == 1 and b"no session" in r.stderr
    # A catalog that no longer matches the pack (offset wrong): the index is used instead.
    row = catalog.locate(root, sid)
    fd = packfile.session_fd_at(row["path"], row["name"], row["offset"] + 1,
                                row["bytes_out"], row["tar_bytes"])
    try:
        # The first member's name (after its PAX header of sub-second mtimes, if any).
        first = packfile.iter_tar(os.pread(fd, 8 * 512, 0))[0][0]
        assert first.rstrip("/") == f"{sid}-main"
    finally:
        os.close(fd)


def test_a_hostile_pack_index_cannot_choose_where_a_restore_lands(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_session(src, f"{DAY}-10h00m00s_EVIL-main", extra=False)
    parts: list[bytes] = []
    from archive_tool.engine.scan import scan_session
    from archive_tool.engine.tarwrite import write_tar

    d = src / f"{DAY}-10h00m00s_EVIL-main"
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_tar(fd, str(d), d.name, scan_session(str(d)), parts.append)
    finally:
        os.close(fd)
    out = tmp_path / "packs"
    out.mkdir()
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    tmp = packfile.commit.open_tmp(dfd, str(out / "evil.pack.tar.zst"), 0o644)
    w = packfile.PackWriter(tmp)
    w.add(f"{DAY}-10h00m00s_EVIL-/../../escaped", b"".join(parts)[:-1024])
    w.finish()
    packfile.commit.publish(tmp)
    tmp.close()
    os.close(dfd)
    r = run_cli("unpack", out / "evil.pack.tar.zst", "-s", f"{DAY}-10h00m00s_EVIL")
    assert r.returncode == 1 and b"not a session dir name" in r.stderr
    assert not (tmp_path / "escaped").exists() and sorted(os.listdir(out)) == [
        "evil.pack.tar.zst"]
    assert run_cli("verify", out / "evil.pack.tar.zst").returncode == 1
