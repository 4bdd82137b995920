"""Peak memory of archiving and restoring ONE big session: a 1 GiB session (one 1 GiB file,
1/8 random and 7/8 zeros so it compresses like results data, plus a few small files)
packed and unpacked in a fresh process per format. The baseline, measured in the same
run, is the same process importing the engine and doing nothing: the engine's own
growth is peak minus baseline, and the target is that it stays flat (independent of the
session's size), far below the session's size.

    python benchmarks/bench_pack_rss.py [--gib 1] [--formats tar.zst,tar.gz]

Peak RSS is the child's VmHWM read in the child just before it exits: ``ru_maxrss`` of a
child carries the parent's high-water mark across fork+exec on Linux. Writes
benchmarks/results/pack-rss.json and pack-rss.png. Needs ~3x the session size free.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
SID = "2026Y-11M-23D-12h00m00s_BIGS-main"

_CHILD = (
    "import sys, time\n"
    "from archive_tool.engine.single import archive_one\n"
    "from archive_tool.engine.restore import restore_one\n"
    "op, path, fmt = sys.argv[1:4]\n"
    "t = time.perf_counter()\n"
    "if op == 'pack':\n"
    "    archive_one(path, fmt, remove_src=False)\n"
    "elif op == 'unpack':\n"
    "    restore_one(path, path + '.restored')\n"
    "dt = time.perf_counter() - t\n"
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
    "print(int(hwm), dt)\n"
)


def make_session(parent: str, size: int) -> str:
    src = os.path.join(parent, SID)
    os.makedirs(os.path.join(src, "logs"))
    with open(os.path.join(src, "logs", "stdout.log"), "w") as f:
        f.write("epoch loss\n" * 1000)
    chunk = os.urandom(1 << 20)
    zeros = bytes(1 << 20)
    with open(os.path.join(src, "weights.bin"), "wb") as f:
        for i in range(size >> 20):
            f.write(chunk if i % 8 == 0 else zeros)
    return src


def child(op: str, path: str, fmt: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, op, path, fmt],
                         capture_output=True, text=True, check=True)
    kib, secs = out.stdout.split()
    return int(kib) / 1024, float(secs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--formats", default="tar.zst,tar.gz")
    ap.add_argument("--dir", default=None, help="where to build the session (default: a temp dir)")
    a = ap.parse_args(argv)
    size = int(a.gib * (1 << 30))
    work = tempfile.mkdtemp(prefix="pack-rss-", dir=a.dir)
    free = shutil.disk_usage(work).free
    if free < 3 * size:
        size = max(64 << 20, (free // 4) & ~((1 << 20) - 1))
        print(f"only {free >> 20} MiB free: session scaled down to {size >> 20} MiB", file=sys.stderr)
    try:
        src = make_session(work, size)
        base_mib, _ = child("none", src, "tar.zst")
        runs = []
        for fmt in a.formats.split(","):
            pack_mib, pack_s = child("pack", src, fmt)
            archive = f"{src}.{fmt}"
            unpack_mib, unpack_s = child("unpack", archive, fmt)
            shutil.rmtree(archive + ".restored")
            runs.append({
                "format": fmt, "archive_bytes": os.path.getsize(archive),
                "pack_peak_mib": round(pack_mib, 1), "pack_s": round(pack_s, 2),
                "unpack_peak_mib": round(unpack_mib, 1), "unpack_s": round(unpack_s, 2),
                "pack_growth_mib": round(pack_mib - base_mib, 1),
                "unpack_growth_mib": round(unpack_mib - base_mib, 1),
            })
            os.unlink(archive)
            r = runs[-1]
            print(f"{fmt:8s} pack {r['pack_peak_mib']:6.1f} MiB peak ({r['pack_s']:.1f} s), "
                  f"unpack {r['unpack_peak_mib']:6.1f} MiB ({r['unpack_s']:.1f} s); baseline "
                  f"{base_mib:.1f} MiB; peak / session size = {pack_mib / (size >> 20):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "kernel": platform.release()},
        "argv": ["python", "benchmarks/bench_pack_rss.py", *(argv or sys.argv[1:])],
        "session_bytes": size, "baseline_import_mib": round(base_mib, 1), "runs": runs,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "pack-rss.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(RESULTS, "pack-rss.png"))
    return 0


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    labels, vals = ["import only"], [res["baseline_import_mib"]]
    for r in res["runs"]:
        labels += [f"pack {r['format']}", f"unpack {r['format']}"]
        vals += [r["pack_peak_mib"], r["unpack_peak_mib"]]
    ax.barh(labels, vals, color="#4c72b0")
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.0f} MiB", va="center", fontsize=8)
    ax.set_xlabel(f"peak RSS (MiB), session of {res['session_bytes'] / (1 << 30):.2f} GiB")
    ax.set_xlim(0, max(vals) * 1.3)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
