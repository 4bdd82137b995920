from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from archive_tool.sweep.discover import find_fd

# Tests sweep sessions they made a moment ago: the default 10-minute quiet period
# (archive_tool/guard/holds.py) would leave them all. Subprocesses inherit it; the tests of the
# quiet period itself (test_open_writers.py) unset it.
os.environ["SESSION_ARCHIVE_QUIET_PERIOD"] = "0"

SID = "2026Y-11M-23D-18h39m23s_KYwP"
FORMATS = ["tar.zst", "tar.gz", "tar.xz", "tar"]


def make_session(parent: Path, name: str = f"{SID}-main", *, extra: bool = True) -> Path:
    """A session dir with the awkward cases a real one can hold."""
    d = parent / name
    (d / "logs").mkdir(parents=True)
    (d / "CONFIGS").mkdir()
    (d / "logs" / "stdout.log").write_text("epoch 1\nepoch 2\n" * 50)
    (d / "logs" / "stderr.log").write_bytes(b"")
    (d / "CONFIGS" / "CONFIG.yaml").write_text("ID: x\nSEED: 42\n")
    if extra:
        (d / "empty_dir" / "nested" / "deeper").mkdir(parents=True)
        (d / "données_ünïcode.txt").write_text("accents\n")
        (d / "bin.dat").write_bytes(os.urandom(5000))
        os.symlink("logs/stdout.log", d / "latest.log")
        os.utime(d / "CONFIGS" / "CONFIG.yaml", (1_600_000_000, 1_600_000_000))
    return d


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below *root*: kind, content hash / link target, mode bits, mtime (s)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", st.st_mode & 0o777)
            elif not stat.S_ISREG(st.st_mode):  # FIFO, socket, device: never open them
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
            else:
                out[rel] = ("f", hashlib.sha256(p.read_bytes()).hexdigest(),
                            st.st_mode & 0o777, int(st.st_mtime))
    return out


def run_cli(*args: str, cwd: Path | None = None, input: bytes | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archive_tool", *map(str, args)],
        capture_output=True, cwd=cwd, input=input, env=env, timeout=120,
    )


@pytest.fixture
def session(tmp_path: Path) -> Path:
    return make_session(tmp_path / "FINISHED_SUCCESS")


HAS_FD = find_fd() is not None
BACKENDS = [
    pytest.param(True, id="fd", marks=pytest.mark.skipif(
        not HAS_FD, reason="fd not installed: ./scripts/test installs it when run as root")),
    pytest.param(False, id="scandir"),
]

needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar missing")
needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd binary missing")


def as_nobody(code: str) -> str:
    """Python source that imports the CLI first, then drops to nobody (65534) and runs
    *code*: as root nothing is unreadable, and nobody cannot read root's Python install."""
    return (
        "import os, sys, click, click._textwrap, tqdm, archive_tool.cli, archive_tool.engine.single, archive_tool.sweep.sessions,"
        " archive_tool.engine.restore, archive_tool.engine.read\n"
        "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n" + code
    )


@pytest.fixture
def world_dir():
    """A temp dir every user can traverse (pytest's own tmp root is 0700)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sa-world-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def crash_at(call: str) -> str:
    """Python source for a child that runs *call* (argv[1] = the root) and dies with
    os._exit(9) the argv[3]-th time it reaches the race point argv[2]: a crash at an exact
    step, for the crash tests of pack and repack. Exit 3 if it got through."""
    return f"""
import os, sys
from archive_tool import fs
point, k, n = sys.argv[2], int(sys.argv[3]), [0]
def hook(p, where):
    if p == point:
        n[0] += 1
        if n[0] == k:
            os._exit(9)
fs.race_hook = hook
{call}
sys.exit(3)
"""


@pytest.fixture
def mounts():
    """start(root, mnt, *args) -> a running `session-archive mount` (tests/test_mount.py's
    Mount), each stopped at the end of the test: the mount tests' one fixture."""
    from tests.test_mount import Mount  # the FUSE helper lives with the mount tests

    started: list[Mount] = []

    def start(root: Path, mnt: Path, *args: str) -> Mount:
        m = Mount(root, mnt, *args)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()
