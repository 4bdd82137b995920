"""Behaviour tests for the promises of packs, repack, prune, the catalog and finalize-stale
(issue 28), each one failing when its rule is broken (RELIABILITY.md, held-out mutants):
the pack read-back under a pread fault, prune's re-check of what it unlinks, the catalog
after a crash or failure at each step, the heartbeat re-check under the lock, and restores
of damaged archives large enough for the streaming path."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive_tool.catalog import catalog, rebuild
from archive_tool.names import new_session_id
from archive_tool.pack import packfile
from archive_tool.retention import prune
from archive_tool.retention.repack import repack
from archive_tool.stale import finalize as stale
from archive_tool.sweep.packsweep import pack_sweep

from . import crashpoints as cp
from .conftest import crash_at, make_session, run_cli, snapshot
from .test_pack import _tree
from .test_safety_rules import CORRUPT_TMPFILE_PREAD_C, _with_preload

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing: no LD_PRELOAD shim")
SUCCESS = "train_out/FINISHED_SUCCESS"


def _packs(root: Path) -> list[Path]:
    return sorted(root.rglob("*" + packfile.PACK_SUFFIX))


# ----------------------------------------------------------------- pack read-back, pread


@needs_gcc
@pytest.mark.parametrize("command", ["sweep --pack", "repack"])
def test_fresh_pack_is_read_back_from_disk_not_from_memory(tmp_path, command):
    """The disk hands back one flipped byte of the unnamed pack: only a real read-back of
    the file refuses it; every source (old pack) is kept, no pack is linked."""
    so = cp.build_shim(CORRUPT_TMPFILE_PREAD_C, tmp_path, "corrupt_pread")
    root = tmp_path / "root"
    for day in ("2026Y-11M-23D", "2026Y-11M-24D"):
        _tree(root, 3, day=day)
    if command == "repack":
        pack_sweep(root, "daily", dry_run=False, workers=1)
        args = ["repack", str(root), "--merge", "monthly", "--execute", "-q"]
    else:
        args = ["sweep", str(root), "--pack", "daily", "--execute", "-q", "-j", "1"]
    before = snapshot(root)
    r = run_cli(*args, env=_with_preload(so))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert b"Traceback" not in r.stderr
    assert b"read back" in r.stderr or b"read-back" in r.stderr, r.stderr
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith(".session-archive")} == \
        {k: v for k, v in before.items() if not k.startswith(".session-archive")}
    # Without the fault the same command goes through: the shim made the difference.
    assert run_cli(*args).returncode == 0
    assert snapshot(root) != before


# ------------------------------------------------------ prune: what it selected, or kept


@pytest.mark.parametrize("swap", ["another-inode", "dir", "symlink"])
def test_prune_keeps_an_archive_replaced_between_scan_and_unlink(tmp_path, monkeypatch, swap):
    fin = tmp_path / "a_out" / "FINISHED_SUCCESS"
    now = time.time()
    names = [new_session_id(now - d * 86400, f"q{d:03d}") + "-main" for d in (400, 300, 1)]
    for n in names:
        make_session(fin, n, extra=False)
    assert run_cli("sweep", tmp_path, "--execute", "-q", "-j", "1").returncode == 0
    victim = fin / f"{names[0]}.tar.zst"
    other = fin / f"{names[1]}.tar.zst"
    real_select = prune.select

    def select_then_swap(*a, **k):  # the swap lands after the scan, before the unlink
        out = real_select(*a, **k)
        if not out:  # prune's first call only validates the arguments
            return out
        if swap == "another-inode":  # made beside it first, so its inode number differs
            new = victim.with_name("new.tmp")
            new.write_bytes(victim.read_bytes())
            os.replace(new, victim)
            return out
        victim.unlink()
        if swap == "dir":
            victim.mkdir()
        else:
            victim.symlink_to(other.name)
        return out

    monkeypatch.setattr(prune, "select", select_then_swap)
    s = prune.prune(tmp_path, older_than_days=30, dry_run=False, now=now)
    assert [f["path"] for f in s["failures"]] == [str(victim)], s
    assert "replaced since it was selected; kept" in s["failures"][0]["reason"]
    assert s["deleted"] == 1 and not other.exists()  # the other selected one still went
    kind = {"another-inode": victim.is_file, "dir": victim.is_dir, "symlink": victim.is_symlink}
    assert kind[swap]() and (swap != "another-inode" or victim.stat().st_size > 0)
    log = [json.loads(x) for x in Path(s["log"]).read_text().splitlines()]
    assert [x["archive"] for x in log] == [str(other)]  # the kept one is not logged


# --------------------------------------------------- the catalog after a crash or failure


def _on_disk_rows(root: Path, tmp: Path) -> list[dict]:
    """What `catalog --rebuild` makes of the tree as it is, on a copy (the tree itself is
    compared before any rerun)."""
    copy = tmp / "rebuilt"
    shutil.copytree(root, copy, symlinks=True)
    rebuild.rebuild(copy)
    return catalog.all_rows(copy)


def _key(r: dict) -> tuple:
    return r["archive"], r["frame"], r["name"]


def assert_catalog_sound(root: Path, tmp: Path, known_before: set[str]) -> None:
    """Every row names a linked file holding that session at that frame (as the rebuild
    reads it), and no session the catalog knew before and a linked pack still holds has
    lost its row."""
    rows = catalog.all_rows(root)
    disk = {_key(r): r for r in _on_disk_rows(root, tmp)}
    for r in rows:
        assert (root / r["archive"]).is_file(), f"catalog names {r['archive']}: not linked"
        assert _key(r) in disk, f"catalog row {_key(r)} is not in the file it names"
        assert r == disk[_key(r)], r
    have = {r["name"] for r in rows}
    held = {k[2] for k in disk}
    lost = (known_before & held) - have
    assert not lost, f"rows lost for sessions still held: {sorted(lost)}"


PACK_POINTS = [("pack-frame", 2), ("pack-publish", 1), ("publish", 1), ("pack-published", 1),
               ("delete", 2)]
REPACK_POINTS = [("repack-frame", 3), ("repack-publish", 1), ("publish", 1),
                 ("repack-published", 1), ("repack-catalog", 1), ("repack-unlink", 2)]


def _child(call: str, how: str) -> str:
    """conftest.crash_at's child; with "fail" the k-th race point raises EIO instead (a
    failure the run survives and reports) of killing the process."""
    src = crash_at(call)
    return src if how == "crash" else src.replace("os._exit(9)", "raise OSError(5, 'planted')")


@pytest.mark.parametrize("how", ["crash", "fail"])
@pytest.mark.parametrize(("point", "k"), PACK_POINTS)
def test_catalog_after_a_pack_sweep_stopped_at_each_step_is_sound(tmp_path, point, k, how):
    root = tmp_path / "root"
    _tree(root, 3, day="2026Y-11M-23D")
    pack_sweep(root, "daily", dry_run=False, workers=1)  # catalogued packs before the run
    known = {r["name"] for r in catalog.all_rows(root)}
    assert len(known) == 3
    _tree(root, 3, day="2026Y-11M-24D")
    make_session(root / SUCCESS, "2026Y-11M-23D-11h00m00s_S100-main")  # a 2nd pack of day 1
    call = ("from archive_tool.sweep.packsweep import pack_sweep\n"
            'pack_sweep(sys.argv[1], "daily", dry_run=False, workers=1)')
    r = subprocess.run([sys.executable, "-c", _child(call, how), str(root), point, str(k)],
                       capture_output=True, timeout=120)
    assert r.returncode == (9 if how == "crash" else 3), r.stderr  # stopped there / reported
    assert_catalog_sound(root, tmp_path, known)


@pytest.mark.parametrize("how", ["crash", "fail"])
@pytest.mark.parametrize(("point", "k"), REPACK_POINTS)
def test_catalog_after_a_repack_stopped_at_each_step_is_sound(tmp_path, point, k, how):
    root = tmp_path / "root"
    for day in ("2026Y-11M-23D", "2026Y-11M-24D", "2026Y-11M-25D"):
        _tree(root, 2, day=day)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    known = {r["name"] for r in catalog.all_rows(root)}
    assert len(known) == 6
    call = ("from archive_tool.retention.repack import repack\n"
            'repack(sys.argv[1], merge="monthly", dry_run=False)')
    r = subprocess.run([sys.executable, "-c", _child(call, how), str(root), point, str(k)],
                       capture_output=True, timeout=120)
    assert r.returncode == (9 if how == "crash" else 3), r.stderr
    assert_catalog_sound(root, tmp_path, known)


def test_a_failure_in_the_middle_of_a_rows_replace_leaves_the_old_rows(tmp_path, monkeypatch):
    """replace_archives deletes the old packs' rows and inserts the new ones in one
    transaction: a failure after the deletes (here in the insert) keeps the old rows, and
    a repack that hits it keeps its old packs with them."""
    root = tmp_path / "root"
    for day in ("2026Y-11M-23D", "2026Y-11M-24D"):
        _tree(root, 2, day=day)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    rows = catalog.all_rows(root)
    packs = {p: p.read_bytes() for p in _packs(root)}

    def broken_insert(conn, rows):  # noqa: ARG001 - the deletes have run by now
        raise sqlite3.OperationalError("disk I/O error (planted)")

    monkeypatch.setattr(catalog, "_insert", broken_insert)
    old = sorted({r["archive"] for r in rows})
    with pytest.raises(sqlite3.OperationalError):
        catalog.replace_archives(root, old, [dict(rows[0], archive="x.pack.tar.zst")])
    assert catalog.all_rows(root) == rows
    s = repack(root, merge="monthly", dry_run=False)
    assert s["failed"] == 1 and "old packs kept" in s["failures"][0]["reason"], s
    assert catalog.all_rows(root) == rows
    assert all(p.read_bytes() == b for p, b in packs.items())  # the old packs are all there
    monkeypatch.undo()
    assert_catalog_sound(root, tmp_path, {r["name"] for r in rows})


# ----------------------------------------------------------------- finalize-stale


def test_heartbeat_that_moves_but_stays_stale_aborts_the_finalize(tmp_path):
    """A run on another host (judged by its heartbeat alone) whose heartbeat moves between
    the scan and the lock, to a time still past the threshold: the run is not finalized
    (the later "still stale" check cannot see this one)."""
    run = make_session(tmp_path / "x_out" / "RUNNING")
    hb = run / ".heartbeat"
    hb.write_text(json.dumps({"HOST": "other-node-7", "PID": 4242, "HEARTBEAT_INTERVAL": 1}))
    old = time.time() - 3600
    os.utime(hb, (old, old))

    def beat(stage: str, path: str) -> None:
        if stage == "classified":
            t = time.time() - 1800  # moved, still 30 min old: past the 10 s threshold
            os.utime(Path(path) / ".heartbeat", (t, t))

    stale._hook = beat
    try:
        c = stale.finalize_stale(str(tmp_path), dry_run=False)
    finally:
        stale._hook = None
    assert (c["stale"], c["finalized"], c["skipped"]) == (1, 0, 1), c
    assert c["runs"][0]["action"] == "skipped: heartbeat moved during the check"
    assert run.is_dir() and not (run / stale.MARKER_NAME).exists()
    assert not (tmp_path / "x_out" / "FINISHED_ERROR").exists()
    # Not vacuous: without the move the same run is finalized.
    assert stale.finalize_stale(str(tmp_path), dry_run=False)["finalized"] == 1


# --------------------------------------------- damaged archives on the streaming path


@pytest.mark.parametrize("damage", ["byte-flipped", "truncated", "byte-flipped-1mib-records"])
@pytest.mark.parametrize("fmt", ["tar.gz", "tar.zst"])
def test_unpack_of_a_damaged_archive_over_4_mib_refuses_and_leaves_nothing(
        tmp_path, fmt, damage):
    """Over 4 MiB a restore streams. "1mib-records": GNU tar's `-b 2048` pads the tar to
    1 MiB records, so tarfile stops reading ~1 MiB before the gzip CRC / zstd checksum:
    only draining the decompressor to its end finds the flipped byte."""
    fin = tmp_path / "x_out" / "FINISHED_SUCCESS"
    session = make_session(fin, extra=False)
    # Incompressible, and the same bytes every run: the flip lands in file data.
    (session / "big.bin").write_bytes(random.Random(0).randbytes(5 << 20))
    archive = Path(f"{session}.{fmt}")
    if damage.endswith("records"):
        tool = ["gzip", "-1", "-c"] if fmt == "tar.gz" else ["zstd", "-1", "-c", "-q"]
        if shutil.which("tar") is None or shutil.which(tool[0]) is None:
            pytest.skip(f"GNU tar or {tool[0]} missing")
        tar = subprocess.run(["tar", "-C", str(fin), "-b", "2048", "-cf", "-", session.name],
                             capture_output=True, check=True).stdout
        archive.write_bytes(subprocess.run(tool, input=tar, capture_output=True,
                                           check=True).stdout)
        shutil.rmtree(session)
    else:
        r = run_cli("pack", str(session), "-f", fmt)
        assert r.returncode == 0, r.stderr
    data = bytearray(archive.read_bytes())
    assert len(data) > 4 << 20
    if damage.startswith("byte-flipped"):
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    archive.write_bytes(bytes(data))
    for args in (["unpack", str(archive)], ["unpack", str(archive), "--remove-archive"]):
        r = run_cli(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(b"Error: ") and b"Traceback" not in r.stderr, r.stderr
        assert sorted(p.name for p in fin.iterdir()) == [archive.name]  # nothing left behind
        assert archive.read_bytes() == bytes(data)  # the archive kept as it was


def test_a_failure_of_the_pack_sweeps_catalog_step_is_a_warning_not_a_traceback(
        tmp_path, monkeypatch):
    """The catalog is written after the packs are durable and their sources deleted: a
    failure there (a full disk, a locked catalog) loses nothing, keeps the rows it had,
    and is reported; `catalog --rebuild` then lists the new packs."""
    root = tmp_path / "root"
    _tree(root, 2, day="2026Y-11M-23D")
    pack_sweep(root, "daily", dry_run=False, workers=1)
    rows = catalog.all_rows(root)
    _tree(root, 2, day="2026Y-11M-24D")

    def broken_insert(conn, rows):  # noqa: ARG001
        raise sqlite3.OperationalError("database or disk is full (planted)")

    monkeypatch.setattr(catalog, "_insert", broken_insert)
    s = pack_sweep(root, "daily", dry_run=False, workers=1)
    assert s["failed"] == 0 and s["archived"] == 2, s
    assert any("catalog not updated" in w for w in s["warnings"]), s["warnings"]
    assert catalog.all_rows(root) == rows
    monkeypatch.undo()
    assert_catalog_sound(root, tmp_path, {r["name"] for r in rows})
    rebuild.rebuild(root)
    assert len(catalog.all_rows(root)) == 4
