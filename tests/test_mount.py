"""`session-archive mount` (issue 25): a real FUSE mount of a swept tree shows it as it was
before the sweep; read-only, permissions enforced, hostile archives refused alone, sweeps
while mounted noticed, clean unmount and takeover after a kill."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from decimal import Decimal
from pathlib import Path

import pytest

from archive_tool import demo
from archive_tool.pack import packfile
from tests.conftest import as_nobody, make_session, run_cli

try:
    import mfusepy  # noqa: F401 - only whether the extra and libfuse load
    _BINDING = None
except (ImportError, OSError) as e:
    _BINDING = f"the mount extra (mfusepy + libfuse3) does not load: {e}"

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse absent: no FUSE here"),
    pytest.mark.skipif(shutil.which("fusermount3") is None,
                       reason="fusermount3 missing: ./scripts/test installs fuse3 as root"),
    pytest.mark.skipif(_BINDING is not None, reason=_BINDING or ""),
]

SID = "2026Y-11M-23D-18h39m23s"


class Mount:
    """A `session-archive mount --foreground` child; stop() always unmounts."""

    def __init__(self, root: Path, mnt: Path, *args: str) -> None:
        self.root, self.mnt = root, mnt
        mnt.mkdir(exist_ok=True)
        self.log = mnt.parent / f"{mnt.name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archive_tool", "mount", str(root), str(mnt),
             "--foreground", "--log", str(self.log), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt) or _stale(mnt):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("mount did not come up in 20 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if os.path.ismount(self.mnt) or _stale(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        self.proc.stdout.close()
        self.proc.stderr.close()


def _stale(p: Path) -> bool:
    try:
        os.listdir(p)  # a stat may come from the kernel's attribute cache
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def _find(root: Path) -> dict[str, tuple[str, int, str, Decimal]]:
    out = subprocess.run(["find", str(root), "-mindepth", "1", "-printf", "%P\\0%y %s %m %T@\\0"],
                         capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    fields = out.split("\0")[:-1]
    res = {}
    for path, rest in zip(fields[::2], fields[1::2], strict=True):
        typ, size, mode, mtime = rest.split(" ")
        res[path] = (typ, int(size), mode, Decimal(mtime))
    return res


def _sha(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _same_listing(before: dict, mounted: dict, changed_dirs: set[str]) -> list[str]:
    """Differences between two _find() results. Directory sizes are the filesystem's own
    (not archived); the dirs a sweep writes into (FINISHED_*, sweep roots) have new mtimes.
    An mtime matches exactly, or as the archive stores it: whole seconds (tar's ustar
    field) when the mount shows no fraction."""
    diffs = []
    for path in sorted(before.keys() | mounted.keys()):
        a, b = before.get(path), mounted.get(path)
        if a is None or b is None:
            diffs.append(f"{path}: {'only on the mount' if a is None else 'missing on the mount'}")
            continue
        (ta, sa, ma, tma), (tb, sb, mb, tmb) = a, b
        if (ta, ma) != (tb, mb) or (ta != "d" and sa != sb):
            diffs.append(f"{path}: {a} != {b}")
        elif not (ta == "d" and path in changed_dirs):
            if tmb != tma and not (tmb == int(tmb) and tmb == int(tma)):
                diffs.append(f"{path}: mtime {tma} != {tmb}")
    return diffs


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, dict, dict, set[str]]:
    """A 50-session demo tree swept three ways: project00 into daily packs, project01's
    script1 into per-session tar.gz, the rest into per-session tar.zst. Returns the root
    and its find/sha256 from before the sweep."""
    base = tmp_path_factory.mktemp("mount")
    root = base / "root"
    demo.make_tree(str(root), 50, projects=2)
    before, sha = _find(root), _sha(root)
    for args in (["project00", "--pack", "daily"], ["project01/script1_out", "--format", "tar.gz"],
                 ["."]):
        r = run_cli("sweep", root / args[0], "--execute", "--quiet", *args[1:])
        assert r.returncode == 0, r.stderr
    changed = {"", "project00", "project01/script1_out"} | {
        p for p, v in before.items() if v[0] == "d" and os.path.basename(p).startswith("FINISHED")}
    return root, before, sha, changed


def test_mount_shows_the_swept_tree_as_it_was_before_the_sweep(swept, mounts, tmp_path) -> None:
    root, before, sha, changed = swept
    names = [p.name for p in root.rglob("*") if p.is_file()]
    # The sweep did what the comparison assumes: packs and both kinds of per-session archive.
    assert any(n.endswith(packfile.PACK_SUFFIX) for n in names)
    assert any(n.endswith(".tar.gz") for n in names)
    assert any(n.endswith(".tar.zst") and ".pack." not in n for n in names)
    assert _same_listing(before, _find(root), changed)  # the swept tree itself differs

    mnt = tmp_path / "mnt"
    mounts(root, mnt)
    assert _same_listing(before, _find(mnt), changed) == []
    assert _sha(mnt) == sha


def test_a_cache_smaller_than_one_session_still_serves_every_byte(swept, mounts, tmp_path) -> None:
    root, before, sha, changed = swept
    mnt = tmp_path / "mnt"
    mounts(root, mnt, "--cache-size", "1K")  # every session evicted as the next is decoded
    assert _sha(mnt) == sha
    assert _same_listing(before, _find(mnt), changed) == []


def test_an_analysis_script_reads_results_csv_by_its_original_path(swept, mounts, tmp_path) -> None:
    root, before, sha, _ = swept
    csvs = sorted(p for p in sha if p.endswith("/results.csv") and "FINISHED_SUCCESS" in p)
    packed = next(p for p in csvs if p.startswith("project00/"))
    single = next(p for p in csvs if p.startswith("project01/"))
    assert not (root / packed).exists() and not (root / single).exists()  # archived
    mnt = tmp_path / "mnt"
    mounts(root, mnt)
    script = ("import csv, sys\n"
              "rows = list(csv.DictReader(open(sys.argv[1])))\n"
              "print(len(rows), round(sum(float(r['value']) for r in rows), 6))\n")
    for rel in (packed, single):
        r = subprocess.run([sys.executable, "-c", script, str(mnt / rel)],
                           capture_output=True, text=True, check=True)
        n, total = r.stdout.split()
        want = (mnt / rel).read_text().splitlines()[1:]
        assert int(n) == len(want) > 0
        assert hashlib.sha256((mnt / rel).read_bytes()).hexdigest() == sha[rel]


def test_the_mount_is_read_only(swept, mounts, tmp_path) -> None:
    root, _before, sha, _ = swept
    mnt = tmp_path / "mnt"
    mounts(root, mnt)
    archived = mnt / next(p for p in sha if p.startswith("project00/") and "FINISHED" in p)
    live = mnt / "project00" / "README.md"
    for target in (archived, live):
        with pytest.raises(OSError) as e:
            open(target, "r+b")
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:
            target.unlink()
        assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        (archived.parent / "new").mkdir()
    assert e.value.errno == errno.EROFS


def test_allow_other_enforces_each_archived_owner_and_mode(world_dir, mounts) -> None:
    root = world_dir / "root"
    parent = root / "train_out" / "FINISHED_SUCCESS"
    d = make_session(parent, f"{SID}_A001-main", extra=False)
    secret, public = d / "secret.txt", d / "public.txt"
    secret.write_text("alice only\n")
    public.write_text("for everyone\n")
    secret.chmod(0o600)
    for p in (d, *d.rglob("*")):
        os.lchown(p, 1000, 1000)  # alice
    r = run_cli("sweep", root, "--execute", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not d.exists()
    mnt = world_dir / "mnt"
    mounts(root, mnt, "--allow-other")
    m_secret = mnt / secret.relative_to(root)
    st = m_secret.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o600)
    assert m_secret.read_text() == "alice only\n"  # root: the kernel lets it
    code = as_nobody(
        f"print(open({str(mnt / public.relative_to(root))!r}).read(), end='')\n"
        f"try:\n    open({str(m_secret)!r}).read(); print('LEAK')\n"
        "except PermissionError:\n    print('denied')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout == "for everyone\ndenied\n", r.stderr


def _hostile_tar_gz(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_a_gnu_tar_archive_with_a_hard_link_reads_as_its_dir(tmp_path) -> None:
    from archive_tool.mount.view import View

    parent = tmp_path / "root" / "x_out" / "FINISHED"
    d = make_session(parent, f"{SID}_GNU1-main")
    os.link(d / "bin.dat", d / "bin-again.dat")
    before = _sha(d)
    subprocess.run(["tar", "-czf", f"{d.name}.tar.gz", d.name], cwd=parent, check=True)
    shutil.rmtree(d)
    v = View(tmp_path / "root")
    try:
        rel = f"/x_out/FINISHED/{d.name}"
        got = {}
        for path in before:
            node = v.resolve(f"{rel}/{path}")
            got[path] = hashlib.sha256(node.tree.blob.pread(node.entry.size, node.entry.offset)
                                       ).hexdigest()
        assert got == before
        assert [n for n, _m in v.listdir("/x_out/FINISHED")] == [d.name]  # the .tar.gz hidden
    finally:
        v.close()
    v = View(parent)  # ROOT may be the FINISHED dir itself
    try:
        assert [n for n, _m in v.listdir("/")] == [d.name]
    finally:
        v.close()


def test_a_big_archive_is_decoded_into_a_temp_file_and_reads_back(tmp_path) -> None:
    from archive_tool.engine.read import WHOLE_ARCHIVE_MAX
    from archive_tool.mount.view import View

    root = tmp_path / "root"
    d = make_session(root / "x_out" / "FINISHED_SUCCESS", f"{SID}_BIG1-main", extra=False)
    (d / "weights.bin").write_bytes(os.urandom(WHOLE_ARCHIVE_MAX + (1 << 20)))  # incompressible
    before = _sha(d)
    r = run_cli("sweep", root, "--execute", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (d.parent / f"{d.name}.tar.zst").stat().st_size > WHOLE_ARCHIVE_MAX
    v = View(root, tmp_dir=str(tmp_path))
    try:
        rel = f"/x_out/FINISHED_SUCCESS/{d.name}"
        got = {}
        for path in before:
            node = v.resolve(f"{rel}/{path}")
            got[path] = hashlib.sha256(node.tree.blob.pread(node.entry.size, node.entry.offset)
                                       ).hexdigest()
        assert node.tree.blob.file is not None  # streamed to a temp file, not kept in memory
        assert got == before
    finally:
        v.close()


def test_hostile_archives_are_refused_one_session_at_a_time(tmp_path, mounts) -> None:
    root = tmp_path / "root"
    parent = root / "train_out" / "FINISHED_SUCCESS"
    good = make_session(parent, f"{SID}_GOOD-main", extra=False)
    r = run_cli("sweep", root, "--execute", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not good.exists()
    escape = f"{SID}_ESC1-main"
    _hostile_tar_gz(parent / f"{escape}.tar.gz",
                    [(f"{escape}/ok.txt", b"x"), (f"{escape}/../../../etc/evil", b"y")])
    other = f"{SID}_OTH1-main"
    _hostile_tar_gz(parent / f"{other}.tar.gz", [(f"{SID}_GOOD-main/logs/stdout.log", b"fake")])
    junk = f"{SID}_JUNK-main"
    (parent / f"{junk}.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(200))
    (parent / "2026-11-23.pack.tar.zst").write_bytes(os.urandom(300))  # not a pack at all
    empty = f"{SID}_EMPT-main"
    _hostile_tar_gz(parent / f"{empty}.tar.gz", [])  # a valid tar with no member at all

    mnt = tmp_path / "mnt"
    m = mounts(root, mnt)
    mparent = mnt / parent.relative_to(root)
    assert sorted(os.listdir(mparent)) == sorted([good.name, escape, other, junk, empty])
    for bad in (escape, other, junk, empty):
        with pytest.raises(OSError) as e:
            os.listdir(mparent / bad)
        assert e.value.errno == errno.EIO
    # The good session, next to them, reads as it was; the mount is still up.
    assert (mparent / good.name / "logs" / "stdout.log").read_text() == "epoch 1\nepoch 2\n" * 50
    assert m.proc.poll() is None
    log = m.log.read_text()
    for bad in (escape, other, junk, empty):
        assert f"{bad}.tar" in log and "refused" in log
    assert "pack refused" in log


def test_a_sweep_while_mounted_shows_within_seconds_and_open_files_keep_reading(
        tmp_path, mounts) -> None:
    root = tmp_path / "root"
    parent = root / "train_out" / "FINISHED_SUCCESS"
    names = [f"{SID}_W{i:03d}-main" for i in range(4)]
    for n in names:
        make_session(parent, n)
    before = _sha(root)
    mnt = tmp_path / "mnt"
    mounts(root, mnt)
    mparent = mnt / parent.relative_to(root)
    log = mparent / names[0] / "logs" / "stdout.log"
    f = open(log, "rb")
    head = f.read(100)

    def settle(check) -> float:
        t0 = time.monotonic()
        while True:
            try:
                if check():
                    return time.monotonic() - t0
            except OSError:
                pass
            assert time.monotonic() - t0 < 5, "the mount did not show the change within 5 s"
            time.sleep(0.1)

    r = run_cli("sweep", root, "--execute", "--quiet", "--pack", "daily")
    assert r.returncode == 0, r.stderr
    assert not (parent / names[0]).exists()
    assert head + f.read() == (("epoch 1\nepoch 2\n" * 50).encode())  # open across the sweep
    f.close()
    settle(lambda: _sha(mnt) == before)
    assert os.readlink(mparent / names[0] / "latest.log") == "logs/stdout.log"
    assert (mparent / names[0] / "latest.log").read_text() == "epoch 1\nepoch 2\n" * 50

    # Restore one session, then repack (drops the restored one: a new pack, the old one
    # unlinked) while a file of another session is open from the old pack.
    f = open(mparent / names[2] / "bin.dat", "rb")
    head = f.read(10)
    r = run_cli("unpack", parent / "2026-11-23.pack.tar.zst", "-s", names[1])
    assert r.returncode == 0, r.stderr
    r = run_cli("repack", root, "--execute", "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in parent.glob("*.pack.tar.zst")) == ["2026-11-23.2.pack.tar.zst"]
    assert hashlib.sha256(head + f.read()).hexdigest() == \
        before[f"train_out/FINISHED_SUCCESS/{names[2]}/bin.dat"]
    f.close()
    settle(lambda: _sha(mnt) == before)
    assert (parent / names[1]).is_dir()
    (parent / names[1] / "logs" / "stdout.log").write_text("changed after restore\n")
    settle(lambda: (mparent / names[1] / "logs" / "stdout.log").read_text()
           == "changed after restore\n")
    # Everything removed (as a prune would): the mount follows the files on disk.
    shutil.rmtree(parent / names[1])
    for p in parent.iterdir():
        p.unlink()
    settle(lambda: os.listdir(mparent) == [])


@pytest.mark.parametrize("how", ["fusermount3 -u", "SIGTERM"])
def test_unmount_is_clean(tmp_path, mounts, how) -> None:
    root = tmp_path / "root"
    make_session(root / "a_out" / "FINISHED_SUCCESS")
    mnt = tmp_path / "mnt"
    m = mounts(root, mnt)
    if how == "SIGTERM":
        m.proc.send_signal(signal.SIGTERM)
    else:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    assert m.proc.wait(10) == 0
    assert not os.path.ismount(mnt) and not _stale(mnt)


def test_a_killed_mount_is_taken_over_by_the_next(tmp_path, mounts) -> None:
    root = tmp_path / "root"
    d = make_session(root / "a_out" / "FINISHED_SUCCESS")
    r = run_cli("sweep", root, "--execute", "--quiet")
    assert r.returncode == 0, r.stderr
    mnt = tmp_path / "mnt"
    m = mounts(root, mnt)
    m.proc.kill()
    m.proc.wait()
    assert _stale(mnt)  # what a killed FUSE process leaves: ENOTCONN
    m2 = mounts(root, mnt)
    got = mnt / d.relative_to(root) / "CONFIGS" / "CONFIG.yaml"
    assert got.exists(), (os.listdir(mnt), m2.log.read_text() if m2.log.exists() else "")
    assert got.read_text() == "ID: x\nSEED: 42\n"


def test_without_foreground_the_mount_detaches_and_serves(tmp_path) -> None:
    root = tmp_path / "root"
    d = make_session(root / "a_out" / "FINISHED_SUCCESS")
    run_cli("sweep", root, "--execute", "--quiet")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run_cli("mount", root, mnt, "--log", tmp_path / "log")
    try:
        assert r.returncode == 0, r.stderr
        assert (mnt / d.relative_to(root) / "CONFIGS" / "CONFIG.yaml").read_text() == \
            "ID: x\nSEED: 42\n"
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    assert not os.path.ismount(mnt)


def test_a_mount_point_inside_root_is_refused(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    r = run_cli("mount", root, root / "mnt", "--foreground")
    assert r.returncode == 2
    assert b"may not be inside ROOT" in r.stderr and not os.path.ismount(root / "mnt")


def test_without_the_mount_extra_a_one_line_error(tmp_path) -> None:
    code = ("import sys; sys.modules['mfusepy'] = None\n"
            "from archive_tool.cli import main\n"
            f"sys.argv = ['session-archive', 'mount', {str(tmp_path)!r}, {str(tmp_path)!r}]\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "Error: mount needs the 'mount' extra: pip install 'scitex-session-tools[mount]' "
        "(and the fuse3 package)"]
