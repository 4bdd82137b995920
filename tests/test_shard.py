"""``--shard K/N``: N array tasks divide one tree with no coordinator.

The promise: for every N, the N shards are pairwise disjoint and together hold exactly the
unsharded sweep's work; the split depends only on each session's path below ROOT (so every
node, Python version and run agrees); a crash leftover ``.X.deleting`` belongs to X's shard;
each shard has its own lock.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archive_tool.demo import make_tree
from archive_tool.engine.single import archive_one
from archive_tool.guard.lock import RootLock
from archive_tool.names import trash_name
from archive_tool.sweep.plan import Planner, parse_shard, shard_key, shard_of, slurm_shard
from archive_tool.sweep.sessions import sweep

from .conftest import run_cli

ROOT = "/data/runs"

# ------------------------------------------------------------------ synthetic path sets

_id = st.builds(
    lambda y, mo, d, h, mi, s, r: f"{y:04d}Y-{mo:02d}M-{d:02d}D-{h:02d}h{mi:02d}m{s:02d}s_{r}",
    st.integers(2000, 2099), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23),
    st.integers(0, 59), st.integers(0, 59),
    st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=4, max_size=4),
)
_suffix = st.one_of(st.none(), st.text("abcxyz_-.é0123456789 ", min_size=1, max_size=8))
_component = st.text("abcdefghij_-.ü", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
_state = st.sampled_from(["FINISHED_SUCCESS", "FINISHED_ERROR", "FINISHED"])


@st.composite
def session_paths(draw: st.DrawFn) -> list[str]:
    """Discovered paths as the Planner sees them: sessions under FINISHED_* at any depth,
    some with a crash leftover ``.X.deleting`` beside them (or only the leftover)."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 40))):
        parents = draw(st.lists(_component, max_size=3))
        sid, suffix = draw(_id), draw(_suffix)
        name = sid if suffix is None else f"{sid}-{suffix}"
        base = os.path.join(ROOT, *parents, draw(_state))
        kind = draw(st.sampled_from(["session", "session", "session", "both", "trash"]))
        if kind in ("session", "both"):
            out.append(os.path.join(base, name))
        if kind in ("both", "trash"):
            out.append(os.path.join(base, trash_name(name)))
    return sorted(set(out))


def _plan(paths: list[str], shard: tuple[int, int] | None) -> list[str]:
    # Planner.tasks only lstat()s for an existing archive: synthetic paths are fine.
    return [t.path for t in Planner(ROOT, False, "tar.zst", shard=shard).tasks(paths)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paths=session_paths(), n=st.integers(1, 12))
def test_shards_are_disjoint_and_cover_every_candidate(paths: list[str], n: int) -> None:
    everything = _plan(paths, None)
    shards = [_plan(paths, (k, n)) for k in range(n)]
    seen: set[str] = set()
    for part in shards:
        assert seen.isdisjoint(part)
        seen.update(part)
    assert seen == set(everything)
    assert sum(map(len, shards)) == len(everything)


@settings(max_examples=150, deadline=None)
@given(paths=session_paths(), n=st.integers(2, 12))
def test_crash_leftover_lands_in_the_shard_of_its_session(paths: list[str], n: int) -> None:
    """Otherwise the shard archiving X (which renames X to .X.deleting mid-delete) and the
    shard cleaning up .X.deleting would race on one directory."""
    owner = {p: k for k in range(n) for p in _plan(paths, (k, n))}
    for p in owner:
        parent, name = os.path.split(p)
        if name.endswith(".deleting"):
            session = os.path.join(parent, name[1:-len(".deleting")])
            assert shard_of(shard_key(os.path.relpath(p, ROOT)), n) == \
                shard_of(os.path.relpath(session, ROOT), n)
            if session in owner:
                assert owner[session] == owner[p]


def test_shard_hash_is_pinned() -> None:
    """Array tasks may run different installs: the split must never change between
    versions (blake2b-64 of the UTF-8 path below ROOT, big-endian, mod N)."""
    rel = "project00/script0_out/FINISHED_SUCCESS/2026Y-01M-02D-03h04m05s_abcd-main"
    assert [shard_of(rel, n) for n in (1, 2, 3, 7, 64)] == [0, 1, 1, 4, 23]
    assert shard_of("é/ü", 1000) == 252
    assert shard_key("a/FINISHED/.2026Y-01M-02D-03h04m05s_abcd-x.deleting") == \
        "a/FINISHED/2026Y-01M-02D-03h04m05s_abcd-x"


def test_shard_depends_on_the_path_below_root_not_the_mount_point(tmp_path: Path) -> None:
    """Nodes mounting the same tree at different paths must agree on every shard."""
    a, b = tmp_path / "mnt-a", tmp_path / "deeper" / "mnt-b"
    make_tree(str(a), 60, seed=3)
    b.parent.mkdir()
    shutil.copytree(a, b, symlinks=True)
    for k in range(3):
        got = []
        for root in (a, b):
            seen: list[str] = []
            sweep(root, dry_run=True, shard=(k, 3), on_candidate=seen.append)
            got.append(sorted(os.path.relpath(p, root) for p in seen))
        assert got[0] == got[1]


# ------------------------------------------------------------------------- on real trees


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shard") / "runs"
    make_tree(str(root), 240, seed=7)
    return root


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "scandir"])
def test_dry_run_shards_partition_the_tree(tree: Path, use_fd: bool) -> None:
    full: list[str] = []
    total = sweep(tree, dry_run=True, use_fd=use_fd, on_candidate=full.append)
    assert total["candidates"] == len(full) > 200
    parts = []
    for k in range(4):
        got: list[str] = []
        s = sweep(tree, dry_run=True, use_fd=use_fd, shard=f"{k}/4", on_candidate=got.append)
        assert s["shard"] == f"{k}/4" and s["candidates"] == len(got)
        assert 0 < len(got) < len(full)  # 240 sessions: every shard gets some
        parts.append(set(got))
    assert set().union(*parts) == set(full)
    assert sum(map(len, parts)) == len(full)


def test_cli_dry_run_json_reports_each_shards_candidates(tree: Path) -> None:
    total = json.loads(run_cli("sweep", tree, "--json").stdout)
    per_shard = []
    for k in range(3):
        r = run_cli("sweep", tree, "--shard", f"{k}/3", "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["shard"] == f"{k}/3" and s["dry_run"] is True
        per_shard.append(s["candidates"])
    assert sum(per_shard) == total["candidates"]


def test_executed_shards_archive_exactly_what_one_sweep_does(tmp_path: Path) -> None:
    one, many = tmp_path / "one", tmp_path / "many"
    make_tree(str(one), 150, seed=11)
    # A crash mid-delete: the archive is committed, the source renamed to .X.deleting.
    victim = next((one / "project00" / "script0_out" / "FINISHED_SUCCESS").iterdir())
    keep = tmp_path / "keep"
    shutil.copytree(victim, keep, symlinks=True)
    archive_one(victim)
    keep.rename(victim.parent / trash_name(victim.name))
    shutil.copytree(one, many, symlinks=True)
    a = sweep(one, dry_run=False, workers=2)
    totals = {"archived": 0, "cleaned": 0, "failed": 0}
    for k in range(3):
        s = sweep(many, dry_run=False, workers=2, shard=(k, 3))
        for key in totals:
            totals[key] += s[key]
    assert totals == {"archived": a["archived"], "cleaned": a["cleaned"], "failed": 0}
    assert a["cleaned"] == 1

    def names(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if ".session-archive" not in p.name}

    assert names(one) == names(many)


def test_shards_lock_separately(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 10, seed=1)
    with RootLock(str(tmp_path), (0, 2)):
        busy = run_cli("sweep", tmp_path, "--shard", "0/2", "--execute", "-q")
        assert busy.returncode == 75, busy.stderr
        other = run_cli("sweep", tmp_path, "--shard", "1/2", "--execute", "-q")
        assert other.returncode == 0, other.stderr


def test_a_whole_tree_sweep_and_a_shard_of_the_same_root_exclude_each_other(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 10, seed=1)
    with RootLock(str(tmp_path)):
        r = run_cli("sweep", tmp_path, "--shard", "0/2", "--execute", "-q")
        assert r.returncode == 75, r.stderr
        assert r.stderr.decode().startswith(
            f"Error: another sweep holds {tmp_path / '.session-archive.lock'} (PID "
            f"{os.getpid()} on host ")
    with RootLock(str(tmp_path), (1, 2)), RootLock(str(tmp_path), (0, 3)):
        r = run_cli("sweep", tmp_path, "--execute", "-q")
        assert r.returncode == 75, r.stderr
    # Released: the whole-tree sweep runs.
    assert run_cli("sweep", tmp_path, "--execute", "-q").returncode == 0


@pytest.mark.parametrize("spec", ["3", "1/0", "2/2", "-1/4", "a/b", "1/2/3", ""])
def test_bad_shard_is_one_usage_error(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ValueError):
        parse_shard(spec)
    r = run_cli("sweep", tmp_path, "--shard", spec)
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "shard" in err[0]


# ---------------------------------------------------------------------- --shard auto


@pytest.mark.parametrize(("env", "want"), [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4",
      "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}, (0, 4)),
    ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8",  # --array=1-8%2
      "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8", "SLURM_ARRAY_TASK_STEP": "1"}, (7, 8)),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
])
def test_shard_auto_reads_the_slurm_array(env: dict[str, str], want: tuple[int, int]) -> None:
    assert slurm_shard(env) == want


@pytest.mark.parametrize("env", [
    {},
    {"SLURM_ARRAY_TASK_ID": "3"},
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
    # --array=0-6:2 (ids 0,2,4,6): no contiguous K/N reading
    {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
     "SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"},
    # --array=1,4,9
    {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
     "SLURM_ARRAY_TASK_MAX": "9"},
])
def test_shard_auto_refuses_what_is_not_a_contiguous_array(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="shard auto"):
        slurm_shard(env)


def test_cli_shard_auto_inside_and_outside_an_array(tree: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    inside = dict(env, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="4",
                  SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="4")
    r = run_cli("sweep", tree, "--shard", "auto", "--json", env=inside)
    assert r.returncode == 0, r.stderr
    want = json.loads(run_cli("sweep", tree, "--shard", "2/4", "--json").stdout)
    got = json.loads(r.stdout)
    assert got["shard"] == "2/4" and got["candidates"] == want["candidates"]

    r = run_cli("sweep", tree, "--shard", "auto", env=env)
    assert r.returncode == 2
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "SLURM_ARRAY_TASK_ID" in err[0]

