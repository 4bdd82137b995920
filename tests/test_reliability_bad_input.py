"""Bad input to every command: one ``Error:`` line (click may add its Usage/Try hint),
exit 2, no traceback, nothing changed. Unreadable dirs are tested for real: the command
runs as nobody (65534) in a subprocess, since root reads everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from archive_tool import cli
from tests.conftest import SID, as_nobody, make_session, snapshot

COMMANDS = ["archive", "pack", "unpack", "verify", "show", "sweep", "compress", "extract",
            "demo-tree", "report", "prune", "catalog", "find", "repack", "mount"]

# (command line, what is wrong). ROOT: a tree with one session; FILE: a regular file;
# DIR: a plain directory; ARCH: a valid archive; MISSING: a path that does not exist.
CASES = [
    (["archive", "MISSING"], "missing dir"),
    (["archive", "SESSION", "-f", "zip"], "unknown format"),
    (["archive", "SESSION", "--level", "0"], "level out of range"),
    (["pack", "MISSING"], "missing dir"),
    (["pack", "FILE"], "file instead of a dir"),
    (["pack", "SESSION", "-f", "zip"], "unknown format"),
    (["pack", "SESSION", "--level", "-1"], "negative level"),
    (["pack", "SESSION", "--level", "0"], "level out of range"),
    (["archive", "SESSION", "--level", "20"], "zstd ultra level (not offered)"),
    (["archive", "SESSION", "-f", "tar.gz", "--level", "10"], "gzip level above 9"),
    (["archive", "SESSION", "-f", "tar", "--level", "1"], "level for uncompressed tar"),
    (["unpack", "MISSING"], "missing archive"),
    (["unpack", "DIR"], "dir instead of an archive"),
    (["verify"], "no archive"),
    (["verify", "MISSING"], "missing archive"),
    (["verify", "DIR", "-j", "0"], "zero workers for a tree"),
    (["show", "MISSING"], "missing archive"),
    (["show", "DIR"], "dir instead of an archive"),
    (["sweep", "MISSING"], "missing root"),
    (["sweep", "FILE"], "file instead of a dir"),
    (["sweep", "/"], "dangerous root"),
    (["sweep", "/usr"], "dangerous root"),
    (["sweep", "ROOT/.git"], "root inside .git"),
    (["sweep", ""], "empty root"),
    (["sweep", "ROOT", "-f", "zip"], "unknown format"),
    (["sweep", "ROOT", "--max-dirs", "-1"], "negative cap"),
    (["sweep", "ROOT", "--older-than-days", "-1"], "negative age"),
    (["sweep", "ROOT", "-j", "-2"], "negative workers"),
    (["sweep", "ROOT", "--batch-size", "-5"], "negative batch"),
    (["sweep", "ROOT", "--level", "-1"], "negative level"),
    (["sweep", "ROOT", "--shard", "-1/4"], "negative shard"),
    (["sweep", "ROOT", "--shard", "x"], "garbage shard"),
    (["sweep", "ROOT", "--execute", "--max-dirs", "-3"], "negative cap, executing"),
    (["compress", "MISSING"], "missing root"),
    (["compress", "FILE"], "file instead of a dir"),
    (["compress", "/etc", "--execute"], "dangerous root"),
    (["compress", "ROOT", "-f", "rar"], "unknown format"),
    (["compress", "ROOT", "--max-dirs", "-1"], "negative cap"),
    (["extract", "MISSING"], "missing root"),
    (["extract", "FILE"], "file instead of a dir"),
    (["extract", "/", "--execute"], "dangerous root"),
    (["extract", "ROOT", "--max-files", "-1"], "negative cap"),
    (["extract", "ROOT", "-j", "0"], "zero workers"),
    (["demo-tree", "DEMO", "-n", "-1"], "negative count"),
    (["demo-tree", "ROOT"], "non-empty dir"),
    (["report", "MISSING"], "missing root"),
    (["report", "FILE"], "file instead of a dir"),
    (["report", "/"], "dangerous root"),
    (["report", "ROOT", "-f", "zip"], "unknown format"),
    (["report", "ROOT", "--older-than-days", "-1"], "negative age"),
    (["report", "ROOT", "--sample", "-1"], "negative sample"),
    (["extract", "MISSING", "--tree"], "missing root, tree"),
    (["extract", "/", "--tree", "--execute"], "dangerous root, tree"),
    (["extract", "ROOT", "--undo", "nosuchrun", "--execute"], "unknown run"),
    (["extract", "ROOT", "--tree", "--undo", "last"], "tree and undo"),
    (["prune", "MISSING", "--older-than", "1d"], "missing root"),
    (["prune", "/", "--older-than", "1d", "--execute"], "dangerous root"),
    (["prune", "ROOT", "--execute"], "no criteria"),
    (["prune", "ROOT", "--older-than", "yesterday"], "garbage age"),
    (["prune", "ROOT", "--keep-last", "-1"], "negative keep-last"),
    (["prune", "ROOT", "--state", "RUNNING", "--execute"], "RUNNING is never pruned"),
    (["sweep", "ROOT", "--execute", "--pack", "hourly"], "unknown pack period"),
    (["sweep", "ROOT", "--execute", "--pack", "0"], "zero sessions a pack"),
    (["sweep", "ROOT", "--execute", "--pack", "daily", "-f", "tar.gz"], "pack not zstd"),
    (["sweep", "ROOT", "--execute", "--pack", "daily", "--batch-size", "5"], "pack batch"),
    (["catalog", "MISSING", "--rebuild"], "missing root"),
    (["catalog", "ROOT", "--rebuild", "--check"], "--rebuild and --check at once"),
    (["catalog", "/", "--rebuild"], "dangerous root"),
    (["find", "MISSING"], "missing root"),
    (["mount", "MISSING", "DIR"], "missing root"),
    (["mount", "ROOT", "ROOT/inside"], "mount point inside the root"),
    (["find", "ROOT"], "no catalog"),
    (["find", "ROOT", "--where", "ARGS.lr"], "where without operator"),
    (["find", "ROOT", "--where", "SEED<abc"], "order on a non-number"),
    (["find", "ROOT", "--since", "yesterday"], "garbage date"),
    (["repack", "MISSING"], "missing root"),
    (["repack", "FILE"], "file instead of a dir"),
    (["repack", "/", "--execute"], "dangerous root"),
    (["repack", "ROOT/.git", "--execute"], "root inside .git"),
    (["repack", "ROOT", "--merge", "hourly", "--execute"], "unknown merge period"),
]


def test_every_command_has_bad_input_cases() -> None:
    assert {c[0][0] for c in CASES} == set(COMMANDS) == set(cli.cli.commands)


def _tree(tmp: Path) -> dict[str, str]:
    root = tmp / "root"
    session = make_session(root / "FINISHED_SUCCESS", f"{SID}-main", extra=False)
    (root / ".git").mkdir()
    (tmp / "file").write_text("x")
    (tmp / "dir").mkdir()
    return {"ROOT": str(root), "SESSION": str(session), "FILE": str(tmp / "file"),
            "DIR": str(tmp / "dir"), "MISSING": str(tmp / "missing"), "DEMO": str(tmp / "demo")}


def _subst(args: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        head, sep, rest = a.partition("/")
        out.append(paths[head] + sep + rest if head in paths else a)
    return out


def assert_one_error_line(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("Error: ")]
    others = [ln for ln in stderr.splitlines()
              if ln.strip() and not ln.startswith(("Error: ", "Usage: ", "Try "))]
    assert len(errors) == 1 and not others, stderr


@pytest.mark.parametrize("args,why", CASES, ids=[f"{' '.join(c[0][:1])}: {c[1]}" for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path: Path, args: list[str], why: str) -> None:
    paths = _tree(tmp_path)
    before = snapshot(tmp_path)
    r = CliRunner().invoke(cli.cli, _subst(args, paths), catch_exceptions=False)
    assert r.exit_code == 2, (why, r.exit_code, r.output, r.stderr)
    assert_one_error_line(r.stderr)
    assert snapshot(tmp_path) == before, "bad input changed something"


@pytest.mark.parametrize("command", ["pack", "sweep", "compress", "extract", "report",
                                     "unpack", "verify", "show"])
def test_unreadable_input_is_one_error_line_and_exit_2(world_dir: Path, command: str) -> None:
    """Run as nobody: a session/root dir or an archive it may not read."""
    root = world_dir / "root"
    session = make_session(root / "FINISHED_SUCCESS", f"{SID}-main", extra=False)
    archive = world_dir / "private" / f"{SID}-other.tar.gz"
    archive.parent.mkdir()
    from archive_tool.engine.single import archive_one

    other = make_session(archive.parent, f"{SID}-other", extra=False)
    archive_one(other, "tar.gz")
    target = {"pack": session, "unpack": archive, "verify": archive, "show": archive}.get(command, root)
    os.chmod(target, 0o000)
    try:
        code = (f"sys.argv = ['session-archive', {command!r}, {str(target)!r}]\n"
                "archive_tool.cli.main()\n")
        r = subprocess.run([sys.executable, "-c", as_nobody(code)], capture_output=True,
                           timeout=60, cwd=world_dir)
    finally:
        os.chmod(target, 0o755 if target.is_dir() else 0o644)
    assert r.returncode == 2, (command, r.returncode, r.stderr.decode())
    assert_one_error_line(r.stderr.decode())
    assert session.is_dir() and archive.is_file()
