"""``verify ROOT`` (issue 26): a tree of archives and packs on the worker pool, a summary
line, exit 1 naming the bad ones."""

from __future__ import annotations

import json
from pathlib import Path

from archive_tool.pack import packfile
from tests.conftest import run_cli
from tests.test_pack import _tree


def _mixed_tree(root: Path) -> tuple[list[Path], list[Path]]:
    """Script "train" in packs, script "eval" in per-session archives."""
    _tree(root, 6, script="train")
    _tree(root, 4, script="eval")
    assert run_cli("sweep", root / "train_out", "--pack", "daily", "--execute",
                   "-q").returncode == 0
    assert run_cli("sweep", root / "eval_out", "--execute", "-q").returncode == 0
    packs = sorted(root.rglob("*.pack.tar.zst"))
    archives = sorted(p for p in root.rglob("*.tar.zst") if p not in packs)
    return packs, archives


def test_verify_of_a_tree_checks_every_archive_and_pack_with_a_summary(tmp_path: Path) -> None:
    root = tmp_path / "root"
    packs, archives = _mixed_tree(root)
    assert len(packs) == 2 and len(archives) == 4
    r = run_cli("verify", root, "-j", "2", "--progress")
    assert r.returncode == 0, r.stderr
    assert f"verified 6 archives under {root} (2 packs): 6 ok, 0 bad".encode() in r.stdout
    assert b"verify" in r.stderr and b"6/6" in r.stderr  # the bar reached its total
    s = json.loads(run_cli("verify", root, "--json").stdout)
    assert (s["checked"], s["ok"], s["bad"], s["packs"]) == (6, 6, 0, 2)


def test_verify_of_a_tree_exits_1_naming_each_bad_archive(tmp_path: Path) -> None:
    root = tmp_path / "root"
    packs, archives = _mixed_tree(root)
    bad_archive = archives[1]
    data = bytearray(bad_archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad_archive.write_bytes(bytes(data))
    bad_pack = max(packs, key=lambda p: p.stat().st_size)  # FINISHED_SUCCESS: 5 sessions
    with packfile.Pack(bad_pack) as p:
        f, lost = p.frames[1], p.names[1]
    data = bytearray(bad_pack.read_bytes())
    data[f.offset + f.csize // 2] ^= 0xFF
    bad_pack.write_bytes(bytes(data))
    r = run_cli("verify", root, "-q")
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    out = r.stdout.decode()
    assert out.count("BAD ") == 2 and "4 ok, 2 bad" in out
    assert f"lost 1 of {len(p.names)} sessions: {lost}" in out  # the pack's salvage line
    err = r.stderr.decode()
    assert "2 archives failed verification" in err
    assert str(bad_archive) in err and str(bad_pack) in err


def test_verify_refuses_a_mix_of_trees_and_archives(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _packs, archives = _mixed_tree(root)
    r = run_cli("verify", root, archives[0])
    assert r.returncode == 2 and b"not both" in r.stderr
