"""`mount` lists archived sessions from the catalog's member lists (issue 25): `ls -R`
decodes no archive; the catalog is the tree owner's to forge, so a forged or stale list
changes what is listed at most, never a byte served nor a permission check; a catalog
written before the member lists still mounts (listed by decoding, as before)."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from archive_tool import demo
from archive_tool.catalog import listing
from archive_tool.catalog.catalog import catalog_path
from archive_tool.mount.session import Blob, index_session
from archive_tool.mount.view import View
from archive_tool.pack import packfile
from tests.conftest import as_nobody, make_session, run_cli
from tests.test_mount import _BINDING, SID, _find, _same_listing, _sha

fuse_only = pytest.mark.skipif(not os.path.exists("/dev/fuse") or _BINDING is not None,
                               reason=_BINDING or "/dev/fuse absent: no FUSE here")


def _sweep(*args: object) -> None:
    r = run_cli("sweep", *args, "--execute", "--quiet")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def catalogued(tmp_path_factory) -> tuple[Path, dict, dict, set[str]]:
    """A 40-session real-shape tree: project00 swept into packs, project01 per session
    with --catalog; its find/sha256 from before."""
    root = tmp_path_factory.mktemp("listing") / "root"
    demo.make_tree(str(root), 40, projects=2, shape="real")
    before, sha = _find(root), _sha(root)
    _sweep(root / "project00", "--pack", "daily")
    _sweep(root / "project01", "--catalog")
    changed = {"", "project00", "project01"} | {
        p for p, v in before.items() if v[0] == "d" and os.path.basename(p).startswith("FINISHED")}
    return root, before, sha, changed


def _listings(root: Path) -> dict[tuple[str, int], bytes]:
    """archive (relative to *root*), frame -> listing blob, from every catalog below
    *root* (each sweep root has its own)."""
    out = {}
    for db in root.rglob("catalog.sqlite"):
        base = db.parent.parent
        conn = sqlite3.connect(db)
        try:
            for a, f, d in conn.execute("SELECT s.archive, s.frame, l.data FROM sessions s "
                                        "JOIN listing l USING (sid)"):
                out[(str((base / a).relative_to(root)), f)] = d
        finally:
            conn.close()
    return out


def test_each_catalog_listing_is_what_decoding_the_archive_shows(catalogued, tmp_path) -> None:
    root = catalogued[0]
    rows = _listings(root)
    packs = sorted(root.rglob(f"*{packfile.PACK_SUFFIX}"))
    singles = [p for p in root.rglob("*.tar.zst") if p not in packs]
    assert packs and singles and len(rows) == 40 - sum(
        1 for p in root.rglob("*") if p.is_dir() and re.match(r"\d{4}Y-", p.name))
    for (arel, frame), blob in rows.items():
        path = root / arel
        if frame >= 0:
            with packfile.Pack(str(path)) as p:
                name, tar = p.names[frame], p.members(frame) + tarfile.NUL * 1024
        else:
            from archive_tool.engine.formats import decompress_bytes
            name = path.name[:-len(".tar.zst")]
            tar = decompress_bytes(path.read_bytes(), "tar.zst", 1 << 30)
        real = index_session(name, Blob(data=tar), str(path))
        got = listing.parse(blob)
        assert got is not None
        assert {k: tuple(v) for k, v in got.items()} == {
            k: (*e[:5], e.link) for k, e in real.entries.items()}, arel
    # `catalog --rebuild` makes the same lists from the archives alone.
    for sub in ("project00", "project01"):
        r = run_cli("catalog", root / sub, "--rebuild")
        assert r.returncode == 0, r.stderr
    assert _listings(root) == rows


def test_listing_the_whole_view_decodes_no_archive(catalogued) -> None:
    root = catalogued[0]
    v = View(root)
    try:
        seen = 0

        def walk(path: str) -> None:
            nonlocal seen
            for name, mode, _attrs in v.listdir_plus(path):
                sub = f"{path.rstrip('/')}/{name}"
                v.resolve(sub)
                seen += 1
                if mode & 0o170000 == 0o040000:
                    walk(sub)

        walk("/")
        assert seen > 300 and v.decodes == 0
        csv = next(p for p in catalogued[2] if p.endswith("results.csv")
                   and p.startswith("project00/"))
        node = v.resolve("/" + csv)
        assert node.tree.blob is None  # listed from the catalog: no bytes
        real = v.verified(node.tree)
        assert v.decodes == 1 and real.blob is not None
    finally:
        v.close()


@fuse_only
@pytest.mark.skipif(__import__("shutil").which("strace") is None,
                    reason="strace missing: the test counts the mount's opens with it")
def test_ls_R_of_a_mount_opens_no_archive_and_shows_the_tree(catalogued, mounts, tmp_path) -> None:
    root, before, sha, changed = catalogued
    mnt = tmp_path / "mnt"
    m = mounts(root, mnt)
    trace = tmp_path / "strace.out"
    st = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=openat,open", "-o", str(trace),
                           "-p", str(m.proc.pid)])
    try:
        # strace is attached once it reports the first syscall; give it a moment.
        for _ in range(50):
            os.listdir(mnt)
            if trace.exists() and trace.read_text():
                break
            subprocess.run(["sleep", "0.1"])
        out = subprocess.run(["ls", "-R", str(mnt)], capture_output=True, check=True).stdout
    finally:
        st.terminate()
        st.wait(10)
    opened = re.findall(r'"([^"]+)"', trace.read_text())
    singles = [o for o in opened if o.endswith((".tar.zst", ".tar.gz"))
               and not o.endswith(packfile.PACK_SUFFIX)]
    packs = [o for o in opened if o.endswith(packfile.PACK_SUFFIX)]
    assert singles == []  # per-session archives: listed from the catalog alone
    # A pack is opened once, for its index (the names in its tail): a frame decoded
    # would open it again.
    assert len(packs) <= len(list(root.rglob(f"*{packfile.PACK_SUFFIX}")))
    assert out.count(b"results.csv") == sum(1 for p in sha if p.endswith("results.csv"))
    assert _same_listing(before, _find(mnt), changed) == []
    assert _sha(mnt) == sha  # and reading goes to the archives


def _forge(root: Path, session: str, change) -> None:
    conn = sqlite3.connect(catalog_path(root))
    try:
        sid, blob = conn.execute("SELECT s.sid, l.data FROM sessions s JOIN listing l USING "
                                 "(sid) WHERE s.name=?", (session,)).fetchone()
        members = listing.parse(blob)
        change(members)
        with conn:
            conn.execute("UPDATE listing SET data=? WHERE sid=?", (listing.encode(members), sid))
    finally:
        conn.close()


@fuse_only
def test_a_forged_listing_never_serves_bytes_or_opens_a_private_file(world_dir, mounts) -> None:
    root = world_dir / "root"
    parent = root / "train_out" / "FINISHED_SUCCESS"
    d = make_session(parent, f"{SID}_F001-main", extra=False)
    (d / "secret.txt").write_text("alice only\n")
    (d / "secret.txt").chmod(0o600)
    for p in (d, *d.rglob("*")):
        os.lchown(p, 1000, 1000)  # alice
    _sweep(root, "--pack", "daily")
    assert not d.exists()
    log_rel = (d / "logs" / "stdout.log").relative_to(root)

    def forge(members: dict) -> None:
        s = members["secret.txt"]
        members["secret.txt"] = s._replace(mode=(s.mode & ~0o777) | 0o644)  # opened up
        members["planted.txt"] = s._replace(size=4)  # not in the archive at all
        members["logs/stdout.log"] = members["logs/stdout.log"]._replace(size=7)

    _forge(root, d.name, forge)
    mnt = world_dir / "mnt"
    m = mounts(root, mnt, "--allow-other")
    msess = mnt / d.relative_to(root)
    assert (msess / "secret.txt").stat().st_mode & 0o777 == 0o644  # the listing is the catalog's
    code = as_nobody(
        f"try:\n    print(open({str(msess / 'secret.txt')!r}).read(), end=''); print('LEAK')\n"
        "except OSError as e:\n    print('refused', e.errno)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout == f"refused {errno.EIO}\n", r.stderr  # the listing proved false
    # The kernel may still hold the false mode for a second; the mount checks the
    # archive's own (0600, alice's) itself before it serves a byte: refused, never read.
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout == f"refused {errno.EACCES}\n", r.stderr
    # From then on the session is listed from the archive: the true modes, the planted
    # name gone, and the bytes are the archive's.
    subprocess.run(["sleep", "1.2"])  # past the kernel's 1 s attribute/entry timeouts
    assert not (msess / "planted.txt").exists()
    assert sorted(os.listdir(msess)) == ["CONFIGS", "logs", "secret.txt"]
    assert (msess / "secret.txt").stat().st_mode & 0o777 == 0o600
    assert (mnt / log_rel).read_text() == "epoch 1\nepoch 2\n" * 50
    assert "does not match the archive" in m.log.read_text()
    assert m.proc.poll() is None


def test_a_forged_listing_of_another_archive_is_not_used(tmp_path) -> None:
    """A row names the archive it lists: a list moved onto another session's row (or a
    row left from an older archive of that name) does not match what is on disk."""
    root = tmp_path / "root"
    parent = root / "x_out" / "FINISHED_SUCCESS"
    a = make_session(parent, f"{SID}_AAAA-main")
    b = make_session(parent, f"{SID}_BBBB-main", extra=False)
    _sweep(root, "--pack", "daily")
    conn = sqlite3.connect(catalog_path(root))
    with conn:
        (blob_a,) = conn.execute("SELECT l.data FROM sessions s JOIN listing l USING (sid) "
                                 "WHERE s.name=?", (a.name,)).fetchone()
        conn.execute("UPDATE listing SET data=? WHERE sid=(SELECT sid FROM sessions WHERE "
                     "name=?)", (blob_a, b.name))
        conn.execute("UPDATE sessions SET bytes_out=bytes_out+1 WHERE name=?", (a.name,))
    conn.close()
    v = View(root)
    try:
        tb = v.resolve(f"/x_out/FINISHED_SUCCESS/{b.name}").tree
        assert tb.blob is None and "bin.dat" in tb.children[""]  # listed: the catalog's word
        with pytest.raises(OSError) as e:
            v.verified(tb)
        assert e.value.errno == errno.EIO
        tb = v.resolve(f"/x_out/FINISHED_SUCCESS/{b.name}").tree  # now from the archive
        assert tb.blob is not None and "bin.dat" not in tb.children[""]
        ta = v.resolve(f"/x_out/FINISHED_SUCCESS/{a.name}").tree
        assert ta.blob is not None  # its row no longer matches its frame: decoded
    finally:
        v.close()


@pytest.mark.parametrize("blob", [
    b"not zlib", listing.encode({}), b"x\x9c" + b"\0" * 10,
    __import__("zlib").compress(b'[["../x", 33188, 1, 0, 0, 0, ""]]'),
    __import__("zlib").compress(b'[["a", 8592, 1, 0, 0, 0, ""]]'),  # a FIFO
    __import__("zlib").compress(b'[["a", 33188, -1, 0, 0, 0, ""]]'),
    __import__("zlib").compress(b'[["a", 33188, 1, 0, 0, 0, "x"]]'),  # a file with a target
    __import__("zlib").compress(b'[["a", 33188, 1, 0, 0, 0, ""], ["a", 33188, 1, 0, 0, 0, ""]]'),
    __import__("zlib").compress(b'{"a": 1}'),
    __import__("zlib").compress(b"[" * 100000),
])
def test_a_listing_that_is_not_one_we_write_is_refused(blob) -> None:
    assert listing.parse(blob) is None


def test_the_walker_leaves_what_it_does_not_vouch_for_to_the_decoder(tmp_path) -> None:
    import io

    def tar(*members: tuple[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        return buf.getvalue()

    top = f"{SID}_W001-main"
    assert listing.members_of(tar((f"{top}/a", b"x")), top) is not None
    assert listing.members_of(tar((f"{top}/../evil", b"x")), top) is None
    assert listing.members_of(tar(("other/a", b"x")), top) is None
    assert listing.members_of(tar((f"{top}/a", b"x"), (f"{top}/a", b"y")), top) is None
    long = f"{top}/" + "d" * 150
    assert listing.members_of(tar((long, b"x"), fmt=tarfile.GNU_FORMAT), top) is None
    assert list(listing.members_of(tar((long, b"x")), top)) == ["d" * 150]  # PAX path: ours
    bad = bytearray(tar((f"{top}/a", b"x")))
    bad[0] ^= 1  # the header's checksum no longer holds
    assert listing.members_of(bytes(bad), top) is None


@fuse_only
def test_a_catalog_from_before_the_member_lists_still_mounts(tmp_path, mounts) -> None:
    root = tmp_path / "root"
    parent = root / "x_out" / "FINISHED_SUCCESS"
    names = [make_session(parent, f"{SID}_OLD{i}-main").name for i in range(3)]
    before = _sha(root)
    _sweep(root, "--pack", "daily")
    conn = sqlite3.connect(catalog_path(root))
    conn.execute("DROP TABLE listing")  # the schema as it was before issue 25
    conn.close()
    r = run_cli("find", root, "--json")  # readers accept the older schema
    assert r.returncode == 0, r.stderr
    assert sorted(x["name"] for x in __import__("json").loads(r.stdout)) == names
    m = mounts(root, tmp_path / "mnt")
    assert _sha(tmp_path / "mnt") == before
    assert "without member lists" in m.log.read_text()
    # A writer adds the table to that catalog; a rebuild fills it.
    r = run_cli("catalog", root, "--rebuild")
    assert r.returncode == 0, r.stderr
    assert len(_listings(root)) == 3


def test_the_mount_checks_the_archived_owner_and_mode_along_the_whole_path() -> None:
    import stat as st

    from archive_tool.mount.fusefs import permitted
    from archive_tool.mount.session import Entry, build_tree

    def e(kind: int, mode: int, uid: int = 1000, gid: int = 1000) -> Entry:
        return Entry(kind | mode, 0, 0, uid, gid, -1, "")

    tree = build_tree("s", None, {
        "": e(st.S_IFDIR, 0o755), "priv": e(st.S_IFDIR, 0o700),
        "priv/a": e(st.S_IFREG, 0o644), "grp": e(st.S_IFDIR, 0o750, gid=2000),
        "grp/b": e(st.S_IFREG, 0o640, gid=2000), "c": e(st.S_IFREG, 0o604)}, 0)
    gone = 1 << 30  # no such process: only the primary group counts
    assert permitted(tree, "priv/a", 4, 1000, 1000, gone)  # the owner
    assert not permitted(tree, "priv/a", 4, 65534, 65534, gone)  # a 0700 dir on the way
    assert not permitted(tree, "priv/a", 0, 65534, 65534, gone)
    assert permitted(tree, "grp/b", 4, 65534, 2000, gone)  # the group's bits
    assert not permitted(tree, "grp/b", 4, 65534, 65534, gone)
    assert permitted(tree, "c", 4, 65534, 65534, gone)  # other's read bit
    assert permitted(tree, "priv/a", 4, 0, 0, gone)  # root


@pytest.mark.parametrize("text", ["1733350000", "1733350000.123456789", "1733350000.5",
                                  "-1.25", "+7.", ".000000001", " 12.0000000019 ", "0"])
def test_pax_time_is_read_exactly_as_decimal_reads_it(text: str) -> None:
    from decimal import Decimal

    from archive_tool.engine.tarwrite import pax_time_ns

    assert pax_time_ns(text) == int(Decimal(text) * 1_000_000_000)


@pytest.mark.parametrize("text", ["inf", "nan", "1e3", "", "-", "1.2.3", "0x10", "1_0"])
def test_a_pax_time_that_is_no_plain_decimal_is_refused(text: str) -> None:
    from archive_tool.engine.tarwrite import pax_time_ns

    with pytest.raises(ValueError):
        pax_time_ns(text)


def test_a_forged_infinite_mtime_lists_as_zero_in_the_catalog_and_the_mount_alike() -> None:
    import tarfile

    from archive_tool.catalog.listing import Collector
    from archive_tool.engine.tarwrite import member_mtime_ns

    m = tarfile.TarInfo("S-main/a")
    m.pax_headers = {"mtime": "inf"}
    m.mtime = float("inf")  # what tarfile makes of such a record
    assert member_mtime_ns(m) == 0
    c = Collector("S-main")
    top = tarfile.TarInfo("S-main")
    top.type = tarfile.DIRTYPE
    c.add(top)
    c.add(m)  # no OverflowError: the streamed path's member list takes it
