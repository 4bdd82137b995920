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


# Random sequences of the commands that create, remove or move archives and packs, on
# one tree, with `catalog --check` after each (in-process through click's runner, one
# worker: a subprocess per step made the property test minutes long).
_STEPS = {
    "sweep": ["sweep", "{root}", "--execute", "-q", "-j", "1"],
    "sweep-pack": ["sweep", "{root}", "--pack", "daily", "--execute", "-q", "-j", "1"],
    "undo": ["extract", "{root}", "--undo", "last", "--execute", "-q", "-j", "1"],
    "tree-remove": ["extract", "{root}", "--tree", "--remove-archive", "--execute", "-q",
                    "-j", "1"],
    "repack": ["repack", "{root}", "--execute", "-q"],
    "repack-merge": ["repack", "{root}", "--merge", "all", "--execute", "-q"],
    "prune": ["prune", "{root}", "--older-than", "1d", "--keep-last", "1", "--execute", "-q"],
}


def _crash(root: Path) -> None:
    """What a kill between a file step and its catalog step leaves: the rows of one
    archive never written, and one archive gone with its rows still there."""
    import sqlite3

    from archive_tool.catalog.catalog import catalog_path

    db = sqlite3.connect(catalog_path(root))
    try:
        first = db.execute("SELECT archive FROM sessions ORDER BY archive LIMIT 1").fetchone()
        if first:
            db.execute("DELETE FROM sessions WHERE archive=?", first)
            db.commit()
    finally:
        db.close()
    archives = sorted(p for p in root.rglob("*.tar.zst") if ".session-archive" not in p.parts)
    if len(archives) > 1:
        archives[-1].unlink()  # its session is gone with it: as a prune would


def test_catalog_check_is_clean_after_random_command_sequences(tmp_path_factory) -> None:
    from click.testing import CliRunner
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from archive_tool.catalog.catalogstate import check_catalog
    from archive_tool.cli import cli

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(sorted(_STEPS) + ["add", "crash"]), min_size=3,
                    max_size=8))
    def run(steps: list[str]) -> None:
        root = tmp_path_factory.mktemp("seq") / "root"
        _tree(root, 5)
        runner = CliRunner()
        assert runner.invoke(cli, ["catalog", str(root), "--rebuild"]).exit_code == 0
        day = 0
        for step in steps:
            if step == "add":
                day += 1
                _tree(root, 3, day=f"2026Y-11M-{23 + day:02d}D", script=f"s{day}")
                continue
            if step == "crash":  # a command killed between its file and catalog steps
                _crash(root)
                continue
            args = [a.format(root=root) for a in _STEPS[step]]
            r = runner.invoke(cli, args)
            # An undo of a run whose archives a later step removed, or of no run, fails
            # for those archives: a refusal, never a change the catalog misses.
            assert r.exit_code in (0, 1, 2), (step, r.output)
            c = check_catalog(root)
            assert c["clean"], (steps, step, c)

    run()


def test_a_crash_between_file_and_catalog_is_repaired_by_the_next_command(
        tmp_path: Path) -> None:
    import sqlite3

    from archive_tool.catalog.catalog import catalog_path

    root = tmp_path / "root"
    _tree(root, 8)
    _ok("sweep", root, "--pack", "daily", "--execute", "-q")
    _tree(root, 3, day="2026Y-11M-24D", script="other")
    _ok("sweep", root / "other_out", "--execute", "-q")  # archives the catalog never saw
    gone = sorted(root.rglob("*.pack.tar.zst"))[0]
    gone.unlink()  # as a repack or prune killed after its unlink, before its catalog step
    db = sqlite3.connect(catalog_path(root))
    db.execute("DELETE FROM sessions WHERE archive LIKE '%FINISHED_SUCCESS/2026-11-23%'")
    db.commit()
    db.close()  # and a pack sweep killed before its rows went in
    c = _check(root)
    assert not c["clean"] and c["n_missing"] >= 4 and c["n_stale"] >= 1
    _ok("prune", root, "--older-than", "100y", "--execute", "-q")  # deletes nothing
    assert _check(root)["clean"]
