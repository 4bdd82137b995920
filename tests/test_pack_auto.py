"""`sweep --pack auto` (issue 26): packs that span one owner's dirs, placed in their
deepest common dir, with each session stored at its path below the pack, and every reader
putting it back exactly there."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from archive_tool.names import FINISHED_STATES, is_session_name
from archive_tool.pack import packfile

from .conftest import make_session, needs_gnu_tar, run_cli

DAY0 = (2025, 12, 1)


def _packs(root: Path) -> list[Path]:
    return sorted(root.rglob("*" + packfile.PACK_SUFFIX))


def _sessions(root: Path) -> list[str]:
    """Session dirs below FINISHED_* dirs, relative to *root*."""
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        if os.path.basename(dirpath) in FINISHED_STATES:
            out += [os.path.relpath(os.path.join(dirpath, d), root)
                    for d in dirnames if is_session_name(d)]
        dirnames[:] = [d for d in dirnames if not is_session_name(d) and not d.startswith(".")]
    return sorted(out)


def _tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every path below *root* but our state, locks and packs -> (type, mode, bytes, mtime)."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".session-archive"]
        for n in dirnames + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if n.endswith(packfile.PACK_SUFFIX) or n.startswith(".session-archive"):
                continue
            st = os.lstat(p)
            data = Path(p).read_bytes() if os.path.isfile(p) and not os.path.islink(p) else b""
            mt = st.st_mtime_ns if not os.path.isdir(p) else 0  # dirs: their entries changed
            out[rel] = (st.st_mode, data, mt, os.readlink(p) if os.path.islink(p) else "")
    return out


def _index(pack: Path) -> list[str]:
    with packfile.Pack(pack) as p:
        return list(p.names)


def _sid(i: int, day: int) -> str:
    import datetime as dt

    d = dt.date(*DAY0) + dt.timedelta(days=day)
    return f"{d.year:04d}Y-{d.month:02d}M-{d.day:02d}D-03h{i % 60:02d}m00s_R{i:03d}X-main"


def _small_tree(root: Path) -> None:
    """Three projects, two scripts each, both states: 24 sessions in 12 FINISHED dirs."""
    k = 0
    for proj in ("alpha", "beta", "gamma"):
        for script in ("train", "eval"):
            for state in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
                parent = root / proj / f"{script}_out" / state
                parent.mkdir(parents=True)
                for _ in range(2):
                    d = make_session(parent, _sid(k, k), extra=k % 2 == 0)
                    (d / "CONFIGS" / "CONFIG.yaml").write_text(f"SEED: {k}\nARGS:\n  lr: 0.{k}\n")
                    k += 1
    (root / "alpha" / "README.md").write_text("not a session\n")


def _sweep(root: Path, *extra: str) -> dict:
    r = run_cli("sweep", str(root), "--pack", "auto", "--execute", "--json", *extra)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


# ------------------------------------------------------------------ packs of useful size


def test_demo_tree_gives_at_most_one_pack_per_200_sessions(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    assert run_cli("demo-tree", str(root)).returncode == 0
    n = len(_sessions(root))
    s = _sweep(root, "-q")
    packs = _packs(root)
    assert s["archived"] == n and s["failed"] == 0 and not _sessions(root)
    assert 1 <= len(packs) and len(packs) * 200 <= n, (len(packs), n)
    assert sum(len(_index(p)) for p in packs) == n
    r = run_cli("verify", str(root))
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_a_year_of_daily_runs_gives_at_most_one_pack_per_200_sessions(tmp_path: Path) -> None:
    root = tmp_path / "year"
    parent = root / "lab" / "nightly_out" / "FINISHED_SUCCESS"
    parent.mkdir(parents=True)
    for day in range(365):
        make_session(parent, _sid(day, day), extra=False)
    s = _sweep(root, "-q")
    packs = _packs(root)
    assert s["archived"] == 365 and len(packs) * 200 <= 365, packs
    # One script's dir: the pack sits beside its sessions, as a daily pack would.
    assert [p.parent for p in packs] == [parent]


def test_pack_targets_close_packs_by_sessions_and_by_bytes(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _small_tree(root)
    _sweep(root, "--pack-sessions", "10")
    assert sorted(len(_index(p)) for p in _packs(root)) == [4, 10, 10]
    root2 = tmp_path / "t2"
    _small_tree(root2)
    _sweep(root2, "--pack-bytes", "1K")
    packs = _packs(root2)
    assert len(packs) > 3 and sum(len(_index(p)) for p in packs) == 24
    for p in packs:  # closed by the first frame that reached the target
        with packfile.Pack(p) as pk:
            assert sum(pk.frames.csize[:len(pk.names) - 1]) < 1024
    assert run_cli("sweep", str(root2), "--pack", "daily", "--pack-sessions", "5").returncode == 2


# ------------------------------------------------------------------ where things land


@needs_gnu_tar
def test_gnu_tar_in_the_pack_dir_puts_every_session_back(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _small_tree(root)
    before = _tree_snapshot(root)
    _sweep(root)
    [pack] = _packs(root)
    assert pack.parent == root  # three projects: their common dir is the root
    names = _index(pack)
    assert names[0].startswith("alpha/eval_out/FINISHED_ERROR/")
    with packfile.Pack(pack) as p:
        first = packfile.iter_tar(p.members(0))[0][0]
        assert first.rstrip("/") == names[0]
    subprocess.run(["tar", "--zstd", "-xpf", pack.name], cwd=root, check=True)
    assert _tree_snapshot(root) == before


def test_round_trips_of_an_auto_pack(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _small_tree(root)
    before = _tree_snapshot(root)
    sessions = _sessions(root)
    _sweep(root)
    assert not _sessions(root)
    assert run_cli("verify", str(root)).returncode == 0
    chk = run_cli("catalog", str(root), "--check")
    assert chk.returncode == 0, chk.stdout.decode()
    # unpack -s: back at its own path, not beside the pack
    [pack] = _packs(root)
    target = sessions[5]
    sid = os.path.basename(target)[:-len("-main")]
    seed = int(sid.split("_R")[1][:3])
    r = run_cli("unpack", str(pack), "-s", sid)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == str(root / target) and (root / target).is_dir()
    assert not (root / os.path.basename(target)).exists()
    # show: the member by its path below the session; from the root's catalog too
    for where in (str(pack), str(root)):
        r = run_cli("show", where, "-s", sid, "CONFIGS/CONFIG.yaml")
        assert r.returncode == 0 and r.stdout.startswith(f"SEED: {seed}\n".encode()), r.stderr.decode()
    shutil.rmtree(root / target)
    # extract --undo last: every session back where it was, the tree as before
    r = run_cli("extract", str(root), "--undo", "last", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert _tree_snapshot(root) == before
    # extract --tree: the same from the pack alone (no manifest)
    for s in sessions:
        shutil.rmtree(root / s)
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert _tree_snapshot(root) == before
    # repack drops the frames whose dirs are back and identical; catalog stays true
    r = run_cli("repack", str(root), "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert not _packs(root)
    assert run_cli("catalog", str(root), "--check").returncode == 0


def test_repack_merge_and_prune_keep_paths_below_the_pack(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _small_tree(root)
    before = _tree_snapshot(root)
    sessions = _sessions(root)
    _sweep(root, "--pack-sessions", "10")
    assert len(_packs(root)) == 3
    r = run_cli("repack", str(root), "--merge", "all", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    packs = _packs(root)
    assert len(packs) < 3 and sum(len(_index(p)) for p in packs) == 24
    for p in packs:  # every session still at its path below its pack
        assert all((p.parent / n).relative_to(root).as_posix() in sessions for n in _index(p))
    assert run_cli("verify", str(root)).returncode == 0
    assert run_cli("catalog", str(root), "--check").returncode == 0
    # prune: the 12 oldest runs (one a day, from DAY0) go; the others stay in their packs
    r = run_cli("prune", str(root), "--older-than", f"{_age_days(11)}d", "--keep-last", "0",
                "--include-latest", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    left = sorted(str((p.parent / n).relative_to(root)) for p in _packs(root)
                  for n in _index(p))
    assert left == sorted(s for s in sessions if int(s.split("_R")[1][:3]) >= 12)
    assert run_cli("catalog", str(root), "--check").returncode == 0
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert {k: v for k, v in before.items() if not any(k.startswith(s) for s in sessions
            if int(s.split("_R")[1][:3]) < 12)} == _tree_snapshot(root)


def _age_days(k: int) -> float:
    """An age between the start of run k and of run k + 1 (runs one a day from DAY0)."""
    import datetime as dt
    import time

    t = time.mktime((dt.datetime(*DAY0) + dt.timedelta(days=k, hours=12)).timetuple())
    return round((time.time() - t) / 86400, 3)


# ------------------------------------------------------------------ owners and symlinks


def test_two_owners_never_share_a_pack(tmp_path: Path, world_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a subtree to another user")
    root = world_dir / "t"
    _small_tree(root)
    for dirpath, dirnames, files in os.walk(root / "beta"):
        for n in [*dirnames, *files]:
            os.lchown(os.path.join(dirpath, n), 65534, 65534)
    os.chown(root / "beta", 65534, 65534)
    owner_of = {s: (root / s).stat().st_uid for s in _sessions(root)}
    _sweep(root)
    assert not _sessions(root)
    packs = _packs(root)
    seen = set()
    for p in packs:
        uids = {owner_of[str((p.parent / n).relative_to(root))] for n in _index(p)}
        assert len(uids) == 1 and p.stat().st_uid in uids, (p, uids)
        # nobody's pack sits in nobody's own dir, root's never in beta/
        assert (p.parent == root / "beta") if uids == {65534} else "beta" not in p.parts
        seen |= uids
    assert seen == {0, 65534}
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert {s: (root / s).stat().st_uid for s in _sessions(root)} == owner_of


def test_a_dir_others_may_write_never_holds_a_spanning_pack(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _small_tree(root)
    os.chmod(root / "alpha", 0o777)  # shared: alpha's sessions pack below it, per script
    os.chmod(root, 0o775)
    _sweep(root)
    dirs = sorted(str(p.parent.relative_to(root)) for p in _packs(root))
    assert dirs == ["alpha/eval_out", "alpha/train_out", "beta", "gamma"], dirs


def test_a_symlinked_dir_on_restore_is_refused(tmp_path: Path, world_dir: Path) -> None:
    root = world_dir / "t"
    _small_tree(root)
    sessions = _sessions(root)
    _sweep(root)
    [pack] = _packs(root)
    elsewhere = world_dir / "elsewhere"
    (elsewhere / "FINISHED_SUCCESS").mkdir(parents=True)
    (elsewhere / "FINISHED_ERROR").mkdir()
    shutil.rmtree(root / "beta" / "train_out")
    os.symlink(elsewhere, root / "beta" / "train_out")
    in_beta_train = [s for s in sessions if s.startswith("beta/train_out/")]
    sid = os.path.basename(in_beta_train[0])
    r = run_cli("unpack", str(pack), "-s", sid)
    assert r.returncode == 1 and b"refused" in r.stderr, r.stderr.decode()
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 1
    # every other session came back; nothing went through the link
    assert not any(os.scandir(elsewhere / "FINISHED_SUCCESS"))
    assert not any(os.scandir(elsewhere / "FINISHED_ERROR"))
    assert sorted(_sessions(root)) == sorted(set(sessions) - set(in_beta_train))


# ------------------------------------------------------------------ the index


def test_an_index_with_paths_is_version_2_and_per_dir_packs_stay_version_1(tmp_path: Path
                                                                         ) -> None:
    root = tmp_path / "t"
    _small_tree(root)
    _sweep(root)
    [pack] = _packs(root)
    raw = _raw_index(pack)
    assert raw["version"] == 2 and all("/" in n for n in raw["sessions"])
    root2 = tmp_path / "t2"
    _small_tree(root2)
    assert run_cli("sweep", str(root2), "--pack", "daily", "--execute").returncode == 0
    assert {_raw_index(p)["version"] for p in _packs(root2)} == {1}


def _raw_index(pack: Path) -> dict:
    from archive_tool.pack import seekable

    fd = os.open(pack, os.O_RDONLY)
    try:
        t = seekable.read_seek_table(fd, str(pack))
        return json.loads(seekable.read_skippable(fd, t[-1], packfile.INDEX_MAGIC, str(pack)))
    finally:
        os.close(fd)


def members_below(pack: Path) -> dict[str, dict[str, bytes]]:
    """Entry path -> {member below the session: bytes} of a pack, read with zstd + tarfile
    alone (what any tool sees)."""
    raw = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(pack.read_bytes()), read_across_frames=True).read()
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for m in tf:
            parts = m.name.rstrip("/").split("/")
            k = next(i for i, p in enumerate(parts) if is_session_name(p))
            got = out.setdefault("/".join(parts[:k + 1]), {})
            if m.isfile():
                got["/".join(parts[k + 1:])] = tf.extractfile(m).read()
    return out


# ------------------------------------------------------------------ crashes


def _span_members(pack: Path) -> dict[str, dict[str, tuple]]:
    """Session path (absolute) -> members below it, in reliability.snapshot_sessions' form."""
    from .reliability import _member

    raw = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(pack.read_bytes()), read_across_frames=True).read()
    out: dict[str, dict[str, tuple]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for m in tf:
            parts = m.name.rstrip("/").split("/")
            k = next(i for i, p in enumerate(parts) if is_session_name(p))
            got = out.setdefault(str(pack.parent / "/".join(parts[:k + 1])), {})
            if k + 1 < len(parts):
                got["/".join(parts[k + 1:])] = _member(tf, m)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_pack_auto_keeps_every_session_at_every_crash_point(tmp_path: Path,
                                                                  workers: int) -> None:
    from archive_tool.names import trash_name

    from . import crashpoints as cp
    from .reliability import snapshot_sessions
    from .test_crash_points_packs import is_archive

    if not cp.HAVE_STRACE:
        pytest.skip("strace missing")
    root = tmp_path / "root"
    _small_tree(root)
    (root / "beta" / "train_out" / "FINISHED_SUCCESS" / _sid(8, 8) / "big.bin").write_bytes(
        os.urandom(200_000))
    before = snapshot_sessions(root)
    # Two packs (--pack-sessions 16): their common dirs are the root and gamma/.
    run = cp.traced(cp.cli("sweep", str(root), "--pack", "auto", "--pack-sessions", "16",
                           "--execute", "-q", "-j", str(workers)), root, cwd=tmp_path,
                    trace_file=tmp_path / "trace")
    assert run.proc.returncode == 0, run.proc.stderr.decode()
    packs = _packs(root)
    assert [p.parent for p in packs] == [root, root / "gamma"]
    held: dict[str, list[str]] = {}
    for p in packs:
        for path, members in _span_members(p).items():
            if members == before.get(os.path.relpath(path, root)):
                held.setdefault(path, []).append(str(p))
    units = []
    for rel in before:
        d = str(root / rel)
        trash = os.path.join(os.path.dirname(d), trash_name(os.path.basename(d)))
        units.append(cp.Unit(rel, d, held.get(d, [])[:1], (d, trash)))
    assert all(u.copies for u in units)
    verdict = cp.check(run.model, units, is_archive)
    assert verdict.ok, verdict
    assert verdict.damaged == len(before) == 24, verdict
    assert verdict.crash_points > 300


def test_a_crash_between_publish_and_delete_is_finished_by_the_next_sweep(
        tmp_path: Path) -> None:
    """Killed once the first pack (of the whole root) is linked: its sources are still
    there. The next sweep plans smaller groups (other sessions are gone), yet finds the
    pack above them, deletes each source whose frame equals its bytes, and packs nothing
    twice; --undo of the second run brings them back too."""
    from .conftest import crash_at

    root = tmp_path / "t"
    _small_tree(root)
    before = _tree_snapshot(root)
    call = ("from archive_tool.sweep.runlog import pack_sweep_logged\n"
            "pack_sweep_logged(sys.argv[1], 'auto', workers=1, pack_sessions=14)\n")
    r = subprocess.run([sys.executable, "-c", crash_at(call), str(root), "pack-published",
                        "1"], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 9
    [first] = _packs(root)
    held = len(_index(first))
    assert held == 14 and len(_sessions(root)) == 24
    # Some of the first pack's sources go meanwhile (as if deleted before the crash):
    # the next plan's groups are different and their common dirs lower.
    for s in _sessions(root)[:3]:
        shutil.rmtree(root / s)
    s = _sweep(root)
    assert s["resumed"] == 11 and s["archived"] == 10 and s["failed"] == 0, s
    assert sum(len(_index(p)) for p in _packs(root)) == 24  # nothing packed twice
    assert not _sessions(root)
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert _tree_snapshot(root) == before


# ------------------------------------------------------------------ mount


def test_the_mount_shows_auto_packed_sessions_in_their_own_dirs(tmp_path: Path) -> None:
    from archive_tool.mount.view import View

    root = tmp_path / "t"
    _small_tree(root)
    before = _tree_snapshot(root)
    _sweep(root, "--pack-sessions", "16")  # packs at the root and in gamma/
    assert {p.parent for p in _packs(root)} == {root, root / "gamma"}
    v = View(root)
    try:
        assert sorted(n for n, _m in v.listdir("/")) == ["alpha", "beta", "gamma"]  # no pack
        assert sorted(n for n, _m in v.listdir("/gamma")) == ["eval_out", "train_out"]
        got = {}
        for rel, (mode, data, _mt, _link) in before.items():
            node = v.resolve("/" + rel)
            if node.live:
                continue
            assert node.entry.mode == mode, rel
            if data:
                got[rel] = node.tree.blob.pread(node.entry.size, node.entry.offset)
        want = {k: d for k, (_m, d, _t, _l) in before.items() if d and k in got}
        assert got == want and len(got) == sum(1 for _k, v_ in before.items() if v_[1]) - 1
        for s in _sessions_of(before):
            d, name = s.rsplit("/", 1)
            assert name in [n for n, _m in v.listdir("/" + d)], s
    finally:
        v.close()


def _sessions_of(snap: dict[str, tuple]) -> list[str]:
    return sorted(k for k in snap if is_session_name(k.rsplit("/", 1)[-1]))


# ------------------------------------------------------------------ a hostile tree owner


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="plays root against a user: needs root and setpriv")
def test_a_user_swapping_a_dir_below_an_auto_pack_cannot_make_root_restore_outside(
        tmp_path: Path) -> None:
    """Root sweeps a user's tree (uid 4242) with --pack auto: the pack goes in the user's
    own dir; the user then swaps a dir between the pack and its sessions for a symlink to
    a root-only dir. Root's extract --tree and unpack -s restore nothing through it."""
    import tempfile

    from archive_tool import fs

    from .test_security_races import USER, as_user, chown_tree

    base = Path(tempfile.mkdtemp(prefix="auto-race-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "runs"
        alice = root / "alice"
        for proj in ("p1/a_out", "p2/b_out"):
            for k in range(2):
                make_session(alice / proj / "FINISHED_SUCCESS", _sid(k, k + (proj < "p2") * 5))
        chown_tree(alice)
        secret = base / "rootonly"
        (secret / "FINISHED_SUCCESS").mkdir(parents=True, mode=0o700)
        os.chmod(secret, 0o700)
        sessions = _sessions(root)
        s = _sweep(root)
        assert s["archived"] == 4
        [pack] = _packs(root)
        assert pack.parent == alice and pack.stat().st_uid == USER
        b_out = alice / "p2" / "b_out"
        as_user(f"os.rename({str(b_out)!r}, {str(b_out) + '.x'!r})\n"
                f"os.symlink({str(secret)!r}, {str(b_out)!r})")
        r = run_cli("extract", str(root), "--tree", "--execute")
        assert r.returncode == 1
        assert not any(os.scandir(secret / "FINISHED_SUCCESS"))
        assert _sessions(root) == [x for x in sessions if x.startswith("alice/p1/")]
        r = run_cli("unpack", str(pack), "-s", os.path.basename(sessions[-1]))
        assert r.returncode == 1 and b"refused" in r.stderr, r.stderr
        assert not any(os.scandir(secret / "FINISHED_SUCCESS"))
        # Swapped while root is restoring (after the dirs were opened): the session lands
        # in the dir root opened, wherever the user moved it; never in the root-only dir.
        as_user(f"os.unlink({str(b_out)!r})\nos.rename({str(b_out) + '.x'!r}, {str(b_out)!r})")

        def attack(p: str, where: str) -> None:
            if p == "restore-extract":
                as_user(f"os.rename({str(alice / 'p2')!r}, {str(alice / 'p2.moved')!r})\n"
                        f"os.symlink({str(secret)!r}, {str(alice / 'p2')!r})")
                fs.race_hook = None

        from archive_tool.restore.many import restore_tree

        fs.race_hook = attack
        try:
            restore_tree(root, dry_run=False, workers=1)
        finally:
            fs.race_hook = None
        assert not any(os.scandir(secret / "FINISHED_SUCCESS"))
        moved = alice / "p2.moved" / "b_out" / "FINISHED_SUCCESS"
        assert len([d for d in os.listdir(moved) if is_session_name(d)]) >= 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_half_deleted_source_under_an_auto_pack_is_removed_not_put_back(
        tmp_path: Path) -> None:
    """A crash mid-delete leaves `.<name>.deleting` (part of the files gone) in its
    FINISHED_* dir while the pack holding the session whole sits dirs above: the next
    auto sweep removes it; renaming it back would resurrect a damaged session."""
    root = tmp_path / "t"
    _small_tree(root)
    before = _tree_snapshot(root)
    sessions = _sessions(root)
    _sweep(root)
    victim = root / sessions[7]
    trash = victim.parent / f".{victim.name}.deleting"
    make_session(victim.parent, trash.name.removeprefix(".").removesuffix(".deleting"))
    (victim.parent / victim.name).rename(trash)
    for f in list(trash.rglob("*"))[:2]:
        if f.is_file():
            f.unlink()
    s = _sweep(root)
    assert s["cleaned"] == 1 and s["failed"] == 0, s
    assert not trash.exists() and not victim.exists()
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    assert _tree_snapshot(root) == before


def test_nightly_auto_sweeps_packs_are_merged_to_the_target_by_repack_merge_auto(
        tmp_path: Path) -> None:
    """A script that runs once a night, swept every night: one small pack a night in its
    FINISHED dir; `repack --merge auto` makes them packs of up to 1,000 sessions (here:
    one), every session still at its place, nothing else touched."""
    root = tmp_path / "t"
    parent = root / "lab" / "nightly_out" / "FINISHED_SUCCESS"
    parent.mkdir(parents=True)
    for night in range(12):
        make_session(parent, _sid(night, night), extra=False)
        _sweep(root, "-q")
    assert len(_packs(root)) == 12
    r = run_cli("repack", str(root), "--merge", "auto", "--execute")
    assert r.returncode == 0, r.stderr.decode()
    [pack] = _packs(root)
    assert pack.parent == parent and len(_index(pack)) == 12
    assert run_cli("catalog", str(root), "--check").returncode == 0
    again = run_cli("repack", str(root), "--merge", "auto", "--execute", "--json")
    assert json.loads(again.stdout)["packs_written"] == 0  # one pack alone: left as it is
    r = run_cli("extract", str(root), "--tree", "--execute")
    assert r.returncode == 0 and len(_sessions(root)) == 12


def test_plan_auto_groups_by_owner_and_stops_below_dirs_it_may_not_use() -> None:
    """The plan alone, on a described tree (lstat faked): per owner, path order, the
    common dir never above a dir of another owner, a writable-by-others dir, another
    device, or so high that an entry would be deeper than a reader accepts."""
    from archive_tool.pack.entrypath import MAX_DEPTH
    from archive_tool.sweep.packplan import plan_auto
    from archive_tool.sweep.plan import Task

    class St:
        def __init__(self, uid: int, mode: int = 0o755, dev: int = 1) -> None:
            self.st_uid, self.st_mode, self.st_dev = uid, 0o040000 | mode, dev

    dirs = {"/r": St(0), "/r/a": St(1), "/r/a/q": St(1, 0o777), "/r/b": St(2),
            "/r/a/m": St(1, dev=2)}
    fins = {"/r/a/p/x_out/F": 3, "/r/a/p/x2_out/F": 3, "/r/a/q/y_out/F": 2,
            "/r/a/q/y2_out/F": 2, "/r/b/z_out/F": 2, "/r/b/z2_out/F": 2, "/r/a/m/w_out/F": 2,
            "/r/a/m/w2_out/F": 2}
    deep = "/r/a/p/" + "/".join(f"d{k}" for k in range(MAX_DEPTH + 2))
    fins |= {f"{deep}/u_out/F": 1, f"{deep}/v_out/F": 1}
    for d in fins:
        parts = d.split("/")
        for k in range(3, len(parts) + 1):
            p = "/".join(parts[:k])
            dirs.setdefault(p, St(dirs["/".join(parts[:3])].st_uid,
                                  dev=dirs["/".join(parts[:3])].st_dev if k > 3 else 1))
    dirs["/r/a/m"] = St(1, dev=2)
    for p in list(dirs):
        if p.startswith("/r/a/m/"):
            dirs[p] = St(1, dev=2)

    def lstat(p: str) -> St:
        return dirs[p]

    todo = [Task("archive", f"{d}/2026Y-01M-01D-00h00m{k:02d}s_T{k}-main")
            for d, n in fins.items() for k in range(n)]
    jobs = plan_auto(todo, "/r", 1000, 1 << 30, lstat=lstat)
    got = sorted((j.dir, j.owner, len(j.paths)) for j in jobs)
    assert got == sorted([
        (deep, 1, 2),               # not in a/p with x_out's: an entry would be too deep
        ("/r/a/m", 1, 4),           # its own device: the group stops at a/m
        ("/r/a/p", 1, 6),
        ("/r/a/q/y2_out/F", 1, 2),  # q is 0777: no pack in it, none above its runs
        ("/r/a/q/y_out/F", 1, 2),
        ("/r/b", 2, 4),             # owner 2's own dir, never /r (root's)
    ]), got


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="plays root against users: needs root and setpriv")
def test_a_pack_planted_in_a_shared_dir_cannot_make_root_write_into_another_users_dir(
        tmp_path: Path) -> None:
    """In a world-writable dir (1777) user A plants a spanning pack whose entry names a
    session below user B's dir there. Root's extract --tree must not create anything in
    B's dir (it would be A's files in B's tree): the walk requires every dir on the way
    to be the pack owner's."""
    import tempfile

    from .test_security_races import OTHER, USER, as_user

    base = Path(tempfile.mkdtemp(prefix="auto-plant-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        root = base / "runs"
        shared = root / "shared"
        shared.mkdir(parents=True)
        os.chmod(shared, 0o1777)
        # B's dir in the shared one, with an (empty) FINISHED_SUCCESS dir of B's.
        as_user(f"os.makedirs({str(shared / 'bob' / 'x_out' / 'FINISHED_SUCCESS')!r})",
                uid=OTHER)
        # A's pack of one of A's sessions, naming it below bob/ (what A can write).
        sid = _sid(1, 1)
        d = make_session(base / "src", sid)
        planted = shared / "evil.pack.tar.zst"
        _write_span_pack(planted, d, f"bob/x_out/FINISHED_SUCCESS/{sid}")
        os.chown(planted, USER, USER)
        r = run_cli("extract", str(root), "--tree", "--execute")
        assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
        assert os.listdir(shared / "bob" / "x_out" / "FINISHED_SUCCESS") == []
        r = run_cli("unpack", str(planted), "-s", sid[:-len("-main")])
        assert r.returncode == 1 and b"another user" in r.stderr, r.stderr
        assert os.listdir(shared / "bob" / "x_out" / "FINISHED_SUCCESS") == []
        from archive_tool.mount.view import View

        v = View(root)  # nor does the mount show A's session in B's dir
        try:
            assert v.listdir("/shared/bob/x_out/FINISHED_SUCCESS") == []
            assert [n for n, _m in v.listdir("/shared")] == ["bob"]  # the pack itself hidden
        finally:
            v.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _write_span_pack(pack: Path, session: Path, entry: str) -> None:
    from archive_tool.engine import commit
    from archive_tool.engine.scan import scan_session
    from archive_tool.engine.tarwrite import write_tar

    fd = os.open(session, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts: list[bytes] = []
        write_tar(fd, str(session), entry, scan_session(str(session)), parts.append)
    finally:
        os.close(fd)
    dfd = os.open(pack.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tmp = commit.open_tmp(dfd, str(pack), 0o644)
        w = packfile.PackWriter(tmp)
        w.add(entry, b"".join(parts)[:-1024])
        w.finish()
        commit.publish(tmp)
        tmp.close()
    finally:
        os.close(dfd)
