"""The session-archive command as a user (and cron) sees it: outputs and exit codes."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from archive_tool.cli import cli
from archive_tool.demo import make_tree
from archive_tool.guard.lock import lock_path
from tests.conftest import SID, make_session, run_cli, snapshot


def invoke(*args: str):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_every_command_has_help_text() -> None:
    for name, cmd in cli.commands.items():
        assert cmd.help, name
        r = invoke(name, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output


def test_pack_then_unpack_round_trip(session: Path) -> None:
    before = snapshot(session)
    r = run_cli("pack", session, "--format", "tar.gz")
    assert r.returncode == 0, r.stderr
    archive = Path(r.stdout.decode().strip())
    assert archive.name == session.name + ".tar.gz" and not session.exists()
    r = run_cli("unpack", archive, "--remove-archive")
    assert r.returncode == 0 and Path(r.stdout.decode().strip()) == session
    assert snapshot(session) == before and not archive.exists()


def test_pack_keep_source_and_refusal_to_overwrite(session: Path) -> None:
    assert run_cli("pack", session, "--keep-source").returncode == 0
    assert session.exists()
    r = run_cli("pack", session, "--keep-source")
    assert r.returncode == 1
    assert r.stderr.decode().startswith("Error: ") and "already exists" in r.stderr.decode()
    assert r.stderr.decode().count("\n") == 1


def test_verify_prints_one_line_per_bad_archive_and_exits_1(tmp_path: Path) -> None:
    good = [run_cli("pack", make_session(tmp_path / f"d{i}")).stdout.decode().strip() for i in range(2)]
    bad = tmp_path / "bad.tar.zst"
    data = bytearray(Path(good[0]).read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 2]))
    r = run_cli("verify", *good)
    assert r.returncode == 0 and r.stdout.decode().count("ok ") == 2
    r = run_cli("verify", good[0], bad, good[1], "--quiet")
    assert r.returncode == 1
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("BAD ") and "bad.tar.zst" in lines[0]


def test_show_lists_members_and_cats_one(session: Path) -> None:
    archive = run_cli("pack", session).stdout.decode().strip()
    r = run_cli("show", archive)
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert any(line.endswith(f"{session.name}/CONFIGS/CONFIG.yaml") for line in lines)
    assert any("latest.log -> logs/stdout.log" in line for line in lines)
    r = run_cli("show", archive, "CONFIGS/CONFIG.yaml")
    assert r.returncode == 0 and r.stdout == b"ID: x\nSEED: 42\n"
    r = run_cli("show", archive, "no/such/member")
    assert r.returncode == 1 and r.stderr.decode().startswith("Error: ")


def test_sweep_dry_run_by_default_then_execute(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 50, seed=7)
    before = snapshot(tmp_path)
    r = invoke("sweep", tmp_path)
    assert r.exit_code == 0 and "would archive" in r.output and "--execute" in r.output
    assert snapshot(tmp_path) == before
    r = invoke("sweep", tmp_path, "--execute", "--quiet", "--workers", "2")
    assert r.exit_code == 0 and r.output == ""
    assert not list(tmp_path.glob("*/*/FINISHED_*/*-main"))


def test_sweep_json_prints_exactly_one_object(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 30, seed=8)
    r = run_cli("sweep", tmp_path, "--execute", "--json", "--track-bytes")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # raises if anything else is on stdout
    assert summary["archived"] == summary["candidates"] > 0
    assert summary["bytes_in"] > summary["bytes_out"] > 0


def test_second_sweep_on_a_locked_root_exits_75(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 5, seed=9)
    fd = os.open(lock_path(str(tmp_path)), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = run_cli("sweep", tmp_path, "--execute")
    finally:
        os.close(fd)
    assert r.returncode == 75
    assert r.stderr.decode() == f"Error: another sweep holds {lock_path(str(tmp_path))}\n"
    assert run_cli("sweep", tmp_path, "--execute", "-q").returncode == 0


@pytest.mark.parametrize("args", [
    ["sweep", "/nonexistent/root"],
    ["sweep", "/"],
    ["sweep", "/etc"],
    ["sweep", "ROOT", "--format", "zip"],
    ["sweep", "ROOT", "--max-dirs", "-1"],
    ["sweep", "ROOT", "--workers", "0"],
    ["sweep", "ROOT", "--older-than-days", "-3"],
    ["sweep", "ROOT", "--shard", "5/2"],
    ["sweep", "FILE"],
    ["compress", "/nonexistent"],
    ["extract", "/nonexistent"],
    ["pack", "/nonexistent"],
    ["unpack", "/nonexistent.tar.gz"],
    ["verify"],
])
def test_bad_input_exits_2_with_one_error_line(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "f").write_text("x")
    args = [str(tmp_path) if a == "ROOT" else str(tmp_path / "f") if a == "FILE" else a for a in args]
    r = run_cli(*args)
    assert r.returncode == 2, (args, r.stderr)
    err = r.stderr.decode()
    assert "Traceback" not in err and "Error: " in err


def test_compress_and_extract_keep_the_published_flags(tmp_path: Path) -> None:
    fin = tmp_path / "FINISHED_SUCCESS"
    d = make_session(fin, f"{SID}-main", extra=False)
    before = snapshot(d)
    r = run_cli("compress", fin, "--verbose")
    assert r.returncode == 0 and str(d) in r.stdout.decode()  # dry run lists candidates
    r = run_cli("compress", fin, "--no-dry-run", "--no-remove-src", "--format", "tar.gz")
    assert r.returncode == 0 and d.exists() and Path(f"{d}.tar.gz").exists()
    # A later run with --remove-src verifies the existing archive against the dir and only
    # then removes the dir.
    r = run_cli("compress", fin, "--no-dry-run", "--max-dirs", "0")
    assert r.returncode == 0 and not d.exists() and "verified" in r.stdout.decode()
    r = run_cli("extract", fin, "--no-dry-run", "--dest", tmp_path / "back", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["restored"] == 1
    assert snapshot(tmp_path / "back" / d.name) == before


def test_module_entry_point_and_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("session-archive, version ")
