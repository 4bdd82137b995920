"""Every crash point of the commands added since the engine's checks (issue 28): `sweep
--pack`, `repack --merge` (no restored dir, so no unrelated syncfs covers the new pack),
`repack --drop`, `prune` (per-session and inside packs), `extract --undo` of a pack run
and `sweep --finalize-stale`, under the model of tests/crashpoints.py. Each verdict is
asserted ok on the real code, and each is made to fail once by planting the matching bug
(an LD_PRELOAD shim below Python, strace fault injection, or a patched copy of one
function started as `python -c PATCH; cli(...)`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archive_tool.names import split_archive_name, trash_name
from archive_tool.pack import packfile

from . import crashpoints as cp
from .conftest import make_session
from .reliability import members_of_archive, members_of_pack, snapshot_sessions

pytestmark = pytest.mark.skipif(
    not cp.HAVE_STRACE, reason="strace missing: ./scripts/test installs it when run as root")


def is_archive(name: str) -> bool:
    return split_archive_name(name) is not None or packfile.is_pack_name(name)


@pytest.fixture(scope="module")
def skip_dir_fsync(tmp_path_factory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing: cannot build the LD_PRELOAD shim")
    return cp.build_shim(cp.SKIP_DIR_FSYNC_C, tmp_path_factory.mktemp("shim"), "skip_dir_fsync")


def patched(patch: str, *args: str) -> list[str]:
    """The CLI with one planted bug: *patch* runs first in the same process (-j 1 only:
    pool workers would not see it)."""
    return [sys.executable, "-c",
            f"import sys\n{patch}\nfrom archive_tool.cli import cli\n"
            "cli(sys.argv[1:], prog_name='session-archive')\n", *args]


# A pack (or a per-session archive: a shared helper) whose data is never fsynced.
NO_DATA_FSYNC = ("from archive_tool.engine import commit\n"
                 "commit.make_durable = lambda tmps, *a, **k: None")
# The dir fsync after a link, in Python: the repack's and the pack sweep's step 3.
NO_DIR_FSYNC = ("from archive_tool.engine import commit\n"
                "commit.fsync_dir = lambda fd, where: None")


def _run(tmp_path: Path, root: Path, argv: list[str], **kw) -> cp.Run:
    run = cp.traced(argv, root, cwd=tmp_path, trace_file=tmp_path / "trace", **kw)
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    return run


# -------------------------------------------------------------------------- sweep --pack


def _pack_tree(root: Path) -> None:
    """Three days x two states (six packs in one run), sessions of mixed sizes: some with
    an incompressible 300 KB file, most a few KB."""
    from .test_pack import _tree

    for k, day in enumerate(("2026Y-11M-23D", "2026Y-11M-24D", "2026Y-11M-25D")):
        _tree(root, 4, day=day)
        big = next((root / "train_out" / "FINISHED_SUCCESS").glob(f"{day}-10h0{k}m*"))
        (big / "big.bin").write_bytes(os.urandom(300_000))


def pack_units(root: Path, before: dict) -> list[cp.Unit]:
    """Each session: its dir (renamed only to its trash name), or a pack beside it that
    holds exactly its members at the end."""
    packed: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*" + packfile.PACK_SUFFIX)):
        for name, members in members_of_pack(str(p)).items():
            packed.setdefault(os.path.join(p.parent, name), [])
            if members == before.get(os.path.relpath(p.parent / name, root)):
                packed[os.path.join(p.parent, name)].append(str(p))
    units = []
    for rel in before:
        d = str(root / rel)
        trash = os.path.join(os.path.dirname(d), trash_name(os.path.basename(d)))
        units.append(cp.Unit(rel, d, packed.get(d, [])[:1], (d, trash)))
    return units


def _pack_sweep(tmp_path: Path, argv_of, **kw) -> tuple[cp.Verdict, dict]:
    root = tmp_path / "root"
    _pack_tree(root)
    before = snapshot_sessions(root)
    run = _run(tmp_path, root, argv_of(str(root)), **kw)
    return cp.check(run.model, pack_units(root, before), is_archive), before


@pytest.mark.parametrize("workers", [1, 2])
def test_pack_sweep_keeps_every_session_at_every_crash_point(tmp_path, workers):
    verdict, before = _pack_sweep(tmp_path, lambda r: cp.cli(
        "sweep", r, "--pack", "daily", "--execute", "-q", "-j", str(workers)))
    assert verdict.ok, verdict
    assert verdict.damaged == len(before) == 12, verdict  # every source deleted, each checked
    assert verdict.crash_points > 300


def test_checker_catches_a_pack_sweep_whose_pack_is_not_fsynced(tmp_path):
    verdict, before = _pack_sweep(tmp_path, lambda r: patched(
        NO_DATA_FSYNC, "sweep", r, "--pack", "daily", "--execute", "-q", "-j", "1"))
    assert len(verdict.violations) == len(before), verdict
    assert all("data of" in v and ".pack.tar.zst" in v for v in verdict.violations)
    assert verdict.half_archives  # the packs' names pointed at data not yet durable


def test_checker_catches_a_pack_sweep_whose_dir_fsync_is_skipped(tmp_path, skip_dir_fsync):
    verdict, before = _pack_sweep(tmp_path, lambda r: cp.cli(
        "sweep", r, "--pack", "daily", "--execute", "-q", "-j", "1"), preload=skip_dir_fsync)
    assert len(verdict.violations) == len(before), verdict
    assert all(".pack.tar.zst made at line" in v for v in verdict.violations)


# -------------------------------------------------------------------------- repack, prune


def frames(p: str | Path) -> dict[str, bytes]:
    data = Path(p).read_bytes()
    with packfile.Pack(p) as pk:
        return {n: data[pk.frames.offset[i]:pk.frames.offset[i] + pk.frames.csize[i]]
                for i, n in enumerate(pk.names)}


def pack_frame_units(old: dict[str, dict[str, bytes]], gone: set[str], root: Path
                     ) -> list[cp.Unit]:
    """Each pack before the run: its copy is a pack at the end holding every one of its
    frames byte for byte, but those of the sessions meant to go (*gone*)."""
    after = {str(p): frames(p) for p in sorted(root.rglob("*" + packfile.PACK_SUFFIX))}
    units = []
    for p, fr in old.items():
        copy = [q for q, got in after.items()
                if os.path.dirname(q) == os.path.dirname(p)
                and all(got.get(n) == f for n, f in fr.items() if n not in gone)]
        units.append(cp.Unit(os.path.basename(p), p, copy[:1]))
    return units


def _daily_packs(root: Path) -> dict[str, dict[str, bytes]]:
    from archive_tool.sweep.packsweep import pack_sweep

    from .test_pack import _tree

    for day in ("2026Y-11M-23D", "2026Y-11M-24D", "2026Y-11M-25D"):
        _tree(root, 3, day=day)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    return {str(p): frames(p) for p in sorted(root.rglob("*" + packfile.PACK_SUFFIX))}


DROP = "2026Y-11M-24D-10h01m00s_S001-main"


def _repack(tmp_path: Path, how: str, argv_of=None, **kw) -> tuple[cp.Verdict, int]:
    root = tmp_path / "root"
    old = _daily_packs(root)
    args = ["--merge", "monthly"] if how == "merge" else ["--drop", DROP]
    argv_of = argv_of or cp.cli
    run = _run(tmp_path, root, argv_of("repack", str(root), *args, "--execute", "-q"), **kw)
    gone = {DROP} if how == "drop" else set()
    if how == "drop":
        assert not any(DROP in frames(p) for p in root.rglob("*" + packfile.PACK_SUFFIX))
    return cp.check(run.model, pack_frame_units(old, gone, root), is_archive), len(old)


@pytest.mark.parametrize("how", ["merge", "drop"])
def test_repack_without_restored_dirs_keeps_every_pack_at_every_crash_point(tmp_path, how):
    verdict, n = _repack(tmp_path, how)
    assert verdict.ok, verdict
    # merge: the three daily packs of FINISHED_SUCCESS (one of FINISHED_ERROR has nothing to
    # merge with); drop: the one pack holding the dropped session.
    assert verdict.damaged == (3 if how == "merge" else 1), verdict


@pytest.mark.parametrize("how", ["merge", "drop"])
@pytest.mark.parametrize("bug", ["no-pack-fsync", "no-dir-fsync"])
def test_checker_catches_a_repack_with_a_planted_durability_bug(tmp_path, how, bug):
    patch = NO_DATA_FSYNC if bug == "no-pack-fsync" else NO_DIR_FSYNC
    verdict, _ = _repack(tmp_path, how, lambda *a: patched(patch, *a))
    assert verdict.violations, verdict
    want = "data of" if bug == "no-pack-fsync" else ".pack.tar.zst made at line"
    assert all(want in v for v in verdict.violations), verdict.violations


def _prune_tree(root: Path, packs: bool) -> tuple[dict, list[str]]:
    """Old runs of one script (one per-session archive each, or all in one pack) and a
    new one; `--older-than 30d` selects the old ones. -> (frames of packs, old names)."""
    from archive_tool.names import new_session_id

    now = time.time()
    fin = root / "a_out" / "FINISHED_SUCCESS"
    old = []
    for i, days in enumerate((400, 300, 200, 1)):
        name = new_session_id(now - days * 86400, f"p{i:03d}") + "-main"
        make_session(fin, name, extra=False)
        if days > 30:
            old.append(name)
    args = ["--pack", "100"] if packs else []
    r = subprocess.run(cp.cli("sweep", str(root), "--execute", "-q", "-j", "1", *args),
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    return {str(p): frames(p) for p in sorted(root.rglob("*" + packfile.PACK_SUFFIX))}, old


def logged_before_durable(model: cp.Model, unlinked: list[str], log_dir: str) -> list[str]:
    """Each unlink of *unlinked* must be durable before the prune log's first write after
    it: a log line must never claim a delete a crash can undo."""
    bad = []
    log_writes = [c for c in model.calls if c.ok and c.name in ("write", "pwrite64", "writev")
                  and isinstance(c.args[0], cp.Fd) and (c.args[0].path or "").startswith(log_dir)]
    for path in unlinked:
        u = next((c for evs in model.entries.values() for e in evs
                  if not e.add and e.path == path for c in [e.call]), None)
        if u is None:
            bad.append(f"{path}: never unlinked")
            continue
        w = next((c for c in log_writes if c.start > u.end), None)
        d = model.ns.get(os.path.dirname(path))
        t, how = model.covered(u, d) if d is not None else (cp.INF, "no dir")
        if w is None or t > w.start:
            bad.append(f"{path}: unlinked at line {u.end + 1}, logged at line "
                       f"{'never' if w is None else w.start + 1}, its unlink durable: {how}")
    return bad


@pytest.mark.parametrize("packs", [False, True], ids=["per-session", "in-packs"])
@pytest.mark.parametrize("bug", [None, "no-dir-fsync"])
def test_prune_keeps_what_it_keeps_and_logs_only_durable_deletes_at_every_crash_point(
        tmp_path, request, packs, bug):
    root = tmp_path / "root"
    old_frames, old = _prune_tree(root, packs)
    fin = root / "a_out" / "FINISHED_SUCCESS"
    kept_before = {p.name: p.read_bytes() for p in fin.iterdir() if p.is_file()
                   and split_archive_name(p.name) and not any(p.name.startswith(o) for o in old)}
    run = _run(tmp_path, root, cp.cli("prune", str(root), "--older-than", "30d", "--execute"),
               preload=request.getfixturevalue("skip_dir_fsync") if bug else None)
    log_dir = str(root / ".session-archive" / "prune")
    if packs:
        units = pack_frame_units(old_frames, set(old), root)
        assert not any(n in frames(p) for p in root.rglob("*" + packfile.PACK_SUFFIX) for n in old)
        problems = []
    else:
        # The archives not selected are units that must never be damaged (no copy).
        units = [cp.Unit(n, str(fin / n), []) for n in kept_before]
        unlinked = [str(fin / f"{n}.tar.zst") for n in old]
        assert not any(os.path.exists(p) for p in unlinked)
        problems = logged_before_durable(run.model, unlinked, log_dir)
    verdict = cp.check(run.model, units, is_archive)
    if bug is None:
        assert verdict.ok and not problems, (verdict, problems)
        assert verdict.damaged == (1 if packs else 0), verdict
    else:
        assert verdict.violations or problems, (verdict, problems)
        if packs:
            assert all(".pack.tar.zst made at line" in v for v in verdict.violations)
        else:
            assert len(problems) == len(old) and not verdict.violations, problems


# ------------------------------------------------------------------ extract --undo (packs)


SMALL_MEMORY = ("from archive_tool.engine import single\n"
                "single.IN_MEMORY_LIMIT = 50_000")  # the 300 KB session: its own archive


@pytest.mark.parametrize("bug", [None, "restore-not-synced"])
def test_extract_undo_of_a_pack_run_keeps_every_session_at_every_crash_point(tmp_path, bug):
    """A pack run whose big session got its own archive (too big for memory): the undo
    restores every session, deletes that archive only once its tree is durable, and
    never touches the pack."""
    root = tmp_path / "root"
    fin = root / "x_out" / "FINISHED_SUCCESS"
    for i in range(3):
        make_session(fin, f"2026Y-11M-23D-18h39m2{i}s_KYwP-main", extra=i == 0)
    big = fin / "2026Y-11M-23D-18h39m20s_KYwP-main"
    (big / "big.bin").write_bytes(os.urandom(300_000))
    before = snapshot_sessions(root)
    r = subprocess.run(patched(SMALL_MEMORY, "sweep", str(root), "--pack", "daily", "--execute",
                               "-q", "-j", "1"), capture_output=True)
    assert r.returncode == 0, r.stderr
    (pack,) = fin.glob("*" + packfile.PACK_SUFFIX)
    solo = fin / f"{big.name}.tar.zst"
    assert solo.is_file() and len(frames(pack)) == 2
    pack_bytes = pack.read_bytes()
    archives = {str(solo): (str(big), members_of_archive(str(solo), "tar.zst"))}
    run = _run(tmp_path, root, cp.cli("extract", str(root), "--undo", "last", "--execute", "-q"),
               inject=["syncfs:retval=0"] if bug else ())
    for rel, want in before.items():  # every session is back, exactly
        from .reliability import _members_of_dir
        assert _members_of_dir(str(root / rel)) == want
    assert pack.read_bytes() == pack_bytes  # never rewritten
    units = cp.archive_units(run.model, archives)
    units.append(cp.Unit(pack.name, str(pack), [str(pack)]))
    verdict = cp.check(run.model, units)
    if bug is None:
        assert verdict.ok and verdict.damaged == 1, verdict  # the solo archive only
        assert not solo.exists()
    else:
        assert [v.split(":")[0] for v in verdict.violations] == [solo.name], verdict
        assert all("never synced" in v for v in verdict.violations), verdict.violations


# --------------------------------------------------------------------- --finalize-stale


# The finalize's own fsyncs (marker, the new FINISHED_ERROR/ and both dirs of the rename)
# made no-ops in Python: the sweep's commit then fsyncs only FINISHED_ERROR/ itself.
NO_FINALIZE_FSYNC = ("import os, types\n"
                     "from archive_tool.stale import finalize as stale\n"
                     "stale.os = types.SimpleNamespace(**{**vars(os), 'fsync': lambda fd: None})")


@pytest.mark.parametrize("bug", [None, "no-finalize-fsync"])
def test_finalize_stale_then_sweep_keeps_the_run_at_every_crash_point(tmp_path, bug):
    """A dead RUNNING run (no heartbeat, old files, `--stale-after 1s`) is moved to a new
    FINISHED_ERROR/ and archived by the same sweep. The run may be renamed (to
    FINISHED_ERROR/, then to its trash) and get its marker file; anything else that
    damages it needs the archive, every entry down to it durable, first."""
    root = tmp_path / "root"
    run_dir = make_session(root / "x_out" / "RUNNING")
    old = time.time() - 3600
    for p in [run_dir, *run_dir.rglob("*")]:
        os.utime(p, (old, old), follow_symlinks=False)
    before = snapshot_sessions(root)
    (rel,) = before
    argv = ["sweep", str(root), "--finalize-stale", "--stale-after", "1s", "--execute", "-q",
            "-j", "1"]
    run = _run(tmp_path, root, patched(NO_FINALIZE_FSYNC, *argv) if bug else cp.cli(*argv))
    err = root / "x_out" / "FINISHED_ERROR"
    archive = err / f"{run_dir.name}.tar.zst"
    from archive_tool.guard.liveness import MARKER_NAME

    got = members_of_archive(str(archive), "tar.zst")
    assert MARKER_NAME in got and {k: v for k, v in got.items() if k != MARKER_NAME} == before[rel]
    assert not run_dir.exists() and not (err / run_dir.name).exists()
    moved = str(err / run_dir.name)
    unit = cp.Unit(rel, str(run_dir), [str(archive)],
                   (str(run_dir), moved, str(err / trash_name(run_dir.name))),
                   may_add=(MARKER_NAME,))
    verdict = cp.check(run.model, [unit], is_archive)
    if bug is None:
        assert verdict.ok and verdict.damaged == 1, verdict
    else:
        assert len(verdict.violations) == 1, verdict
        assert "entry " + str(err) + " made at line" in verdict.violations[0], verdict
