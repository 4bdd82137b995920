"""``--scheduler`` / ``executor=DaskExecutor(...)``: the same sweep on a Dask cluster.

One real ``LocalCluster`` (2 worker processes, loopback only) for the module. The promise:
the tree a Dask sweep leaves is the tree the local pool leaves; failures come back in the
Summary; progress arrives per completed batch; without the extra, one clear error.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from archive_tool.demo import make_tree
from archive_tool.engine.read import list_members, verify_archive
from archive_tool.names import split_archive_name
from archive_tool.sweep.executors import DaskExecutor, DaskUnavailable
from archive_tool.sweep.sessions import process_batch, sweep

from .conftest import run_cli

# One LocalCluster for the module, on one xdist worker as in a serial run. Under xdist,
# distributed's http-server retry loop (distributed/node.py, `listen` in a `while True`)
# drops the socket of a failed listen without closing it; its ResourceWarning surfaces in
# whichever test collects it. Not our socket: ignored for this module only.
pytestmark = [
    pytest.mark.xdist_group("dask"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as c:
        yield c


@pytest.fixture
def dask_ex(cluster: object) -> Iterator[DaskExecutor]:
    ex = DaskExecutor(cluster.scheduler_address, timeout=20)  # type: ignore[attr-defined]
    yield ex
    ex.shutdown()


def tree_view(root: Path) -> dict[str, object]:
    """Every path below *root*; an archive is shown by its members (name, kind, size,
    mtime), so two sweeps compare equal when they archived the same content."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if name.startswith(".session-archive"):
                continue  # lock files
            if p.is_file() and split_archive_name(name):
                verify_archive(p)
                out[rel] = sorted((m.name, m.kind, m.size, m.mtime) for m in list_members(p))
            else:
                out[rel] = "d" if p.is_dir() else p.stat().st_size
    return out


def _twins(tmp_path: Path, n: int, seed: int) -> tuple[Path, Path]:
    a, b = tmp_path / "local", tmp_path / "dask"
    make_tree(str(a), n, seed=seed)
    shutil.copytree(a, b, symlinks=True)  # same mtimes: archives must hold the same members
    return a, b


@pytest.mark.dask
def test_dask_sweep_leaves_the_same_tree_as_the_local_pool(
        tmp_path: Path, dask_ex: DaskExecutor) -> None:
    local_root, dask_root = _twins(tmp_path, 300, seed=5)
    local = sweep(local_root, dry_run=False, workers=2)
    seen: list[tuple] = []
    remote = sweep(dask_root, dry_run=False, executor=dask_ex, batch_size=64,
                   on_result=seen.append)
    keys = ("scanned", "candidates", "archived", "skipped", "failed", "inodes_in")
    assert {k: remote[k] for k in keys} == {k: local[k] for k in keys}
    assert remote["failed"] == 0 and remote["archived"] > 250
    # Progress: one call per session, as each batch's future completes.
    assert len(seen) == remote["archived"]
    assert tree_view(dask_root) == tree_view(local_root)


@pytest.mark.dask
def test_dask_pack_sweep_writes_the_same_packs_as_the_local_pool(
        tmp_path: Path, dask_ex: DaskExecutor) -> None:
    from archive_tool.pack.packfile import Pack
    from archive_tool.sweep.packsweep import pack_sweep

    local_root, dask_root = _twins(tmp_path, 120, seed=7)
    local = pack_sweep(local_root, "weekly", dry_run=False, workers=2)
    remote = pack_sweep(dask_root, "weekly", dry_run=False, executor=dask_ex)
    keys = ("scanned", "candidates", "archived", "failed", "packs")
    assert {k: remote[k] for k in keys} == {k: local[k] for k in keys}
    assert remote["failed"] == 0 and remote["archived"] > 100

    def packs(root: Path) -> dict[str, list[str]]:
        out = {}
        for p in root.rglob("*.pack.tar.zst"):
            with Pack(p) as pk:
                out[str(p.relative_to(root))] = pk.names
        return out

    assert packs(dask_root) == packs(local_root) != {}


@pytest.mark.dask
def test_dask_failures_come_back_in_the_summary(tmp_path: Path, dask_ex: DaskExecutor) -> None:
    make_tree(str(tmp_path), 40, seed=2)
    sessions = sorted(tmp_path.glob("*/*_out/FINISHED_*/*"))
    bad = sessions[0]
    # An archive beside the source that does not hold it: the worker must keep both.
    (bad.parent / f"{bad.name}.tar.zst").write_bytes(b"not an archive")
    s = sweep(tmp_path, dry_run=False, executor=dask_ex)
    assert s["failed"] == 1 and s["archived"] == len(sessions) - 1
    assert s["failures"][0]["path"] == str(bad)
    assert "does not match" in s["failures"][0]["reason"]
    assert bad.is_dir()


@pytest.mark.dask
def test_dask_sweep_with_shards(tmp_path: Path, dask_ex: DaskExecutor) -> None:
    make_tree(str(tmp_path), 80, seed=4)
    want = sweep(tmp_path, dry_run=True)["candidates"]
    got = sum(sweep(tmp_path, dry_run=False, executor=dask_ex, shard=(k, 2))["archived"]
              for k in range(2))
    assert got == want
    assert not list(tmp_path.glob("*/*_out/FINISHED_*/*/"))


@pytest.mark.dask
def test_cli_scheduler_address_and_scheduler_file(tmp_path: Path, cluster: object) -> None:
    address = cluster.scheduler_address  # type: ignore[attr-defined]
    root = tmp_path / "runs"
    make_tree(str(root), 60, seed=9)
    want = json.loads(run_cli("sweep", root, "--json").stdout)["candidates"]

    r = run_cli("sweep", root, "--execute", "--json", "--shard", "0/2", "--scheduler", address)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["failed"] == 0 and first["shard"] == "0/2"

    sched_file = tmp_path / "scheduler.json"  # what `dask scheduler --scheduler-file` writes
    sched_file.write_text(json.dumps({"type": "Scheduler", "address": address}))
    r = run_cli("sweep", root, "--execute", "--json", "--shard", "1/2",
                "--scheduler", sched_file)
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert first["archived"] + second["archived"] == want


@pytest.mark.dask
def test_submit_returns_futures_the_sweep_can_wait_on(dask_ex: DaskExecutor) -> None:
    f = dask_ex.submit(process_batch, [], {"format": "tar.zst", "compresslevel": 1,
                                           "cutoff_ns": None})
    done, _ = cf.wait({f}, timeout=30, return_when=cf.FIRST_COMPLETED)
    assert isinstance(f, cf.Future) and done == {f} and f.result() == []


@pytest.mark.dask
def test_unreachable_scheduler_is_one_clear_error() -> None:
    pytest.importorskip("distributed")
    with pytest.raises(DaskUnavailable, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        DaskExecutor("tcp://127.0.0.1:9", timeout=0.5)


NO_DASK = (
    "import sys\n"
    "sys.modules['distributed'] = None  # as if the 'dask' extra were not installed\n"
    "from archive_tool.cli import main\n"
    "sys.argv[0] = 'session-archive'\n"
    "main()\n"
)


def test_missing_extra_is_one_error_naming_it(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 5, seed=1)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for args in (["--execute"], []):
        r = subprocess.run(
            [sys.executable, "-c", NO_DASK, "sweep", str(tmp_path), *args,
             "--scheduler", "tcp://127.0.0.1:8786"],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 2
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("Error: ") and "'dask' extra" in lines[0]
        assert "pip install 'scitex-session-tools[dask]'" in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_missing_extra_in_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(DaskUnavailable, match=r"\[dask\]"):
        DaskExecutor("tcp://127.0.0.1:8786")


def test_sweep_without_scheduler_never_imports_dask(tmp_path: Path) -> None:
    make_tree(str(tmp_path), 5, seed=1)
    r = subprocess.run([sys.executable, "-c", NO_DASK, "sweep", str(tmp_path), "--execute", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
