"""The catalog stays true (issue 26): after each command of the README that creates,
removes or moves archives and packs, `catalog --check` finds no difference; a
difference is exit 1 naming it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.test_pack import _tree


def _check(root: Path) -> dict:
    r = run_cli("catalog", root, "--check", "--json")
    out = json.loads(r.stdout)
    assert (r.returncode == 0) == out["clean"], r.stderr
    return out


def _ok(*args: object) -> None:
    r = run_cli(*args)
    assert r.returncode == 0, (args, r.stderr)


def test_catalog_check_is_clean_after_every_command_of_the_readme(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 8, script="train")
    _ok("sweep", root, "--pack", "daily", "--execute", "-q")
    assert _check(root)["clean"] and _check(root)["rows"] == 8
    _ok("extract", root, "--undo", "last", "--execute", "-q")  # from packs: packs kept
    assert _check(root)["clean"]
    _ok("repack", root, "--execute", "-q")  # drops the restored sessions: packs go
    c = _check(root)
    assert c["clean"] and c["rows"] == 0
    _ok("sweep", root, "--execute", "-q")  # per-session: the root has a catalog now
    c = _check(root)
    assert c["clean"] and c["rows"] == 8, c
    _ok("extract", root, "--tree", "--remove-archive", "--execute", "-q")
    c = _check(root)
    assert c["clean"] and c["rows"] == 0, c
    _ok("sweep", root, "--execute", "-q")
    _ok("prune", root, "--older-than", "1d", "--keep-last", "2", "--execute", "-q")
    c = _check(root)
    assert c["clean"] and 0 < c["rows"] < 8, c


def test_catalog_check_exits_1_naming_each_difference(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root, 4)
    _ok("sweep", root, "--execute", "-q", "--catalog")
    archive = sorted(root.rglob("*.tar.zst"))[0]
    archive.rename(archive.with_name(archive.name + ".moved"))  # as a crash or a hand would
    r = run_cli("catalog", root, "--check")
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert f"stale   {archive.relative_to(root)}".encode() in r.stdout
    assert b"1 stale" in r.stdout and b"--rebuild" in r.stderr
    _ok("catalog", root, "--rebuild")
    assert _check(root)["clean"]
    r = run_cli("catalog", root, "--check", "--rebuild")
    assert r.returncode == 2
