"""A root sweep/restore over a tree an unprivileged user owns: each attack of issue 11,
played by a real throw-away uid (setpriv) at the exact instant it needs.

The engine calls ``fs.race_point(name, path)`` between a look and the act it guards; the
tests install a hook there that runs the attacker's commands as the user, so the race is
deterministic instead of a matter of luck. Each test checks the attack fails with nothing
outside the user's tree touched (a root-only directory stands for /etc or another user's
home) and no session lost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archive_tool import fs
from archive_tool.engine.restore import restore_one
from archive_tool.engine.single import archive_one
from archive_tool.errors import ArchiveError, BadRoot
from archive_tool.sweep.sessions import sweep
from tests.conftest import SID, make_session, run_cli, snapshot

USER = 4242  # a uid with no account: nothing on the machine belongs to it
OTHER = 4343

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="plays root against a user: needs root and setpriv")


def as_user(code: str, uid: int = USER) -> None:
    """Run Python *code* as *uid* (no groups): what the user can do, and nothing more."""
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                    sys.executable, "-c", "import os\n" + code], check=True, timeout=60)


def chown_tree(path: Path, uid: int = USER) -> None:
    os.chown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, uid, follow_symlinks=False)


class Tree:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "runs"  # what root sweeps: owned by root, the user's dir below
        self.fin = self.root / "alice" / "proj_out" / "FINISHED_SUCCESS"
        self.session = make_session(self.fin, f"{SID}-main")
        chown_tree(self.root / "alice")
        self.secret = base / "rootonly"  # stands for /etc, /root, another user's home
        self.secret.mkdir(mode=0o700)
        (self.secret / "shadow").write_text("root:$6$secret\n")
        (self.secret / "sub").mkdir()
        (self.secret / "sub" / "keep.txt").write_text("must survive\n")
        self.secret_before = snapshot(self.secret)

    def secret_untouched(self) -> bool:
        return snapshot(self.secret) == self.secret_before


@pytest.fixture
def tree() -> Iterator[Tree]:
    # Under /tmp (1777), not pytest's root-only tmp dir: the user must reach its own tree.
    base = Path(tempfile.mkdtemp(prefix="race-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield Tree(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def hook() -> Iterator[Callable[[str, Callable[[str], None]], None]]:
    fired: list[str] = []

    def install(point: str, attack: Callable[[str], None]) -> None:
        def race_hook(p: str, where: str) -> None:
            if p == point and not fired:
                fired.append(where)
                attack(where)
        fs.race_hook = race_hook

    try:
        yield install
    finally:
        fs.race_hook = None
    assert fired, "the attack never ran: the race point moved"


def _sweep(t: Tree) -> dict:
    return sweep(t.root, dry_run=False, workers=1, use_fd=False, format="tar.zst")


def test_session_swapped_for_a_symlink_before_the_scan_is_not_followed(tree: Tree, hook) -> None:
    s = tree.session
    hook("lock", lambda _w: as_user(f"os.rename({str(s)!r}, {str(s) + '.moved'!r})\n"
                                    f"os.symlink({str(tree.secret)!r}, {str(s)!r})"))
    summary = _sweep(tree)
    assert summary["archived"] == 0 and summary["failed"] == 1, summary
    assert "not a directory" in summary["failures"][0]["reason"]
    assert tree.secret_untouched()
    assert not list(tree.fin.glob("*.tar*"))  # no archive of the root-only dir
    assert Path(str(s) + ".moved").is_dir()


def test_subdir_swapped_for_a_symlink_during_the_delete_is_not_followed(tree: Tree, hook) -> None:
    def attack(where: str) -> None:
        trash = tree.fin / f".{tree.session.name}.deleting"
        as_user(f"os.rename({str(trash / 'logs')!r}, {str(trash / 'logs.x')!r})\n"
                f"os.symlink({str(tree.secret / 'sub')!r}, {str(trash / 'logs')!r})")

    hook("delete", attack)
    summary = _sweep(tree)
    assert summary["archived"] == 0 and summary["failed"] == 1, summary
    assert tree.secret_untouched()
    # The archive was committed before the delete: the run is safe in it.
    assert (tree.fin / f"{tree.session.name}.tar.zst").is_file()
    # A later sweep removes the leftover trash, link and all, without following the link.
    again = _sweep(tree)
    assert again["failed"] == 0 and again["cleaned"] == 1, again
    assert tree.secret_untouched()
    assert not list(tree.fin.glob(".*"))


def test_finished_dir_swapped_for_a_symlink_before_publish_links_nothing_outside(
    tree: Tree, hook
) -> None:
    real = Path(str(tree.fin) + ".real")
    hook("publish", lambda _w: as_user(f"os.rename({str(tree.fin)!r}, {str(real)!r})\n"
                                       f"os.symlink({str(tree.secret)!r}, {str(tree.fin)!r})"))
    _sweep(tree)
    assert tree.secret_untouched()
    # The archive went into the directory the sweep had opened, wherever the user moved it.
    assert (real / f"{tree.session.name}.tar.zst").is_file()


@pytest.mark.parametrize("point", ["restore-extract", "restore-rename"])
def test_restore_temp_dir_swapped_for_a_symlink_writes_nothing_outside(
    tree: Tree, hook, point: str
) -> None:
    archive = archive_one(tree.session, "tar.zst")
    os.chown(archive, USER, USER)

    def attack(tmp: str) -> None:
        as_user(f"os.rename({tmp!r}, {tmp + '.stolen'!r})\n"
                f"os.symlink({str(tree.secret)!r}, {tmp!r})")

    hook(point, attack)
    with pytest.raises(ArchiveError, match="replaced by another process"):
        restore_one(archive, remove_archive=True)
    assert tree.secret_untouched()
    assert archive.is_file()  # never removed after a restore that did not land
    assert not tree.session.exists()


def test_lock_file_planted_as_a_symlink_is_refused_untouched(tree: Tree) -> None:
    user_root = tree.root / "alice"
    as_user(f"os.symlink({str(tree.secret / 'shadow')!r}, "
            f"{str(user_root / '.session-archive.lock')!r})")
    with pytest.raises(BadRoot, match="symlink"):
        sweep(user_root, dry_run=False, workers=1, use_fd=False)
    r = run_cli("sweep", user_root, "--execute", "--workers", "1")
    assert r.returncode == 2 and r.stderr.decode().startswith("Error: "), r.stderr
    assert b"Traceback" not in r.stderr
    assert tree.secret_untouched()
    assert tree.session.is_dir()


def test_lock_file_created_by_root_does_not_lock_out_the_owner(tree: Tree) -> None:
    user_root = tree.root / "alice"
    assert _sweep_of(user_root)["archived"] == 1
    lock = user_root / ".session-archive.lock"
    assert lock.stat().st_uid == USER  # handed to the tree's owner
    make_session(tree.fin, f"{SID[:-4]}ABCD-main")
    chown_tree(user_root)
    code = ("from archive_tool.sweep.sessions import sweep\n"
            f"s = sweep({str(user_root)!r}, dry_run=False, workers=1, use_fd=False)\n"
            "assert s['archived'] == 1, s")
    as_user(f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n" + code)


def _sweep_of(root: Path) -> dict:
    return sweep(root, dry_run=False, workers=1, use_fd=False)


def test_file_of_another_user_is_not_handed_to_the_session_owner(tree: Tree) -> None:
    private = tree.session / "logs" / "other.key"
    private.write_text("another user's secret\n")
    os.chown(private, OTHER, OTHER)
    os.chmod(private, 0o600)
    summary = _sweep(tree)
    assert summary["archived"] == 0 and summary["failed"] == 1, summary
    assert f"owned by uid {OTHER}" in summary["failures"][0]["reason"]
    assert private.is_file() and not list(tree.fin.glob("*.tar*"))


def test_file_of_another_group_gives_the_archive_no_group_read(tree: Tree) -> None:
    shared = tree.session / "logs" / "group.log"
    shared.write_text("readable by group 4343 only\n")
    os.chown(shared, USER, OTHER)
    os.chmod(shared, 0o640)
    for p in tree.session.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, 0o750 if p.is_dir() else 0o640)
    summary = _sweep(tree)
    assert summary["archived"] == 1, summary
    archive = tree.fin / f"{tree.session.name}.tar.zst"
    st = archive.stat()
    assert (st.st_uid, st.st_gid) == (USER, USER)
    assert st.st_mode & 0o077 == 0, oct(st.st_mode)


def test_state_dir_planted_as_a_symlink_gets_no_file_outside(tree: Tree) -> None:
    user_root = tree.root / "alice"
    as_user(f"os.symlink({str(tree.secret)!r}, {str(user_root / '.session-archive')!r})")
    summary = sweep_logged_as_root(user_root)
    assert summary["archived"] == 1, summary  # the sweep itself goes on
    assert "manifest" in summary.get("manifest_error", ""), summary
    assert tree.secret_untouched()


def sweep_logged_as_root(root: Path) -> dict:
    from archive_tool.sweep.runlog import sweep_logged

    return sweep_logged(str(root), workers=1, use_fd=False)


def test_catalog_planted_as_a_symlink_is_never_written_through(tree: Tree) -> None:
    from archive_tool.catalog import catalog, rebuild

    user_root = tree.root / "alice"
    state = user_root / ".session-archive"
    as_user(f"os.mkdir({str(state)!r})\n"
            f"os.symlink({str(tree.secret / 'shadow')!r}, {str(state / 'catalog.sqlite')!r})")
    with pytest.raises(OSError):
        catalog.connect(user_root)
    rebuild.rebuild(user_root)  # builds a new file and renames it over the link itself
    assert tree.secret_untouched()
    assert not (state / "catalog.sqlite").is_symlink()
