"""Root over a user's tree, round 2 (issue 23): the state dir, the catalog, run manifests,
CONFIG files and stale runs are the tree owner's input (archive_tool/guard/untrusted.py).

Each test is an attack of issue 23 items 1-7: the user (a throw-away uid, setpriv) forges
or plants something in her own tree, root runs the command over it (as a cron job would),
and the test checks the refusal is one line, and that nothing outside her tree was read
(its bytes are not in the output), written, moved or deleted (``snapshot``), with memory
bounded where the attack aimed at it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from archive_tool.catalog import rebuild
from archive_tool.engine.single import archive_one
from archive_tool.errors import UntrustedInput
from archive_tool.stale import finalize as stale
from tests.conftest import SID, make_session, run_cli, snapshot

USER = 4242  # alice: a uid with no account
OTHER = 4343  # bob
SID2 = "2026Y-11M-24D-10h00m00s_ZZzz"
SID3 = "2026Y-11M-25D-10h00m00s_YYyy"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="plays root against a user: needs root and setpriv")


def as_user(code: str, uid: int = USER) -> None:
    """Run Python *code* as *uid* (no groups): what the user can do, and nothing more."""
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    sys.executable, "-c", "import os\n" + code], check=True, timeout=60)


def chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, uid, follow_symlinks=False)


class Tree:
    """``base/alice`` (the root swept, hers), ``base/bob`` (0700, another user's archive
    whose CONFIG holds a secret), ``base/rootonly`` (0700 root: stands for /etc)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "alice"
        self.fin = self.root / "proj_out" / "FINISHED_SUCCESS"
        self.session = make_session(self.fin, f"{SID}-main")
        chown_tree(self.root, USER)
        bob_fin = base / "bob" / "proj_out" / "FINISHED_SUCCESS"
        s = make_session(bob_fin, f"{SID2}-b", extra=False)
        (s / "CONFIGS" / "CONFIG.yaml").write_text("SECRET: BOBSECRET\n")
        self.bob_archive = Path(archive_one(s, format="tar.zst"))
        chown_tree(base / "bob", OTHER)
        os.chmod(base / "bob", 0o700)
        self.secret = base / "rootonly"
        self.secret.mkdir(mode=0o700)
        (self.secret / "shadow").write_text("root:$6$ROOTSECRET\n")
        self.outside_before = self.outside()

    def outside(self) -> dict:
        return {"bob": snapshot(self.base / "bob"), "secret": snapshot(self.secret)}

    def untouched(self) -> bool:
        return self.outside() == self.outside_before


@pytest.fixture
def tree() -> Iterator[Tree]:
    # Under /tmp (1777), not pytest's root-only tmp dir: the user must reach her tree.
    base = Path(tempfile.mkdtemp(prefix="statedir-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield Tree(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def one_line_refusal(r: subprocess.CompletedProcess, *words: bytes) -> None:
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert b"Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(b"Error: ") and r.stderr.count(b"\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def no_secret(r: subprocess.CompletedProcess) -> None:
    for s in (b"BOBSECRET", b"ROOTSECRET"):
        assert s not in r.stdout and s not in r.stderr, (r.stdout, r.stderr)


def _manifest(t: Tree, lines: list[dict]) -> Path:
    runs = t.root / ".session-archive" / "runs"
    body = "".join(json.dumps(x) + "\n" for x in lines)
    as_user(f"os.makedirs({str(runs)!r}, exist_ok=True)\n"
            f"open({str(runs / '20260101T000000Z.jsonl')!r}, 'w').write({body!r})")
    return runs / "20260101T000000Z.jsonl"


# ------------------------------------------------------------------- 1: extract --undo


def test_undo_line_with_dotdot_restores_and_deletes_nothing_outside_the_tree(tree: Tree) -> None:
    """Item 1: ``ROOT/../bob/.../<ID>.tar.zst`` passed the old text-prefix check; root
    restored bob's archive and removed it."""
    dotdot = f"{tree.root}/../bob/proj_out/FINISHED_SUCCESS/{tree.bob_archive.name}"
    _manifest(tree, [{"session": dotdot[:-len(".tar.zst")], "archive": dotdot, "bytes": 1,
                      "status": "archived"}])
    r = run_cli("extract", tree.root, "--undo", "last", "--execute")
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert b"not a plain path below the root; refused" in r.stdout + r.stderr, r
    assert tree.bob_archive.is_file() and not (tree.bob_archive.parent / f"{SID2}-b").exists()
    assert tree.untouched()


def test_undo_of_a_real_run_still_restores_it(tree: Tree) -> None:
    r = run_cli("sweep", tree.root, "--execute")
    assert r.returncode == 0, r.stderr
    assert not tree.session.exists()
    r = run_cli("extract", tree.root, "--undo", "last", "--execute")
    assert r.returncode == 0, r.stderr
    assert (tree.session / "CONFIGS" / "CONFIG.yaml").is_file()
    assert not list(tree.fin.glob("*.tar.zst"))


def test_undo_line_whose_dir_is_a_symlink_out_of_the_tree_is_refused(tree: Tree) -> None:
    link = tree.root / "proj_out" / "elsewhere"
    as_user(f"os.symlink({str(tree.bob_archive.parent)!r}, {str(link)!r})")
    a = f"{link}/{tree.bob_archive.name}"
    _manifest(tree, [{"session": a[:-len(".tar.zst")], "archive": a, "bytes": 1,
                      "status": "archived"}])
    r = run_cli("extract", tree.root, "--undo", "last", "--execute")
    assert r.returncode == 1 and b"refused" in r.stdout + r.stderr, r
    assert tree.bob_archive.is_file() and tree.untouched()


# --------------------------------------------------------------- 6, 7: manifest files


def test_manifest_planted_as_a_symlink_to_a_root_only_file_is_refused_unread(
        tree: Tree) -> None:
    runs = tree.root / ".session-archive" / "runs"
    as_user(f"os.makedirs({str(runs)!r})\n"
            f"os.symlink({str(tree.secret / 'shadow')!r}, {str(runs / 'x.jsonl')!r})")
    r = run_cli("extract", tree.root, "--undo", "last")
    one_line_refusal(r, b"is a symlink; refused")
    no_secret(r)


def test_runs_dir_planted_as_a_symlink_lists_no_names_of_that_dir(tree: Tree) -> None:
    (tree.secret / "20991231T000000Z-ROOTSECRET.jsonl").write_text("{}\n")
    tree.outside_before = tree.outside()
    sa = tree.root / ".session-archive"
    as_user(f"os.makedirs({str(sa)!r})\nos.symlink({str(tree.secret)!r}, {str(sa / 'runs')!r})")
    for args in (["--undo", "last"], ["--undo", "nope"]):
        r = run_cli("extract", tree.root, *args)
        one_line_refusal(r, b"refused")
        no_secret(r)
    assert tree.untouched()


def test_manifest_that_is_a_fifo_does_not_hang_even_a_dry_run(tree: Tree) -> None:
    runs = tree.root / ".session-archive" / "runs"
    as_user(f"os.makedirs({str(runs)!r})\nos.mkfifo({str(runs / 'x.jsonl')!r})")
    t0 = time.monotonic()
    r = run_cli("extract", tree.root, "--undo", "last")  # dry run
    assert time.monotonic() - t0 < 30
    one_line_refusal(r, b"not a regular file; refused")


def test_manifest_larger_than_the_cap_is_refused_without_reading_it(tree: Tree) -> None:
    from archive_tool.guard import untrusted

    runs = tree.root / ".session-archive" / "runs"
    p = runs / "x.jsonl"
    as_user(f"os.makedirs({str(runs)!r})\n"
            f"f = open({str(p)!r}, 'wb'); f.truncate({untrusted.MANIFEST_CAP + 1})")
    r = run_cli("extract", tree.root, "--undo", "last")
    one_line_refusal(r, b"larger than")


# ------------------------------------------------------------------- 2, 7: --rebuild


def _find_json(root: Path) -> list[dict]:
    r = run_cli("find", root, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_rebuild_does_not_follow_a_file_symlink_to_another_users_archive(tree: Tree) -> None:
    """Item 2: the symlink's target's CONFIG went into the catalog, readable by alice."""
    archive_one(tree.session, format="tar.zst")
    chown_tree(tree.root, USER)
    as_user(f"os.symlink({str(tree.bob_archive)!r}, "
            f"{str(tree.fin / (SID3 + '-x.tar.zst'))!r})")
    r = run_cli("catalog", tree.root, "--rebuild")
    assert r.returncode == 0, r.stderr
    rows = _find_json(tree.root)
    assert [x["name"] for x in rows] == [f"{SID}-main"]
    assert b"BOBSECRET" not in (tree.root / ".session-archive" / "catalog.sqlite").read_bytes()
    assert tree.untouched()


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_rebuild_over_a_fifo_or_dev_zero_ends_fast_with_bounded_memory(
        tree: Tree, target: str) -> None:
    """Item 7: a symlink to a FIFO hung the rebuild; to /dev/zero it died at 3.7 GB."""
    fifo = tree.root / "f"
    code = f"os.mkfifo({str(fifo)!r})\n" if target == "fifo" else ""
    dest = str(fifo) if target == "fifo" else target
    as_user(code + f"os.symlink({dest!r}, {str(tree.fin / (SID3 + '-x.tar.zst'))!r})\n"
            + (f"os.mkfifo({str(tree.fin / (SID2 + '-y.tar.zst'))!r})" if target == "fifo"
               else ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    r = run_cli("catalog", tree.root, "--rebuild")
    assert time.monotonic() - t0 < 30
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert max(rss, before) < 300 * 1024, rss  # KiB


def test_a_killed_rebuilds_temp_catalog_is_removed_by_the_next(tree: Tree) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a PID that is gone
    sa = tree.root / ".session-archive"
    dead = sa / f"catalog.sqlite.rebuild-{p.pid}"
    as_user(f"os.makedirs({str(sa)!r})\nopen({str(dead)!r}, 'w').write('x')")
    r = run_cli("catalog", tree.root, "--rebuild")
    assert r.returncode == 0, r.stderr
    assert not dead.exists()
    assert sorted(x.name for x in sa.iterdir() if x.name.startswith("catalog")) == \
        ["catalog.sqlite"]


# ------------------------------------------------------------------ 3, 4: the catalog


def _catalog_of_alice(t: Tree) -> Path:
    archive_one(t.session, format="tar.zst")
    rebuild.rebuild(t.root)
    chown_tree(t.root, USER)
    return t.root / ".session-archive" / "catalog.sqlite"


@pytest.mark.parametrize("forged", ["absolute", "dotdot", "symlinked dir"])
def test_forged_catalog_row_does_not_redirect_show_or_unpack(tree: Tree, forged: str) -> None:
    """Item 3: a row naming bob's archive made root print bob's CONFIG and restore it."""
    db = _catalog_of_alice(tree)
    if forged == "absolute":
        target = str(tree.bob_archive)
    elif forged == "dotdot":
        target = f"../bob/proj_out/FINISHED_SUCCESS/{tree.bob_archive.name}"
    else:
        as_user(f"os.symlink({str(tree.bob_archive.parent)!r}, "
                f"{str(tree.root / 'proj_out' / 'b')!r})")
        target = f"proj_out/b/{tree.bob_archive.name}"
    as_user("import sqlite3\n"
            f"c = sqlite3.connect({str(db)!r})\n"
            f"c.execute('UPDATE sessions SET archive=?', ({target!r},))\n"
            "c.commit()")
    r = run_cli("show", tree.root, "-s", SID, "CONFIGS/CONFIG.yaml")
    one_line_refusal(r, b"refused")
    no_secret(r)
    r = run_cli("unpack", tree.root, "-s", SID)
    one_line_refusal(r, b"refused")
    assert not (tree.bob_archive.parent / f"{SID2}-b").exists()
    assert tree.untouched()


def test_show_and_unpack_through_an_honest_catalog_still_work(tree: Tree) -> None:
    _catalog_of_alice(tree)
    r = run_cli("show", tree.root, "-s", SID, "CONFIGS/CONFIG.yaml")
    assert r.returncode == 0 and r.stdout == b"ID: x\nSEED: 42\n", r.stderr
    assert not tree.session.exists()  # archived (and removed) by _catalog_of_alice
    r = run_cli("unpack", tree.root, "-s", SID)
    assert r.returncode == 0, r.stderr
    assert (tree.session / "CONFIGS" / "CONFIG.yaml").is_file()


def test_catalog_planted_as_a_symlink_to_a_root_only_catalog_is_refused(tree: Tree) -> None:
    """Item 4: root's `find` printed the rows of the catalog the link pointed at."""
    other = tree.base / "othertree"
    make_session(other / "p_out" / "FINISHED_SUCCESS", f"{SID3}-r", extra=False)
    (other / "p_out" / "FINISHED_SUCCESS" / f"{SID3}-r" / "CONFIGS" / "CONFIG.yaml").write_text(
        "SECRET: ROOTSECRET\n")
    archive_one(other / "p_out" / "FINISHED_SUCCESS" / f"{SID3}-r", format="tar.zst")
    rebuild.rebuild(other)
    shutil.move(other, tree.secret / "othertree")
    tree.outside_before = tree.outside()
    sa = tree.root / ".session-archive"
    as_user(f"os.makedirs({str(sa)!r})\nos.symlink("
            f"{str(tree.secret / 'othertree' / '.session-archive' / 'catalog.sqlite')!r}, "
            f"{str(sa / 'catalog.sqlite')!r})")
    r = run_cli("find", tree.root, "--json")
    one_line_refusal(r, b"is a symlink; refused")
    no_secret(r)
    assert tree.untouched()


@pytest.mark.parametrize("what", ["endless view", "trigger", "extra table"])
def test_catalog_with_objects_we_never_create_is_refused_fast(tree: Tree, what: str) -> None:
    """Item 7: a `sessions` VIEW with an endless recursive query made `find` never end."""
    db = _catalog_of_alice(tree)
    sql = {
        "endless view": ["DROP TABLE sessions",
                         "CREATE VIEW sessions AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                         "SELECT x+1 FROM c) SELECT x AS sid, '' AS id, '' AS name, '' AS "
                         "script, '' AS state, '' AS started, 0 AS exit_status, 0 AS bytes_in,"
                         " 0 AS tar_bytes, 0 AS bytes_out, 0 AS inodes, '' AS archive, "
                         "0 AS frame, 0 AS offset, '{}' AS config FROM c"],
        "trigger": ["CREATE TRIGGER t AFTER INSERT ON sessions BEGIN DELETE FROM kv; END"],
        "extra table": ["CREATE TABLE x (y)"],
    }[what]
    as_user("import sqlite3\n"
            f"c = sqlite3.connect({str(db)!r})\n"
            f"for s in {sql!r}:\n    c.execute(s)\n"
            "c.commit()")
    t0 = time.monotonic()
    r = run_cli("find", tree.root, "--json")
    assert time.monotonic() - t0 < 30
    one_line_refusal(r, b"schema is not the catalog's")
    r = run_cli("show", tree.root, "-s", SID)
    one_line_refusal(r, b"schema is not the catalog's")


def test_a_catalog_query_past_its_time_limit_is_stopped(tmp_path: Path) -> None:
    from archive_tool.guard import untrusted

    conn = sqlite3.connect(":memory:")
    untrusted.guard_catalog(conn, set(), "mem", seconds=0.2)
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) "
                     "SELECT count(*) FROM c").fetchone()
    assert time.monotonic() - t0 < 5


def test_catalog_of_another_user_in_the_tree_is_refused(tree: Tree) -> None:
    db = _catalog_of_alice(tree)
    os.chown(db, OTHER, OTHER)
    r = run_cli("find", tree.root)
    one_line_refusal(r, b"owned by another user")


# ------------------------------------------------------------------- 7: CONFIG files


BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
    'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n'
    'h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n'
)


@pytest.mark.parametrize("bad", ["billion laughs", "deep json", "deep yaml"])
def test_hostile_config_costs_its_own_session_its_config_and_nothing_else(
        tree: Tree, bad: str) -> None:
    """Item 7: 342 bytes of YAML took a pack sweep to 5.9 GB and 334 s; a CONFIG.json
    nested 200k deep failed every session of its pack group."""
    fin = tree.fin
    for sid in (SID2, SID3):
        make_session(fin, f"{sid}-ok", extra=False)
    (fin / f"{SID}-main" / "CONFIGS" / "CONFIG.yaml").unlink()
    cfg = fin / f"{SID}-main" / "CONFIGS"
    if bad == "billion laughs":
        (cfg / "CONFIG.yaml").write_text(BILLION_LAUGHS)
    elif bad == "deep json":
        (cfg / "CONFIG.json").write_text("[" * 200_000 + "]" * 200_000)
    else:
        (cfg / "CONFIG.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    chown_tree(tree.root, USER)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    r = run_cli("sweep", tree.root, "--pack", "weekly", "--execute")
    took = time.monotonic() - t0
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert took < 60, took
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert max(rss, before) < 300 * 1024, rss
    assert not [p for p in fin.iterdir() if p.is_dir()]  # all three archived
    rows = {x["name"]: x for x in _find_json(tree.root)}
    assert sorted(rows) == sorted([f"{SID}-main", f"{SID2}-ok", f"{SID3}-ok"])
    assert rows[f"{SID}-main"]["config"] == {}
    assert rows[f"{SID2}-ok"]["config"] == {"ID": "x", "SEED": 42}


def test_load_config_refuses_aliases_and_depth_but_reads_plain_configs() -> None:
    from archive_tool.guard import untrusted

    assert untrusted.load_config(BILLION_LAUGHS.encode(), False) is None
    assert untrusted.load_config(b"a: &x 1\nb: *x\n", False) is None
    assert untrusted.load_config(b"[" * 70 + b"]" * 70, True) is None
    assert untrusted.load_config(b"a: 1 & 2\nb: x*y\n", False) == {"a": "1 & 2", "b": "x*y"}
    assert untrusted.load_config(b'{"ARGS": {"lr": 0.01}}', True) == {"ARGS": {"lr": 0.01}}
    assert untrusted.load_config(b"x" * (untrusted.CONFIG_CAP + 1), False) is None


# --------------------------------------------------------------- 5: --finalize-stale


def _stale_run(t: Tree) -> tuple[Path, Path]:
    """A dead run (no heartbeat, old mtimes: stale with stale_after=0) in alice's RUNNING/,
    and a sticky world-writable dir holding bob's FINISHED_ERROR/ (root-owned here)."""
    running = t.root / "proj_out" / "RUNNING"
    run = make_session(running, f"{SID3}-dead", extra=False)
    for p in [run, *run.rglob("*")]:
        os.utime(p, (1e9, 1e9), follow_symlinks=False)
    chown_tree(t.root, USER)
    sticky = t.base / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "FINISHED_ERROR").mkdir()
    os.chown(sticky / "FINISHED_ERROR", OTHER, OTHER)
    t.outside_before = {**t.outside(), "sticky-err": snapshot(sticky / "FINISHED_ERROR")}
    return run, sticky


@pytest.mark.parametrize("stage", ["locked", "before-rename"])
def test_running_dir_moved_into_a_sticky_dir_mid_finalize_moves_nothing_there(
        tree: Tree, stage: str) -> None:
    """Item 5: after root opened RUNNING/, alice renamed it into a sticky dir; root moved
    her run into bob's FINISHED_ERROR/ there (through ``..`` of the RUNNING fd)."""
    run, sticky = _stale_run(tree)
    running = run.parent

    def attack(st: str, _path: str) -> None:
        if st == stage:
            as_user(f"os.rename({str(running)!r}, {str(sticky / 'RUNNING')!r})")

    stale._hook = attack
    try:
        c = stale.finalize_stale(str(tree.root), dry_run=False, stale_after=0)
    finally:
        stale._hook = None
    assert (c["finalized"], c["failed"]) == (0, 1), c
    assert "refused" in c["failures"][0]["reason"]
    assert not list((sticky / "FINISHED_ERROR").iterdir())
    assert (sticky / "RUNNING" / run.name).is_dir()  # left (or put back) where she moved it
    assert not (sticky / "RUNNING" / run.name / "STALE_FINALIZED.json").exists()
    assert not (tree.root / "proj_out" / "FINISHED_ERROR" / run.name).exists()
    assert {k: v for k, v in tree.outside().items()} == \
        {k: v for k, v in tree.outside_before.items() if k != "sticky-err"}


def test_finalize_without_a_swap_still_moves_the_run(tree: Tree) -> None:
    run, _sticky = _stale_run(tree)
    c = stale.finalize_stale(str(tree.root), dry_run=False, stale_after=0)
    assert c["finalized"] == 1, c
    moved = tree.root / "proj_out" / "FINISHED_ERROR" / run.name
    assert (moved / "STALE_FINALIZED.json").is_file() and not run.exists()


def test_paths_from_state_files_follow_one_rule() -> None:
    from archive_tool.guard import untrusted

    for bad in ("/abs", "a/../b", "../x", "a//b", "./a", "a/", "", "a\0b", 3, None):
        with pytest.raises(UntrustedInput):
            untrusted.check_rel(bad)
    assert untrusted.check_rel("a/b.tar.zst") == "a/b.tar.zst"
    with pytest.raises(UntrustedInput):
        untrusted.rel_below("/r", "/r/../x/y")
    with pytest.raises(UntrustedInput):
        untrusted.rel_below("/r", "/rx/y")
    assert untrusted.rel_below("/r", "/r/a/b") == "a/b"


def test_pack_sweep_over_a_forged_catalog_archives_and_warns(tree: Tree) -> None:
    db = _catalog_of_alice(tree)
    as_user("import sqlite3\n"
            f"c = sqlite3.connect({str(db)!r})\n"
            "c.execute('CREATE TRIGGER t AFTER INSERT ON sessions BEGIN DELETE FROM kv; END')\n"
            "c.commit()")
    make_session(tree.fin, f"{SID2}-new", extra=False)
    chown_tree(tree.root, USER)
    r = run_cli("sweep", tree.root, "--pack", "weekly", "--execute", "--json")
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    [w] = json.loads(r.stdout)["warnings"]
    assert w.startswith("catalog not updated") and "schema" in w, w
    assert not (tree.fin / f"{SID2}-new").exists()
    assert list(tree.fin.glob("*.pack.tar.zst"))


# ------------------------------------------------- 5 in a loop (CI: one trial; stress: more)

STALE_ATTACKER = r"""
import os, sys, time
running, away, stop = sys.argv[1:4]
moves = 0
while not os.path.exists(stop):
    for a, b in ((running, away), (away, running)):
        try:
            os.rename(a, b)
            moves += 1
        except OSError:
            pass
print(moves)
"""


def _stale_trial(base: Path, n_runs: int) -> dict:
    t = Tree(base)
    running = t.root / "proj_out" / "RUNNING"
    names = [f"{SID3[:-4]}{k:04d}-dead" for k in range(n_runs)]
    for n in names:
        run = make_session(running, n, extra=False)
        for p in [run, *run.rglob("*")]:
            os.utime(p, (1e9, 1e9), follow_symlinks=False)
    chown_tree(t.root, USER)
    sticky = base / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    (sticky / "FINISHED_ERROR").mkdir()
    os.chown(sticky / "FINISHED_ERROR", OTHER, OTHER)
    stop = base / "stop"
    attacker = subprocess.Popen(
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", sys.executable,
         "-c", STALE_ATTACKER, str(running), str(sticky / "RUNNING"), str(stop)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.05)
    counts = {"finalized": 0, "failed": 0}
    try:
        for _ in range(40):
            c = stale.finalize_stale(str(t.root), dry_run=False, stale_after=0)
            counts["finalized"] += c["finalized"]
            counts["failed"] += c["failed"]
    finally:
        stop.touch()
        os.chown(stop, USER, USER)
        moves = int(attacker.communicate(timeout=60)[0].strip() or 0)
    escapes = len(list((sticky / "FINISHED_ERROR").iterdir()))
    escapes += 0 if t.untouched() else 1
    where = [p.name for d in (running, sticky / "RUNNING", t.root / "proj_out" / "FINISHED_ERROR")
             if d.is_dir() for p in d.iterdir()]
    lost = len(set(names) - set(where)) + (len(where) - len(set(where)))
    return {"runs": n_runs, "moves": moves, **counts, "escapes": escapes, "lost": lost}


def _stale_loop(trials: int, n_runs: int) -> dict:
    total = {"trials": 0, "runs": 0, "moves": 0, "finalized": 0, "failed": 0, "escapes": 0,
             "lost": 0}
    for _ in range(trials):
        base = Path(tempfile.mkdtemp(prefix="staleloop-", dir="/tmp"))
        os.chmod(base, 0o755)
        try:
            r = _stale_trial(base, n_runs)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        total["trials"] += 1
        for k in r:
            total[k] += r[k]
        assert r["escapes"] == 0 and r["lost"] == 0, r
    return total


@pytest.mark.timeout(300)
def test_finalize_stale_against_a_user_renaming_running_in_a_loop_moves_nothing_out() -> None:
    total = _stale_loop(1, 20)
    assert total["moves"] > 0, total  # the attacker really raced the finalizer


@pytest.mark.stress
@pytest.mark.timeout(0)
def test_finalize_stale_race_loop_many_trials() -> None:
    from tests.reliability import record

    trials = int(os.environ.get("STRESS_TRIALS", "300")) // 30 or 1
    total = _stale_loop(trials, 50)
    record("hostile-user stale loop (finalize-stale vs RUNNING/ renames)", total)
    assert total["escapes"] == 0 and total["lost"] == 0


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz"])
def test_a_big_archive_is_catalogued_streaming_with_the_same_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """An archive over the in-memory cap is streamed (bounded memory, no /dev/zero-style
    blow-up from a huge file): its row must equal the one read in memory."""
    fin = tmp_path / "p_out" / "FINISHED_SUCCESS"
    s = make_session(fin, f"{SID}-big")
    (s / "CONFIGS" / "CONFIG.yaml").write_text("ARGS:\n  lr: 0.01\nEXIT_STATUS: 0\n")
    archive_one(s, format=fmt)
    name = f"{SID}-big.{fmt}"
    rel = "p_out/FINISHED_SUCCESS"
    whole = list(rebuild.rows_of_file(str(tmp_path), rel, name))
    monkeypatch.setattr(rebuild, "IN_MEMORY_CAP", 100)
    streamed = list(rebuild.rows_of_file(str(tmp_path), rel, name))
    assert streamed == whole and whole[0]["config"] == {"ARGS.lr": 0.01, "EXIT_STATUS": 0}
