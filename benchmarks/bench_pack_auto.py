"""What a bigger pack costs, to choose ``--pack auto``'s default targets (issue 26).

Three measurements, written to benchmarks/results/pack_auto.json:

- sweep: ``sweep --pack auto -j 2`` of the demo tree (926 finished sessions) with
  ``--pack-sessions`` 100 / 250 / 500 / 1000: packs written and wall time (one worker per
  pack, so few packs can leave a core idle);
- read: one session out of a pack of N sessions (open: seek table + index; then one
  frame), N = 250 / 1,000 / 4,000 / 10,000 (real demo frames cycled under new names);
- rewrite: ``repack --drop`` of one session from a pack of B bytes (what ``prune`` of one
  session costs: every other frame copied, the new pack verified whole), B = 8 / 32 / 128
  MiB of incompressible sessions.

Usage: python benchmarks/bench_pack_auto.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from archive_tool.engine import commit  # noqa: E402
from archive_tool.engine.scan import scan_session  # noqa: E402
from archive_tool.engine.tarwrite import write_tar  # noqa: E402
from archive_tool.pack import packfile  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(HERE.parent)}


def cli(*args: str) -> float:
    t = time.monotonic()
    subprocess.run([PY, "-m", "archive_tool", *args], check=True, env=ENV,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def bench_sweep(work: Path, reps: int) -> list[dict]:
    src = work / "demo"
    cli("demo-tree", str(src))
    out = []
    for target in (100, 250, 500, 1000):
        walls = []
        packs = 0
        for _ in range(reps):
            t = work / "t"
            shutil.rmtree(t, ignore_errors=True)
            subprocess.run(["cp", "-a", str(src), str(t)], check=True)
            os.sync()
            walls.append(cli("sweep", str(t), "--pack", "auto", "--pack-sessions", str(target),
                             "--execute", "-q", "-j", "2"))
            packs = len(list(t.rglob("*" + packfile.PACK_SUFFIX)))
        out.append({"pack_sessions": target, "packs": packs, "wall_s": walls,
                    "median_s": statistics.median(walls)})
        print("sweep", out[-1], flush=True)
    return out


def _frames(work: Path) -> list[bytes]:
    """Real demo sessions as tar members (no end blocks), for synthetic packs."""
    src = work / "demo"
    frames = []
    for d in sorted(src.rglob("*-main"))[:200]:
        if not d.is_dir():
            continue
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            parts: list[bytes] = []
            write_tar(fd, str(d), "X", scan_session(str(d)), parts.append)
        finally:
            os.close(fd)
        frames.append(b"".join(parts)[:-1024])
    return frames


def _write_pack(path: Path, sessions: list[tuple[str, bytes]]) -> None:
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tmp = commit.open_tmp(dfd, str(path), 0o644)
        w = packfile.PackWriter(tmp)
        for name, tar in sessions:
            w.add(name, tar)
        w.finish()
        commit.publish(tmp)
        tmp.close()
    finally:
        os.close(dfd)


def _rename(tar: bytes, name: str) -> bytes:
    """The frame with its top dir "X" renamed (headers rewritten by tarfile)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar + b"\0" * 1024)) as tf, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as w:
        for m in tf:
            data = tf.extractfile(m) if m.isfile() else None
            m.name = name + m.name[1:]
            w.addfile(m, data)
        end = w.offset  # members only: no end blocks, no record padding
    return out.getvalue()[:end]


def bench_read(work: Path) -> list[dict]:
    frames = _frames(work)
    out = []
    for n in (250, 1000, 4000, 10000):
        d = work / f"read{n}"
        d.mkdir()
        names = [f"proj/s{k % 7}_out/FINISHED_SUCCESS/2026Y-01M-01D-00h00m00s_{k:05d}-main"
                 for k in range(n)]
        sessions = []
        for k, name in enumerate(names):
            sessions.append((name, _rename(frames[k % len(frames)], name)))
        p = d / "x.pack.tar.zst"
        _write_pack(p, sessions)
        times = []
        for k in range(0, n, max(1, n // 50)):
            t = time.perf_counter()
            with packfile.Pack(p) as pk:
                fd = pk.session_fd(f"2026Y-01M-01D-00h00m00s_{k:05d}")
                os.close(fd)
            times.append((time.perf_counter() - t) * 1000)
        out.append({"sessions": n, "bytes": p.stat().st_size,
                    "read_ms_median": round(statistics.median(times), 2),
                    "read_ms_p95": round(sorted(times)[int(len(times) * 0.95)], 2)})
        print("read", out[-1], flush=True)
    return out


def bench_rewrite(work: Path, reps: int) -> list[dict]:
    out = []
    for mib in (8, 32, 128):
        walls = []
        for _ in range(reps):
            root = work / f"rw{mib}"
            shutil.rmtree(root, ignore_errors=True)
            d = root / "a_out" / "FINISHED_SUCCESS"
            d.mkdir(parents=True)
            per = 128 * 1024
            sessions = []
            import io
            import tarfile
            for k in range(mib * 1024 * 1024 // per):
                name = f"2026Y-01M-01D-00h{k // 60 % 60:02d}m{k % 60:02d}s_{k:05d}-main"
                b = io.BytesIO()
                with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as tf:
                    ti = tarfile.TarInfo(name)
                    ti.type = tarfile.DIRTYPE
                    ti.mode = 0o755
                    tf.addfile(ti)
                    blob = os.urandom(per)
                    ti = tarfile.TarInfo(f"{name}/w.bin")
                    ti.size = len(blob)
                    tf.addfile(ti, io.BytesIO(blob))
                    end = tf.offset
                sessions.append((name, b.getvalue()[:end]))
            _write_pack(d / "p.pack.tar.zst", sessions)
            os.sync()
            walls.append(cli("repack", str(root), "--drop", sessions[0][0], "--execute", "-q"))
        out.append({"pack_mib": mib, "wall_s": walls, "median_s": statistics.median(walls),
                    "mib_per_s": round(mib / statistics.median(walls), 1)})
        print("rewrite", out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "pack_auto.json"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pack-auto-", dir="/var/tmp"))
    try:
        res = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "load_start": os.getloadavg()[0], "sweep": bench_sweep(work, a.reps),
               "read": bench_read(work), "rewrite": bench_rewrite(work, a.reps),
               "load_end": os.getloadavg()[0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
