"""What users install is what we test (issue 22).

The rest of the suite runs against the source tree (an editable install), which once hid a
wheel without ``archive_tool.cli``: every ``pip install .`` got a dead command. These tests
build the sdist and the wheel the way a release would (``python -m build``: the wheel is
built from the sdist, so a file the sdist forgets fails here too), install the wheel into a
fresh venv outside the repository, and run the commands from a directory where the source
tree is not importable. ``pipx install`` and the README's cron block run the same way, with
cron's bare environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("archive_tool", "scitex_session")

pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("install")]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus anything that would make the source tree or the test
    venv importable from the installed one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def source_packages() -> set[str]:
    """Every package directory of the source tree, as a wheel path (``a/b``)."""
    out = set()
    for top in PACKAGES:
        for d, dirs, files in os.walk(REPO / top):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            if "__init__.py" in files:
                out.add(Path(d).relative_to(REPO).as_posix())
    return out


def wheel_packages(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return {n.rsplit("/", 1)[0] for n in z.namelist() if n.endswith("/__init__.py")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist + wheel from ``python -m build`` of a copy of the tracked files (what a fresh
    clone holds: nothing untracked, no build/ or egg-info left by another run)."""
    base = tmp_path_factory.mktemp("dist")
    src = base / "src"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if not (REPO / rel).exists():  # deleted in the work tree, not yet committed
            continue
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((REPO / rel).read_bytes())
    out = base / "out"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=base,
         env=_clean_env())
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the repository with the built wheel installed, as `pip install`
    gives a user."""
    v = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", str(v)], cwd=v.parent)
    whl = next(dist.glob("*.whl"))
    _run([str(v / "bin" / "python"), "-m", "pip", "install", "-q",
          "--disable-pip-version-check", str(whl)], cwd=v.parent, env=_clean_env())
    return v


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory from which the source tree is not importable."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def test_sdist_and_wheel_pass_the_metadata_check(dist: Path) -> None:
    kinds = sorted(p.name.rsplit(".", 1)[-1] for p in dist.iterdir())
    assert kinds == ["gz", "whl"], kinds
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
         cwd=dist, env=_clean_env())


def test_wheel_carries_every_package_of_the_source_tree(dist: Path) -> None:
    whl = next(dist.glob("*.whl"))
    missing = source_packages() - wheel_packages(whl)
    assert not missing, f"the wheel lacks {sorted(missing)}"
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
    for top in PACKAGES:
        assert f"{top}/py.typed" in names


def test_install_check_names_a_dropped_subpackage(tmp_path: Path) -> None:
    # The check above must fail when a package is left out of a build; shown on a wheel
    # rewritten without archive_tool/cli, the module the 0.1.0 wheel lacked.
    whl = tmp_path / "x-0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for pkg in sorted(source_packages()):
            if pkg != "archive_tool/cli":
                z.writestr(f"{pkg}/__init__.py", "")
    assert source_packages() - wheel_packages(whl) == {"archive_tool/cli"}


def test_installed_command_runs_every_subcommand_and_a_round_trip(
        venv: Path, elsewhere: Path) -> None:
    bin_ = venv / "bin"
    env = _clean_env()
    # The source tree must not be what answers: archive_tool comes from the venv.
    where = _run([str(bin_ / "python"), "-c",
                  "import archive_tool, scitex_session; print(archive_tool.__file__); "
                  "print(scitex_session.__file__)"], cwd=elsewhere, env=env).stdout.split()
    assert all(str(venv) in w and str(REPO) not in w for w in where), where

    cmd = str(bin_ / "session-archive")
    assert _run([cmd, "--version"], cwd=elsewhere, env=env).stdout.startswith(
        "session-archive, version ")
    names = _run([str(bin_ / "python"), "-c",
                  "from archive_tool.cli import cli; print(' '.join(sorted(cli.commands)))"],
                 cwd=elsewhere, env=env).stdout.split()
    assert {"sweep", "extract", "verify", "demo-tree"} <= set(names)
    for name in names:
        out = _run([cmd, name, "--help"], cwd=elsewhere, env=env).stdout
        assert out.startswith("Usage: session-archive " + name), (name, out[:200])
    assert "Usage: session-archive [OPTIONS] COMMAND" in _run(
        [str(bin_ / "python"), "-m", "archive_tool", "--help"], cwd=elsewhere, env=env).stdout

    tree = elsewhere / "tree"
    _run([cmd, "demo-tree", str(tree), "-n", "30"], cwd=elsewhere, env=env)
    def finished() -> list[str]:
        return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")
                      if "/FINISHED" in p.relative_to(tree).as_posix())

    before = finished()
    _run([cmd, "sweep", str(tree), "--execute", "-q"], cwd=elsewhere, env=env)
    archives = sorted(tree.rglob("*.tar.zst"))
    assert archives
    _run([cmd, "verify", *map(str, archives)], cwd=elsewhere, env=env)
    _run([cmd, "extract", "--tree", str(tree), "--execute", "--remove-archive", "-q"],
         cwd=elsewhere, env=env)
    assert finished() == before


def test_installed_decorated_script_archives_its_run(venv: Path, elsewhere: Path) -> None:
    script = elsewhere / "exp.py"
    script.write_text(textwrap.dedent("""\
        from scitex_session import session

        @session(archive_format="tar.zst")
        def main(n: int = 3):
            print("value", n)
            return 0

        if __name__ == "__main__":
            main()
        """))
    _run([str(venv / "bin" / "python"), str(script), "--n", "5"], cwd=elsewhere,
         env=_clean_env())
    out = elsewhere / "exp_out" / "FINISHED_SUCCESS"
    (archive,) = out.iterdir()
    assert archive.name.endswith("-main.tar.zst")
    listing = _run(["tar", "--zstd", "-tvf", str(archive)], cwd=elsewhere).stdout
    assert "CONFIGS/CONFIG.yaml" in listing and "logs/stdout.log" in listing


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_installed_command_offers_shell_completion(venv: Path, elsewhere: Path,
                                                   shell: str) -> None:
    cmd = str(venv / "bin" / "session-archive")
    script = _run([cmd], cwd=elsewhere,
                  env=_clean_env(_SESSION_ARCHIVE_COMPLETE=f"{shell}_source")).stdout
    assert "_SESSION_ARCHIVE_COMPLETE" in script
    if shell == "bash":
        r = _run([cmd], cwd=elsewhere, env=_clean_env(
            _SESSION_ARCHIVE_COMPLETE="bash_complete", COMP_WORDS="session-archive sw",
            COMP_CWORD="1"))
        assert "plain,sweep" in r.stdout.splitlines()


def _readme_cron_block() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"### Cron recipe.*?```cron\n(.*?)```", text, re.S)
    assert m, "README has no cron block"
    return m.group(1).splitlines()


def test_readme_cron_lines_run_in_crons_bare_environment(
        dist: Path, tmp_path: Path) -> None:
    """Install with pipx as the README says (into temp PIPX_HOME/PIPX_BIN_DIR instead of
    /opt and /usr/local/bin), then run every job line of the README's cron block under
    `env -i` with only the variables the block sets, as cron does."""
    home = tmp_path / "home"
    home.mkdir()
    bindir = tmp_path / "bin"
    readme_bin = "/usr/local/bin"
    pipx_env = _clean_env(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(bindir),
                          PIPX_MAN_DIR=str(tmp_path / "man"), HOME=str(home))
    # From the source dir, as the README's `pipx install .` does (a fresh-clone copy).
    _run([sys.executable, "-m", "pipx", "install", str(dist.parent / "src")],
         cwd=tmp_path, env=pipx_env)
    assert (bindir / "session-archive").exists()

    lines = _readme_cron_block()
    env_vars = dict(ln.split("=", 1) for ln in lines
                    if re.match(r"^[A-Z_]+=", ln) and not ln.startswith("MAILTO"))
    assert env_vars.get("PATH"), "the cron block must set PATH"
    jobs = [ln for ln in lines if ln.strip() and not ln.startswith("#")
            and not re.match(r"^[A-Z_]+=", ln)]
    assert jobs
    runs = tmp_path / "data" / "runs"
    _run([str(bindir / "session-archive"), "demo-tree", str(runs), "-n", "20"],
         cwd=tmp_path, env=pipx_env)
    for job in jobs:
        fields = job.split(None, 6)
        assert fields[5] == "root", job  # /etc/cron.d lines carry a user field
        command = fields[6]
        assert command.startswith(readme_bin + "/session-archive "), (
            f"cron line must name the command by the absolute path the install step "
            f"creates: {job}")
        command = command.replace(readme_bin + "/session-archive",
                                  str(bindir / "session-archive"))
        command = command.replace("/data/runs", str(runs))
        bare = ["env", "-i", f"HOME={home}", "SHELL=/bin/sh",
                *(f"{k}={v}" for k, v in env_vars.items())]
        r = subprocess.run([*bare, "/bin/sh", "-c", command], cwd=home,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (job, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
