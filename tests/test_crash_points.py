"""Every crash point of real runs, under the weakest durability model the tool claims
(tests/crashpoints.py has the model): no session and no archive is ever lost, and the
checker fails when a sync is skipped or misordered below Python (strace's own fault
injection, an LD_PRELOAD shim) — what a SIGKILL test can never see."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from archive_tool.demo import make_tree
from archive_tool.names import split_archive_name

from . import crashpoints as cp
from .conftest import make_session
from .reliability import check as recoverable
from .reliability import members_of_archive, record, snapshot_sessions

pytestmark = pytest.mark.skipif(
    not cp.HAVE_STRACE, reason="strace missing: ./scripts/test installs it when run as root")


def is_archive(name: str) -> bool:
    return split_archive_name(name) is not None


# The sweep CLI with O_TMPFILE off (the named ``.tmp`` path of NFS/Lustre): the crash
# tests' runner, in-process batches (-j 1) so the setting applies.
from tests.test_reliability_crash import _FALLBACK  # noqa: E402


def sweep_run(tmp_path: Path, *args: str, sessions: int = 8, inject=(), preload=None,
              command: str = "sweep", flat: bool = False, fallback: bool = False, seed=None,
              durability: str | None = None):
    root = tmp_path / "root"
    make_tree(str(root), sessions, clutter=False, seed=sessions if seed is None else seed)
    target = root
    if flat:  # compress works on one FINISHED_* dir
        target = next(p for p in root.rglob("FINISHED_SUCCESS"))
    before = snapshot_sessions(root)
    argv = ([sys.executable, "-c", _FALLBACK, str(target), "--execute", "-q", *args] if fallback
            else cp.cli(command, str(target), "--execute", "-q", *args))
    env = None
    if durability is not None:  # the batch's sync strategy (engine/commit.py)
        env = {**os.environ, "SESSION_ARCHIVE_DURABILITY": durability}
    run = cp.traced(argv, root, cwd=tmp_path, trace_file=tmp_path / "trace", inject=inject,
                    preload=preload, env=env)
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    verdict = cp.check(run.model, cp.session_units(root, before), is_archive)
    return run, verdict, root, before


def finished(before: dict, under: str = "") -> int:
    return sum(1 for k in before if "/RUNNING/" not in f"/{k}" and under in k)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 8])
def test_sweep_keeps_every_session_at_every_crash_point(tmp_path, batch, workers):
    run, verdict, root, before = sweep_run(
        tmp_path, "-j", str(workers), "--batch-size", str(batch), sessions=10)
    assert verdict.ok, verdict
    # Not vacuous: every finished source was deleted during the run, each one checked
    # against an archive that had to become durable first.
    assert verdict.damaged == finished(before) > 0, verdict
    assert verdict.crash_points > 300


def test_named_tmp_fallback_keeps_every_session_at_every_crash_point(tmp_path):
    run, verdict, root, before = sweep_run(tmp_path, "-j", "1", "--batch-size", "2",
                                           fallback=True)
    assert verdict.ok, verdict
    assert verdict.damaged == finished(before) > 0, verdict
    assert any(c.name in ("link", "linkat") and ".tmp" in c.text for c in run.model.calls)


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_crash_points_stress_bigger_trees_more_combinations(tmp_path):
    """scripts/stress: bigger trees, both formats, the named-tmp path, more batch sizes."""
    sessions = int(os.environ.get("CRASHPOINT_SESSIONS", "150"))
    totals = {"runs": 0, "calls": 0, "crash_points": 0, "sessions_checked": 0, "lost": 0}
    t0 = time.monotonic()
    i = 0
    for fmt in ("tar.zst", "tar.gz"):
        for workers in (1, 2):
            for batch in (1, 2, 8, 32):
                for fallback in ((False, True) if workers == 1 else (False,)):
                    i += 1
                    run, verdict, root, before = sweep_run(
                        tmp_path / str(i), "-f", fmt, "-j", str(workers), "--batch-size", str(batch),
                        sessions=sessions, fallback=fallback, seed=i)
                    totals["runs"] += 1
                    totals["calls"] += verdict.calls
                    totals["crash_points"] += verdict.crash_points
                    totals["sessions_checked"] += verdict.units
                    totals["lost"] += len(verdict.violations)
                    assert verdict.ok, (fmt, workers, batch, fallback, verdict)
                    shutil.rmtree(tmp_path / str(i))
    totals["seconds"] = round(time.monotonic() - t0)
    record("crash points (stress)", totals)


def test_next_sweep_finishes_crash_leftovers_at_every_crash_point(tmp_path):
    """What a crash leaves (source + archive, trash + archive, trash without its archive):
    the next sweep verifies and deletes, removes trash, or puts the trash back."""
    root = tmp_path / "root"
    fin = root / "x_out" / "FINISHED_SUCCESS"
    names = [f"2026Y-11M-23D-18h39m2{i}s_KYwP-main" for i in range(3)]
    dirs = [make_session(fin, n) for n in names]
    before = snapshot_sessions(root)
    for d in dirs[:2]:
        r = cp.subprocess.run(cp.cli("pack", str(d), "--keep-source"), capture_output=True)
        assert r.returncode == 0, r.stderr
    for d in dirs[1:]:
        d.rename(d.parent / f".{d.name}.deleting")
    run = cp.traced(cp.cli("sweep", str(root), "--execute", "-q", "-j", "1"), root,
                    cwd=tmp_path, trace_file=tmp_path / "trace")
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    units = cp.session_units(root, before)
    for u in [u for u in units if not u.original.endswith(names[0])]:  # now trash dirs
        trash = os.path.join(os.path.dirname(u.original), f".{os.path.basename(u.original)}.deleting")
        u.original, u.allowed = trash, (trash, u.allowed[0])
    verdict = cp.check(run.model, units, is_archive)
    assert verdict.ok, verdict
    assert verdict.damaged == 2  # the source and the trash that had archives were deleted
    assert dirs[2].is_dir() and not dirs[0].exists() and not dirs[1].exists()


def test_unpack_into_a_new_nested_dest_keeps_the_run_at_every_crash_point(tmp_path):
    flat, archives = _archives(tmp_path, 1)
    (archive,) = archives
    dest = tmp_path / "root" / "new" / "deeper" / "run"
    archives = {archive: (str(dest), archives[archive][1])}
    run = cp.traced(cp.cli("unpack", archive, "--dest", str(dest), "--remove-archive"),
                    tmp_path / "root", cwd=tmp_path, trace_file=tmp_path / "trace")
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    verdict = cp.check(run.model, cp.archive_units(run.model, archives))
    assert verdict.ok and verdict.damaged == 1, verdict


def test_compress_keeps_every_session_at_every_crash_point(tmp_path):
    run, verdict, root, before = sweep_run(tmp_path, "-j", "2", sessions=40, command="compress",
                                           flat=True)
    assert verdict.ok, verdict
    flat = os.path.relpath(next(p for p in root.rglob("FINISHED_SUCCESS")), root)
    assert verdict.damaged == finished(before, flat + "/") > 1, verdict


def test_pack_keeps_the_session_at_every_crash_point(tmp_path):
    root = tmp_path / "root"
    src = make_session(root / "x_out" / "FINISHED_SUCCESS")
    before = snapshot_sessions(root)
    for fmt in ("tar.zst", "tar.gz"):
        if fmt == "tar.gz":  # a second session, the decorator's format
            src = make_session(root / "y_out" / "FINISHED_SUCCESS")
            before = snapshot_sessions(root)
        run = cp.traced(cp.cli("pack", str(src), "-f", fmt), root, cwd=tmp_path,
                        trace_file=tmp_path / "trace")
        assert run.proc.returncode == 0, run.proc.stderr.decode()
        verdict = cp.check(run.model, cp.session_units(root, before), is_archive)
        assert verdict.ok, verdict
        assert verdict.damaged == 1, verdict


def _archives(tmp_path: Path, n: int) -> tuple[Path, dict]:
    """*n* session archives in one dir, made untraced; -> (dir, {archive: (dest, members)})."""
    flat = tmp_path / "root" / "x_out" / "FINISHED_SUCCESS"
    for i in range(n):
        make_session(flat, f"2026Y-11M-23D-18h39m2{i}s_KYwP-main", extra=i % 2 == 0)
    rc = cp.subprocess.run(cp.cli("compress", str(flat), "--execute", "-q", "-f", "tar.zst"),
                           capture_output=True)
    assert rc.returncode == 0, rc.stderr
    archives = {}
    for a in sorted(flat.iterdir()):
        if not is_archive(a.name):
            continue  # the root lock
        archives[str(a)] = (str(flat / split_archive_name(a.name)[0]),
                            members_of_archive(str(a), "tar.zst"))
    assert len(archives) == n
    return flat, archives


def test_unpack_remove_archive_keeps_the_run_at_every_crash_point(tmp_path):
    flat, archives = _archives(tmp_path, 1)
    (archive,) = archives
    run = cp.traced(cp.cli("unpack", archive, "--remove-archive"), tmp_path / "root",
                    cwd=tmp_path, trace_file=tmp_path / "trace")
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    units = cp.archive_units(run.model, archives)
    assert all(u.copies for u in units)
    verdict = cp.check(run.model, units)
    assert verdict.ok, verdict
    assert verdict.damaged == 1  # the archive was unlinked: checked against the tree


@pytest.mark.parametrize("workers", [1, 2])
def test_extract_remove_archive_keeps_every_run_at_every_crash_point(tmp_path, workers):
    flat, archives = _archives(tmp_path, 4)
    run = cp.traced(cp.cli("extract", str(flat), "--execute", "--remove-archive", "-q",
                           "-j", str(workers)),
                    tmp_path / "root", cwd=tmp_path, trace_file=tmp_path / "trace")
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    verdict = cp.check(run.model, cp.archive_units(run.model, archives))
    assert verdict.ok, verdict
    assert verdict.damaged == 4


def _repack_run(tmp_path: Path, preload: str | None = None, restore: bool = True):
    """Three daily packs (one session of the first restored beside it), merged into one
    by a traced `repack --merge monthly`; units: each old pack, whose copy is the new pack
    holding every one of its frames not restored (compared byte for byte at the end)."""
    from archive_tool.pack import packfile
    from archive_tool.pack.restore import restore_session
    from archive_tool.sweep.packsweep import pack_sweep

    from .test_pack import _tree

    root = tmp_path / "root"
    for day in ("2026Y-11M-23D", "2026Y-11M-24D", "2026Y-11M-25D"):
        _tree(root, 3, day=day)
    pack_sweep(root, "daily", dry_run=False, workers=1)
    fin = root / "train_out" / "FINISHED_SUCCESS"
    restored = "2026Y-11M-23D-10h01m00s_S001-main"
    if restore:
        restore_session(fin / "2026-11-23.pack.tar.zst", restored)

    def frames(p: Path) -> dict[str, bytes]:
        data = p.read_bytes()
        with packfile.Pack(p) as pk:
            return {n: data[pk.frames.offset[i]:pk.frames.offset[i] + pk.frames.csize[i]]
                    for i, n in enumerate(pk.names)}

    old = {str(p): frames(p) for p in sorted(fin.glob("*.pack.tar.zst"))}
    run = cp.traced(cp.cli("repack", str(root), "--merge", "monthly", "--execute", "-q"), root,
                    cwd=tmp_path, trace_file=tmp_path / "trace", preload=preload)
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    new = fin / "2026-11.pack.tar.zst"
    got = frames(new)
    units = [cp.Unit(os.path.basename(p), p, [str(new)] if all(
        got.get(n) == f for n, f in fr.items() if n != restored or not restore) else []) for p, fr in old.items()]
    return run, cp.check(run.model, units), len(old)


def test_repack_keeps_every_pack_at_every_crash_point(tmp_path):
    run, verdict, n = _repack_run(tmp_path)
    assert verdict.ok, verdict
    assert verdict.damaged == n == 3, verdict  # every old pack unlinked, each checked


def test_checker_catches_a_repack_whose_dir_fsync_is_skipped(tmp_path, skip_dir_fsync):
    """Not vacuous: with directory fsyncs made no-ops below Python, the new pack's name is
    not durable when the old packs are unlinked. (No restored session here: the syncfs
    that makes restored dirs durable would cover the skipped fsync.)"""
    run, verdict, _ = _repack_run(tmp_path, preload=skip_dir_fsync, restore=False)
    assert verdict.violations, verdict


# ---------------------------------------------------------------- planted durability bugs


def test_checker_catches_archive_data_left_out_of_the_batchs_parallel_fsyncs(tmp_path):
    """The default strategy fsyncs each archive of a batch (in threads). A shim makes those
    fsyncs of unnamed archive files no-ops below Python: sources are deleted with their
    archives' data only in the page cache — every session flagged, none by a SIGKILL test."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing: cannot build the LD_PRELOAD shim")
    clean, verdict, _, _ = sweep_run(tmp_path / "a", "-j", "1", "--batch-size", "2",
                                     durability="fsync")
    assert verdict.ok, verdict
    assert not any(c.name == "syncfs" for c in clean.model.calls)  # the fsync strategy ran
    shim = cp.build_shim(cp.SKIP_UNLINKED_FILE_FSYNC_C, tmp_path, "skip_tmpfile_fsync")
    run, verdict, root, before = sweep_run(tmp_path / "b", "-j", "1", "--batch-size", "2",
                                           durability="fsync", preload=shim)
    assert recoverable(root, before).ok
    assert len(verdict.violations) == finished(before), verdict
    assert all("data of" in v for v in verdict.violations), verdict.violations


@pytest.fixture(scope="module")
def skip_dir_fsync(tmp_path_factory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing: cannot build the LD_PRELOAD shim")
    return cp.build_shim(cp.SKIP_DIR_FSYNC_C, tmp_path_factory.mktemp("shim"), "skip_dir_fsync")


@pytest.mark.parametrize("workers,batch", [(1, 1), (2, 8)])
def test_checker_catches_an_archive_dir_not_fsynced_after_its_link(tmp_path, skip_dir_fsync,
                                                                    workers, batch):
    """fsync() of a directory made a no-op in libc: Python and strace see a normal run,
    and the tree after it is fine (what every SIGKILL test checks); the model sees the
    archive's name was never made durable before its source was deleted."""
    run, verdict, root, before = sweep_run(tmp_path, "-j", str(workers), "--batch-size", str(batch),
                                           preload=skip_dir_fsync)
    assert recoverable(root, before).ok
    assert verdict.violations, verdict
    assert all(".tar.zst made at line" in v for v in verdict.violations), verdict.violations
    # The trace really lacks the directory fsyncs (made below Python, never reached the kernel).
    assert not any(c.name == "fsync" and c.args[0].path and c.args[0].path.endswith("FINISHED_SUCCESS")
                   for c in run.model.calls)


def test_checker_catches_the_last_batch_left_out_of_the_sync(tmp_path):
    """The batch's syncfs skipped for the last batch only (strace makes that one syncfs a
    no-op returning 0): its archives are linked and their sources deleted with their data
    still only in the page cache."""
    clean, verdict, _, before = sweep_run(tmp_path / "a", "-j", "1", "--batch-size", "2",
                                          durability="syncfs")
    assert verdict.ok, verdict
    n = sum(1 for c in clean.model.calls if c.name == "syncfs" and c.ok)
    assert n >= 2
    run, verdict, root, before = sweep_run(tmp_path / "b", "-j", "1", "--batch-size", "2",
                                           inject=[f"syncfs:retval=0:when={n}"],
                                           durability="syncfs")
    assert any("(INJECTED)" in c.ret for c in run.model.calls)
    assert recoverable(root, before).ok
    assert len(verdict.violations) == 2, verdict  # exactly the last batch's two sessions
    assert all("data of" in v for v in verdict.violations), verdict.violations
    assert verdict.half_archives  # and their final names pointed at non-durable data


@pytest.mark.parametrize("command", ["unpack", "extract"])
def test_checker_catches_remove_archive_before_the_restore_is_durable(tmp_path, command):
    """The restored tree's syncfs made a no-op: the archive is unlinked while the restored
    files may still be only in the page cache."""
    flat, archives = _archives(tmp_path, 2)
    argv = (cp.cli("unpack", next(iter(archives)), "--remove-archive") if command == "unpack"
            else cp.cli("extract", str(flat), "--execute", "--remove-archive", "-q", "-j", "1"))
    run = cp.traced(argv, tmp_path / "root", cwd=tmp_path, trace_file=tmp_path / "trace",
                    inject=["syncfs:retval=0"])
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    verdict = cp.check(run.model, cp.archive_units(run.model, archives))
    assert verdict.violations, verdict
    assert all("never synced" in v for v in verdict.violations), verdict.violations


# ------------------------------------------------------------------ the parser, by hand


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "r"
    d = root / "F" / "S"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.txt").write_text("a")
    return root, d


PATH_FORM = """\
10 openat(AT_FDCWD</w>, "{F}", O_RDWR|O_CLOEXEC|O_TMPFILE, 0600) = 5<{F}/#77>(deleted)
10 write(5<{F}/#77>(deleted), ""..., 100 <unfinished ...>
11 openat(AT_FDCWD</w>, "/usr/lib/x.so", O_RDONLY) = 3</usr/lib/x.so>
10 <... write resumed>) = 100
10 fsync(5<{F}/#77>(deleted)) = 0
10 openat(AT_FDCWD</w>, "/proc/self/fd", O_RDONLY|O_CLOEXEC) = 6</proc/10/fd>
10 linkat(6</proc/10/fd>, "5", AT_FDCWD</w>, "{F}/S.tar.zst", AT_SYMLINK_FOLLOW) = 0
10 openat(AT_FDCWD</w>, "{F}", O_RDONLY|O_DIRECTORY) = 7<{F}>
{DIRSYNC}10 rename("{F}/S", "{F}/.S.deleting") = 0
10 unlink("{F}/.S.deleting/sub/a.txt") = 0
10 rmdir("{F}/.S.deleting/sub") = 0
10 rmdir("{F}/.S.deleting") = 0
"""

AT_FORM = """\
10 openat(AT_FDCWD</w>, "{F}", O_RDONLY|O_DIRECTORY|O_CLOEXEC) = 4<{F}>
10 openat(4<{F}>, ".", O_RDWR|O_CLOEXEC|O_TMPFILE, 0600) = 5<{F}/#77>(deleted)
10 pwrite64(5<{F}/#77>(deleted), ""..., 100, 0) = 100
10 fdatasync(5<{F}/#77>(deleted) <unfinished ...>
12 close(3</x>) = 0
10 <... fdatasync resumed>) = 0
10 linkat(5<{F}/#77>(deleted), "", 4<{F}>, "S.tar.zst", AT_EMPTY_PATH) = 0
10 fsync(4<{F}>) = 0 (INJECTED)
{DIRSYNC}10 renameat2(4<{F}>, "S", 4<{F}>, ".S.deleting", RENAME_NOREPLACE) = 0
10 openat(4<{F}>, ".S.deleting", O_RDONLY|O_DIRECTORY) = 8<{F}/.S.deleting>
10 unlinkat(8<{F}/.S.deleting>, "sub/a.txt", 0) = 0
10 unlinkat(8<{F}/.S.deleting>, "sub", AT_REMOVEDIR) = 0
10 unlinkat(4<{F}>, ".S.deleting", AT_REMOVEDIR) = 0
"""


@pytest.mark.parametrize("form", [PATH_FORM, AT_FORM], ids=["path-calls", "at-calls"])
@pytest.mark.parametrize("dirsync", ["10 fsync(7<{F}>) = 0\n", "10 syncfs(5<{F}/S.tar.zst>) = 0\n", "",
                                     "late"],
                         ids=["dir-fsync", "syncfs", "no-dir-sync", "dir-fsync-after-delete"])
def test_model_reads_path_and_at_calls_alike(tmp_path, form, dirsync):
    """One commit written with path calls and with dir-fd calls (O_TMPFILE named through
    AT_EMPTY_PATH, renameat2, unlinkat): same verdict; an injected fsync counts as none."""
    root, d = _tree(tmp_path)
    f = str(d.parent)
    if dirsync == "late":  # the right fsync, issued once the source is gone: too late
        form = form.replace("{DIRSYNC}", "") + "10 fsync(4<{F}>) = 0\n"
        dirsync = ""
        if form.startswith("10 openat(AT_FDCWD</w>, \"{F}\", O_RDWR"):  # path form: open fd 4
            form = "10 openat(AT_FDCWD</w>, \"{F}\", O_RDONLY|O_DIRECTORY) = 4<{F}>\n" + form
    text = form.replace("{DIRSYNC}", dirsync.replace("7<", "4<") if form is AT_FORM else dirsync)
    text = text.replace("{F}", f)
    (d.parent / "S.tar.zst").write_bytes(b"x")  # the copy as the run left it
    shutil.rmtree(d)
    model = cp.Model(str(root), "/w")
    model.ns[str(root)] = cp.Obj("d", str(root))
    for p in (d.parent, d, d / "sub", d / "sub" / "a.txt"):
        model.ns[str(p)] = cp.Obj("f" if p.suffix else "d", str(p))
    for c in cp.parse(text):
        model.apply(c)
    unit = cp.Unit("S", str(d), [f + "/S.tar.zst"], (str(d), f + "/.S.deleting"))
    verdict = cp.check(model, [unit], is_archive)
    assert not verdict.warnings, verdict
    assert verdict.damaged == 1
    assert not verdict.half_archives
    if dirsync:
        assert verdict.ok, verdict
    else:
        assert len(verdict.violations) == 1 and "S.tar.zst made at line" in verdict.violations[0]
        assert "unlink" in verdict.violations[0]  # the first damage: the rename to trash is not


def test_model_never_counts_a_name_made_before_its_data_is_durable(tmp_path):
    root, d = _tree(tmp_path)
    f = str(d.parent)
    text = (f'1 openat(AT_FDCWD</w>, "{f}", O_RDWR|O_TMPFILE, 0600) = 5<{f}/#9>(deleted)\n'
            f'1 write(5<{f}/#9>(deleted), ""..., 10) = 10\n'
            f'1 linkat(AT_FDCWD</w>, "/proc/self/fd/5", AT_FDCWD</w>, "{f}/S.tar.zst", AT_SYMLINK_FOLLOW) = 0\n'
            f'1 fsync(5<{f}/S.tar.zst>) = 0\n'
            f'1 syncfs(5<{f}/S.tar.zst>) = 0\n')
    model = cp.Model(str(root), "/w")
    model.populate()
    for c in cp.parse(text):
        model.apply(c)
    verdict = cp.check(model, [], is_archive)
    assert len(verdict.half_archives) == 1 and not verdict.warnings
    assert model.ready(f + "/S.tar.zst")[0] == 4  # durable once the syncfs (line 5) returned
