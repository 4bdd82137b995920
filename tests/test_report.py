"""`session-archive report`: what a sweep would do, with the sweep's own numbers, never
changing anything; PNG only on request (matplotlib imported only then)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archive_tool import cli
from archive_tool.catalog.report import AGE_BUCKETS, build_report
from archive_tool.catalog.reportview import format_report
from archive_tool.demo import make_tree
from archive_tool.names import is_session_name, trash_name
from archive_tool.sweep.sessions import sweep

from .conftest import BACKENDS, snapshot

SAME_AS_SWEEP = ("scanned", "candidates", "skipped", "skipped_reasons", "cleaned", "failed",
                 "inodes_in", "bytes_in")


def sessions_under(root: Path, state: str = "FINISHED_SUCCESS") -> list[Path]:
    return sorted(p for p in root.rglob(f"{state}/*") if p.is_dir() and is_session_name(p.name))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A demo tree plus the odd cases a sweep handles: a session already archived beside
    its source, a leftover trash dir, and a session holding a FIFO (unreadable: failed)."""
    root = tmp_path / "runs"
    make_tree(str(root), 120, seed=3)
    done = sessions_under(root)
    archived, fifo = done[0], done[1]
    (archived.parent / f"{archived.name}.tar.gz").write_bytes(b"not checked by a dry run")
    trash = done[2].parent / trash_name("2020Y-01M-01D-00h00m00s_AAAA-main")
    trash.mkdir()
    (trash / "x").write_text("x")
    os.mkfifo(fifo / "pipe")
    return root


def run_cli_probe(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter; its last stderr line says whether matplotlib was
    imported."""
    code = (
        "import sys\n"
        "from archive_tool.cli import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:], prog_name='session-archive')\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "sys.stderr.write('\\nMATPLOTLIB=%s\\n' % ('matplotlib' in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          timeout=120, text=True)


def matplotlib_imported(proc: subprocess.CompletedProcess) -> bool:
    return proc.stderr.strip().splitlines()[-1] == "MATPLOTLIB=True"


@pytest.mark.parametrize("use_fd", BACKENDS)
@pytest.mark.parametrize("older", [None, 30.0])
def test_report_totals_equal_the_dry_run_sweep(tree: Path, use_fd: bool, older: float | None) -> None:
    rep = build_report(tree, older_than_days=older, use_fd=use_fd)
    dry = sweep(tree, dry_run=True, track_bytes=True, older_than_days=older, use_fd=use_fd)
    assert {k: rep[k] for k in SAME_AS_SWEEP} == {k: dry[k] for k in SAME_AS_SWEEP}
    if older is None:
        assert rep["failed"] == 1 and "FIFO" in rep["failures"][0]["reason"]
    else:  # adding the FIFO made that session's dir recent: skipped before it is read
        assert rep["failed"] == 0
    assert rep["cleaned"] == 1
    assert rep["backend"] == dry["backend"]
    # An unreadable session is a candidate the sweep would fail on, not one it archives.
    assert rep["sessions"] == rep["candidates"] - rep["failed"]
    assert rep["inodes_freed"] == rep["inodes_in"] - rep["sessions"]


def test_report_per_subtree_counts_add_up(tree: Path) -> None:
    rep = build_report(tree)
    rows = rep["subtrees"]
    assert sum(r["sessions"] for r in rows) == rep["sessions"] == rep["candidates"] - 1
    assert sum(r["inodes"] for r in rows) == rep["inodes_in"]
    assert sum(r["bytes"] for r in rows) == rep["bytes_in"]
    assert sum(r["tar_bytes"] for r in rows) == rep["tar_bytes"]
    assert sum(a["sessions"] for a in rep["ages"]) == rep["sessions"]
    assert [a["bucket"] for a in rep["ages"]] == [b for b, _ in AGE_BUCKETS]
    for r in rows:
        assert sum(r["ages"].values()) == r["sessions"]
        assert r["newest_days"] <= r["oldest_days"]
        # The subtree is the <script>_out dir: the parent of FINISHED_*.
        assert r["subtree"].endswith("_out") and (tree / r["subtree"]).is_dir()
    assert [r["sessions"] for r in rows] == sorted((r["sessions"] for r in rows), reverse=True)
    # Every session of a subtree is under it, in a FINISHED_* dir (RUNNING never counted).
    on_disk = {}
    for state in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
        for s in sessions_under(tree, state):
            sub = str(s.parent.parent.relative_to(tree))
            on_disk[sub] = on_disk.get(sub, 0) + 1
    assert sum(on_disk.values()) == rep["candidates"]
    assert all(r["sessions"] <= on_disk[r["subtree"]] for r in rows)


def test_report_older_than_uses_the_newest_file(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_tree(str(root), 80, seed=1)
    everything = build_report(root)
    old = build_report(root, older_than_days=30)
    assert 0 < old["sessions"] < everything["sessions"]
    assert old["skipped_reasons"] == {"too recent": everything["candidates"] - old["candidates"]}
    assert all(a["sessions"] == 0 for a in old["ages"] if a["min_days"] < 30)
    assert all(r["oldest_days"] >= 30 for r in old["subtrees"])
    # An old dir with one fresh file inside is too recent, exactly as sweep decides.
    victim = sessions_under(root)[0]
    long_ago = time.time() - 400 * 86400
    for p in [victim, *victim.rglob("*")]:
        os.utime(p, (long_ago, long_ago))
    (victim / "logs" / "stdout.log").touch()
    os.utime(victim, (long_ago, long_ago))
    again = build_report(root, older_than_days=30)
    dry = sweep(root, dry_run=True, track_bytes=True, older_than_days=30)
    assert {k: again[k] for k in SAME_AS_SWEEP} == {k: dry[k] for k in SAME_AS_SWEEP}
    assert again["ages"][-1]["sessions"] == 0  # not counted as >365d


def test_report_never_changes_the_tree(tree: Path, tmp_path: Path) -> None:
    before = snapshot(tree)
    build_report(tree)
    build_report(tree, older_than_days=10, format="tar.xz", sample=500)
    out = tmp_path / "r.png"
    r = CliRunner().invoke(cli.cli, ["report", str(tree), "--plot", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert snapshot(tree) == before


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz", "tar"])
def test_report_estimate_is_close_to_the_real_sweep(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "runs"
    make_tree(str(root), 200, seed=7)
    rep = build_report(root, format=fmt, sample=50, use_fd=False)
    assert rep["estimate"]["sampled"] == 50
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    real = sweep(copy, dry_run=False, format=fmt, track_bytes=True, workers=2)
    assert real["archived"] == rep["sessions"] == rep["candidates"] and real["failed"] == 0
    assert real["inodes_in"] == rep["inodes_in"] and real["bytes_in"] == rep["bytes_in"]
    if fmt == "tar":
        # Uncompressed: the size computed from the manifests alone is exact.
        assert rep["tar_bytes"] == rep["estimated_bytes_out"] == real["bytes_out"]
    else:
        assert 0.75 <= rep["estimated_bytes_out"] / real["bytes_out"] <= 1.25


def test_report_sample_is_the_same_whatever_the_walk_order(tree: Path) -> None:
    reports = [build_report(tree, use_fd=b, sample=10, seed=5) for b in (True, False)]
    assert reports[0]["estimate"] == reports[1]["estimate"]
    assert build_report(tree, sample=10, seed=6)["estimate"] != reports[0]["estimate"]
    none = build_report(tree, sample=0)
    assert none["estimate"]["sampled"] == 0 and none["estimated_bytes_out"] is None
    assert "no sessions sampled" in format_report(none)


def test_report_json_is_exactly_one_object_and_imports_no_matplotlib(tree: Path) -> None:
    proc = run_cli_probe("report", str(tree), "--json", "--older-than-days", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1
    data = json.loads(proc.stdout)
    dry = sweep(tree, dry_run=True, track_bytes=True, older_than_days=5)
    assert {k: data[k] for k in SAME_AS_SWEEP} == {k: dry[k] for k in SAME_AS_SWEEP}
    assert not matplotlib_imported(proc)


def test_report_text_names_the_numbers_and_imports_no_matplotlib(tree: Path) -> None:
    proc = run_cli_probe("report", str(tree))
    assert proc.returncode == 0, proc.stderr
    rep = build_report(tree)
    assert f"would archive {rep['sessions']} of {rep['scanned']}" in proc.stdout
    assert rep["subtrees"][0]["subtree"] in proc.stdout
    assert "Nothing was changed" in proc.stdout
    assert "FIFO" in proc.stderr  # the unreadable session is named, on stderr
    assert not matplotlib_imported(proc)


@pytest.mark.parametrize("as_json", [False, True])
def test_report_plot_writes_a_png(tree: Path, tmp_path: Path, as_json: bool) -> None:
    out = tmp_path / "report.png"
    proc = run_cli_probe("report", str(tree), "--plot", str(out), *(["--json"] if as_json else []))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert matplotlib_imported(proc)
    if as_json:
        json.loads(proc.stdout)
    else:
        assert f"plot written to {out}" in proc.stdout


def test_report_of_an_empty_root_says_nothing_to_do(tmp_path: Path) -> None:
    rep = build_report(tmp_path)
    assert rep["sessions"] == 0 and rep["subtrees"] == [] and rep["estimated_bytes_out"] is None
    out = tmp_path / "empty.png"
    r = CliRunner().invoke(cli.cli, ["report", str(tmp_path), "--plot", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0 and "would archive 0 of 0" in r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [["/nonexistent-root"], ["/"], ["{root}", "--older-than-days", "-1"],
                                  ["{root}", "--format", "zip"], ["{root}", "--sample", "-3"]])
def test_report_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    args = [a.format(root=tmp_path) for a in args]
    r = CliRunner().invoke(cli.cli, ["report", *args], catch_exceptions=False)
    assert r.exit_code == 2
    assert "Traceback" not in r.output


def _du(paths: list[Path]) -> int:
    """What `du -B1 --apparent-size=no` counts for these session dirs: st_blocks of every
    inode below them."""
    total = 0
    for top in paths:
        total += top.lstat().st_blocks * 512
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                total += (Path(dirpath) / name).lstat().st_blocks * 512
    return total


def test_report_counts_disk_like_du_and_the_archives_it_predicts(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_tree(str(root), 300, seed=5)
    rep = build_report(root, sample=300)
    sessions = [p for s in ("FINISHED_SUCCESS", "FINISHED_ERROR", "FINISHED")
                for p in sessions_under(root, s)]
    assert len(sessions) == rep["sessions"]
    assert rep["disk_bytes_in"] == _du(sessions)
    # Content bytes understate what the sessions cost: every small file takes a block.
    assert rep["disk_bytes_in"] > 2 * rep["bytes_in"]
    assert sum(r["disk_bytes"] for r in rep["subtrees"]) == rep["disk_bytes_in"]
    sweep(root, dry_run=False, workers=1)
    archives = [p for p in root.rglob("*.tar.zst") if p.is_file()]
    real_after = sum(p.stat().st_blocks * 512 for p in archives)
    assert 0.8 <= rep["estimated_disk_after"] / real_after <= 1.25, (rep["estimated_disk_after"],
                                                                     real_after)
    assert rep["disk_freed"] == rep["disk_bytes_in"] - rep["estimated_disk_after"] > 0


def test_report_rolls_subtrees_up_per_project_with_shares(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_tree(str(root), 200, seed=9)
    rep = build_report(root, sample=20)
    projects = rep["projects"]
    assert {p["project"] for p in projects} == {r["subtree"].split("/")[0]
                                                for r in rep["subtrees"]}
    assert len(projects) < len(rep["subtrees"])  # a project holds several scripts' subtrees
    for key in ("sessions", "inodes", "disk_bytes", "estimated_disk_after"):
        assert sum(p[key] for p in projects) == sum(r[key] for r in rep["subtrees"]), key
    assert sum(p["inodes_freed"] for p in projects) == rep["inodes_freed"]
    assert sum(p["share_inodes_freed"] for p in projects) == pytest.approx(1, abs=1e-4)
    assert sum(p["share_disk_freed"] for p in projects) == pytest.approx(1, abs=1e-4)
    freed = [p["disk_freed"] for p in projects]
    assert freed == sorted(freed, reverse=True)
    text = format_report(rep)
    assert "project" in text and "inodes freed" in text and "disk freed" in text
    assert f"{projects[0]['inodes_freed']:,}" in text
    assert "on disk (du)" in text
