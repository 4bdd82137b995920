"""Salvage of damaged packs (issue 26): one bad byte costs only the sessions whose frames
it hits; verify names them, unpack/extract restore every other session, repack
--salvage writes a clean pack of the survivors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from archive_tool.pack import packfile, packsalvage
from archive_tool.pack.restore import restore_session
from archive_tool.sweep.packsweep import pack_sweep
from tests.conftest import run_cli, snapshot
from tests.test_pack import _tree

PACK = "train_out/FINISHED_SUCCESS/2026-11-23.pack.tar.zst"


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict], list]:
    """One pack of five sessions (S000 S001 S002 S004 S005), their sources' snapshots,
    and the pack's layout: [(name, offset, csize)] of every frame in the seek table."""
    root = tmp_path_factory.mktemp("salvage") / "root"
    before = _tree(root, 6)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    with packfile.Pack(root / PACK) as p:
        names = list(p.names)
        layout = [(names[i] if i < len(names) else None, f.offset, f.csize)
                  for i, f in enumerate(p.frames)]
    assert len(names) == 5
    return root, {n: before[n] for n in names}, layout


def _damaged(packed: tuple, where: str, tmp: Path) -> tuple[Path, set[str]]:
    """A copy of the root whose pack has one byte flipped in region *where*; returns the
    root and the sessions that byte must cost."""
    root, _before, layout = packed
    names = [n for n, *_ in layout if n is not None]
    copy = tmp / "root"
    shutil.copytree(root, copy, symlinks=True)
    pack = copy / PACK
    data = bytearray(pack.read_bytes())
    size = len(data)
    table_start = layout[-1][1] + layout[-1][2]
    spots: dict[str, tuple[list[int], set[str]]] = {
        "header": ([0], {names[0]}),  # the first frame's magic: the pack's first bytes
        "first frame body": ([layout[0][1] + layout[0][2] // 2], {names[0]}),
        "middle frame": ([layout[2][1] + layout[2][2] // 2], {names[2]}),
        "last frame": ([layout[4][1] + layout[4][2] - 2], {names[4]}),  # its checksum
        "end-blocks frame": ([layout[5][1] + 5], set()),
        "index": ([layout[6][1] + 20], set()),
        "seek table entry size": ([table_start + 8 + 12 * 2], set()),
        "seek table checksum": ([table_start + 8 + 12 * 3 + 8], set()),
        "seek table footer": ([size - 1], set()),
        "seek table and middle frame": ([size - 1, layout[2][1] + layout[2][2] // 2],
                                        {names[2]}),
        # The end-blocks frame unreadable with the table: the scan must still step to
        # the index behind it (a skippable frame, not a zstd frame magic).
        "seek table and end-blocks frame": ([size - 1, layout[5][1] + 5], set()),
        "seek table and index": ([size - 1, layout[6][1] + 20],
                                 {names[1]}),  # with frame 1 below
    }
    if where == "seek table and index":
        offsets = [size - 1, layout[6][1] + 20, layout[1][1] + layout[1][2] // 2]
        for off in offsets:
            data[off] ^= 0x5A
        pack.write_bytes(bytes(data))
        return copy, {"?"}
    offsets, lost = spots[where]
    for off in offsets:
        data[off] ^= 0x5A
    pack.write_bytes(bytes(data))
    return copy, lost


REGIONS = ["header", "first frame body", "middle frame", "last frame", "end-blocks frame",
           "index", "seek table entry size", "seek table checksum", "seek table footer",
           "seek table and middle frame", "seek table and end-blocks frame"]


@pytest.mark.parametrize("where", REGIONS)
def test_a_damaged_byte_costs_exactly_the_sessions_of_its_frame(
        packed: tuple, where: str, tmp_path: Path) -> None:
    _root, before, _layout = packed
    root, lost = _damaged(packed, where, tmp_path)
    found = packsalvage.salvage(root / PACK)
    assert not found.clean
    assert set(found.lost) == lost
    assert {f.name for f in found.good} == set(before) - lost
    # Every readable session restores to exactly its source.
    with packsalvage.open_pack(root / PACK) as p:
        for name in set(before) - lost:
            dest = tmp_path / "one" / name
            dest.parent.mkdir(exist_ok=True)
            restore_session(root / PACK, name, dest)
            assert snapshot(dest) == before[name]
        assert set(p.names) >= set(before) - lost


@pytest.mark.parametrize("where", ["middle frame", "seek table and middle frame", "index"])
def test_verify_names_exactly_the_lost_sessions(packed: tuple, where: str,
                                                tmp_path: Path) -> None:
    _root, before, _layout = packed
    root, lost = _damaged(packed, where, tmp_path)
    r = run_cli("verify", root / PACK)
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    out = r.stdout.decode()
    assert "BAD" in out and "salvage:" in out
    for n in before:
        assert (n in out.split("salvage:")[1].split("sessions readable")[0]) == (n in lost), out
    assert (f"lost {len(lost)} of 5" in out) if lost else ("no session lost" in out)


def test_with_index_and_table_damaged_the_lost_frame_is_named_by_its_bytes(
        packed: tuple, tmp_path: Path) -> None:
    _root, before, layout = packed
    root, _ = _damaged(packed, "seek table and index", tmp_path)
    found = packsalvage.salvage(root / PACK)
    assert {f.name for f in found.good} == set(before) - {layout[1][0]}
    assert len(found.lost) == 1 and "index unreadable" in found.lost[0]
    assert f"{layout[1][1]:,}-" in found.lost[0]  # the lost frame's offset


def test_unpack_of_a_damaged_pack_restores_every_other_session(packed: tuple,
                                                               tmp_path: Path) -> None:
    _root, before, _layout = packed
    root, lost = _damaged(packed, "seek table and middle frame", tmp_path)
    dest = tmp_path / "out"
    r = run_cli("unpack", root / PACK, "--dest", dest)
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert b"1 sessions lost, 4 restored" in r.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(set(before) - lost)
    for p in dest.iterdir():
        assert snapshot(p) == before[p.name]
    # One session by name from the same damaged pack; the lost one is a one-line error.
    good = sorted(set(before) - lost)[0]
    r = run_cli("unpack", root / PACK, "-s", good, "--dest", tmp_path / "single")
    assert r.returncode == 0 and snapshot(tmp_path / "single") == before[good]
    r = run_cli("unpack", root / PACK, "-s", next(iter(lost)), "--dest", tmp_path / "x")
    assert r.returncode == 1 and b"damaged frame" in r.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["middle frame", "seek table and middle frame"])
def test_extract_tree_restores_every_session_but_the_damaged_ones(
        packed: tuple, where: str, tmp_path: Path) -> None:
    _root, before, _layout = packed
    root, lost = _damaged(packed, where, tmp_path)
    r = run_cli("extract", root, "--tree", "--execute", "--json")
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    d = root / PACK.rsplit("/", 1)[0]
    back = {p.name for p in d.iterdir() if p.is_dir()}
    assert back == set(before) - lost
    for n in back:
        assert snapshot(d / n) == before[n]
    assert all(n.encode() in r.stdout + r.stderr for n in lost)


@pytest.mark.parametrize("where", ["middle frame", "seek table and middle frame",
                                   "seek table checksum"])
def test_repack_salvage_writes_a_clean_pack_of_the_survivors(packed: tuple, where: str,
                                                             tmp_path: Path) -> None:
    _root, before, _layout = packed
    root, lost = _damaged(packed, where, tmp_path)
    d = root / PACK.rsplit("/", 1)[0]
    dry = run_cli("repack", root, "--salvage")
    assert dry.returncode == 0 and b"would repack" in dry.stdout
    assert sorted(p.name for p in d.iterdir()) == ["2026-11-23.pack.tar.zst"]
    r = run_cli("repack", root, "--salvage", "--execute")
    assert r.returncode == 0, r.stderr
    packs = sorted(p.name for p in d.iterdir() if packfile.is_pack_name(p.name))
    assert packs == ["2026-11-23.2.pack.tar.zst"]
    assert (d / ".2026-11-23.pack.tar.zst.damaged").is_file()  # kept aside, never deleted
    new = d / packs[0]
    assert run_cli("verify", new).returncode == 0
    assert packsalvage.salvage(new).clean
    with packfile.Pack(new) as p:
        assert set(p.names) == set(before) - lost
        for name in p.names:
            restore_session(new, name, tmp_path / "back" / name)
            assert snapshot(tmp_path / "back" / name) == before[name]
    # Nothing left to salvage; a clean pack is never rewritten.
    again = run_cli("repack", root, "--salvage", "--execute", "--json")
    assert again.returncode == 0 and b'"groups": []' in again.stdout


def test_salvage_is_not_combined_with_merge_or_drop(packed: tuple) -> None:
    root, _before, _layout = packed
    r = run_cli("repack", root, "--salvage", "--merge", "all")
    assert r.returncode == 2 and b"--salvage" in r.stderr and b"Traceback" not in r.stderr


def test_the_scan_never_decodes_a_frame_that_hides_its_size(packed: tuple,
                                                           tmp_path: Path) -> None:
    """Decompression bombs: the scan decodes only frames that declare a bounded content
    size (libzstd then stops one that outgrows it). The same session frame is found
    when it declares its size and stepped over when it does not."""
    import zstandard

    root, _before, layout = packed
    with packfile.Pack(root / PACK) as p:
        members = p.members(0)
    for declared, found_it in ((True, True), (False, False)):
        frame = zstandard.ZstdCompressor(write_checksum=True,
                                         write_content_size=declared).compress(members)
        f = tmp_path / f"{declared}.pack.tar.zst"
        f.write_bytes(frame + b"junk")
        s = packsalvage.salvage(f)
        assert s.located_by == "scan"
        assert [g.name for g in s.good] == ([layout[0][0]] if found_it else [])
