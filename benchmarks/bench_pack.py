"""Packs (issue 14) against the per-session layout, in the same run on copies of one tree.

    python benchmarks/bench_pack.py [--sessions 3000] [--reps 2] [--workers 2]

One deterministic tree (archive_tool.demo, 1 project x 2 scripts: 4 FINISHED_* dirs, runs
spread over --days days), copied fresh (``cp -a`` + sync) before every sweep. Interleaved
repetitions: per-session sweep, then ``--pack weekly``, then ``--pack N`` (N = all of a dir
in one pack), each on its own copy. Measured: sweep wall time and sessions/s; inodes
left under the root (every dir and file, the catalog included); bytes of archives/packs;
reading one member of one session from a pack (library call and CLI process); ``find``
on the catalog, and on a synthetic catalog of 100k rows (the real rows replicated).
Writes benchmarks/results/pack.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
WORK = os.environ.get("BENCH_WORK", os.path.join(HERE, "work"))

from archive_tool import demo  # noqa: E402
from archive_tool.catalog import catalog, rebuild  # noqa: E402
from archive_tool.engine.extract import copy_member  # noqa: E402
from archive_tool.pack import packfile  # noqa: E402
from archive_tool.sweep.packsweep import pack_sweep  # noqa: E402
from archive_tool.sweep.sessions import sweep  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def inodes(root: str) -> int:
    n = 0
    for _d, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n


def archive_bytes(root: str) -> int:
    total = 0
    for d, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith((".tar.zst", ".tar.gz")):
                total += os.path.getsize(os.path.join(d, f))
    return total


def fresh(src: str, dst: str) -> None:
    subprocess.run(["rm", "-rf", dst], check=True)
    subprocess.run(["cp", "-a", src, dst], check=True)
    os.sync()


def run_one(kind: str, root: str, workers: int) -> dict:
    before = inodes(root)
    t = time.perf_counter()
    if kind == "per-session":
        s = sweep(root, dry_run=False, format="tar.zst", workers=workers, track_bytes=True)
    else:
        s = pack_sweep(root, kind.split(":")[1], dry_run=False, workers=workers)
    el = time.perf_counter() - t
    assert s["failed"] == 0, s["failures"][:3]
    holders = sum(1 for d, _, fs in os.walk(root) for f in fs
                  if f.endswith((".tar.zst", ".tar.gz")))
    return {"kind": kind, "elapsed": round(el, 3), "archived": s["archived"],
            "files_holding_sessions": holders,
            "rate": round(s["archived"] / el, 1), "inodes_before": before,
            "inodes_after": inodes(root), "bytes_in": s["bytes_in"],
            "archive_bytes": archive_bytes(root), "packs": s.get("packs")}


def show_latency(root: str, samples: int = 200) -> dict:
    packs = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
             if packfile.is_pack_name(f)]
    biggest = max(packs, key=lambda p: len(packfile.Pack(p).names))
    with packfile.Pack(biggest) as p:
        names = list(p.names)
    rng = random.Random(0)
    lib = []
    for name in rng.sample(names, min(samples, len(names))):
        t = time.perf_counter()
        fd = packfile.session_fd(biggest, name)
        copy_member(f"{biggest}::{name}", "CONFIGS/CONFIG.yaml", io.BytesIO(), fd=fd)
        lib.append((time.perf_counter() - t) * 1000)
    cli = []
    for name in rng.sample(names, 10):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "archive_tool", "show", biggest, "-s", name,
                        "CONFIGS/CONFIG.yaml"], check=True, capture_output=True)
        cli.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import archive_tool.cli"], check=True)
    startup = (time.perf_counter() - t) * 1000
    return {"pack_sessions": len(names), "pack_bytes": os.path.getsize(biggest),
            "lib_ms_median": round(statistics.median(lib), 3),
            "lib_ms_p95": round(sorted(lib)[int(0.95 * len(lib)) - 1], 3),
            "cli_ms_median": round(statistics.median(cli), 1),
            "python_import_cli_ms": round(startup, 1)}


def synthetic_pack(root: str, n: int = 10_000) -> str:
    """A pack of *n* sessions made of the real frames of *root*'s packs, cycled: the seek
    table and index of a 10k-session pack, real session bytes and names."""
    from archive_tool import fs
    from archive_tool.engine import commit

    frames = []
    for d, _, files in os.walk(root):
        for f in files:
            if packfile.is_pack_name(f):
                with packfile.Pack(os.path.join(d, f)) as p:
                    frames += [(n, p.members(i)) for i, n in enumerate(p.names)]
    out_dir = os.path.join(WORK, "pack-10k")
    subprocess.run(["rm", "-rf", out_dir], check=True)
    os.makedirs(out_dir)
    final = os.path.join(out_dir, "synthetic.pack.tar.zst")
    dfd = fs.open_trusted_dir(out_dir)
    tmp = commit.open_tmp(dfd, final, 0o644)
    w = packfile.PackWriter(tmp)
    for i in range(n):
        w.add(*frames[i % len(frames)])  # real names: a name occurs up to n/len times
    w.finish()
    commit.publish(tmp)
    tmp.close()
    os.close(dfd)
    return final


def show_latency_10k(pack: str, samples: int = 200) -> dict:
    with packfile.Pack(pack) as p:
        names = list(p.names)
    rng = random.Random(1)
    lib = []
    for name in rng.sample(names, samples):
        t = time.perf_counter()
        fd = packfile.session_fd(pack, name)
        copy_member(f"{pack}::{name}", "CONFIGS/CONFIG.yaml", io.BytesIO(), fd=fd)
        lib.append((time.perf_counter() - t) * 1000)
    cli = []
    for name in rng.sample(names, 10):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "archive_tool", "show", pack, "-s", name,
                        "CONFIGS/CONFIG.yaml"], check=True, capture_output=True)
        cli.append((time.perf_counter() - t) * 1000)
    # `show ROOT -s ID MEMBER`: the catalog locates the frame, one pread reads it.
    root = os.path.dirname(pack)
    rebuild.rebuild(root)
    by_id = []
    for name in rng.sample(names, samples):
        t = time.perf_counter()
        r = catalog.locate(root, name.split("-main")[0])  # by ID
        fd = packfile.session_fd_at(r["path"], r["name"], r["offset"], r["bytes_out"],
                                    r["tar_bytes"])
        copy_member(f"{r['path']}::{name}", "CONFIGS/CONFIG.yaml", io.BytesIO(), fd=fd)
        by_id.append((time.perf_counter() - t) * 1000)
    return {"pack_sessions": len(names), "pack_bytes": os.path.getsize(pack),
            "lib_ms_median": round(statistics.median(lib), 3),
            "lib_ms_p95": round(sorted(lib)[int(0.95 * len(lib)) - 1], 3),
            "cli_ms_median": round(statistics.median(cli), 1),
            "by_id_via_catalog_ms_median": round(statistics.median(by_id), 3),
            "by_id_via_catalog_ms_p95": round(sorted(by_id)[int(0.95 * len(by_id)) - 1], 3)}


def find_latency(root: str, synthetic: int = 100_000) -> dict:
    def timed(r: str) -> tuple[float, int]:
        best = []
        for _ in range(5):
            t = time.perf_counter()
            rows = catalog.find(r, ["SEED<100"], state="FINISHED_SUCCESS", since="2026-01-01",
                                config=False)
            best.append((time.perf_counter() - t) * 1000)
        return statistics.median(best), len(rows)

    real_ms, real_rows = timed(root)
    real_n = len(catalog.all_rows(root))
    # A catalog of *synthetic* rows: the real ones replicated under other archive names.
    big = os.path.join(WORK, "pack-synthetic")
    os.makedirs(os.path.join(big, ".session-archive"), exist_ok=True)
    path = catalog.catalog_path(big)
    if os.path.exists(path):
        os.unlink(path)
    base = catalog.all_rows(root)
    conn = catalog.connect(big)
    k = 0
    while k < synthetic:
        batch = []
        for r in base:
            if k >= synthetic:
                break
            r2 = dict(r, archive=f"{r['archive']}#{k}")
            batch.append(r2)
            k += 1
        catalog.add_rows(conn, batch)
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    syn_ms, syn_rows = timed(big)
    with sqlite3.connect(path) as c:
        n = c.execute("SELECT count(*) FROM sessions").fetchone()[0]
    return {"catalog_rows": real_n, "find_ms": round(real_ms, 2), "find_rows": real_rows,
            "synthetic_rows": n, "synthetic_find_ms": round(syn_ms, 2),
            "synthetic_find_rows": syn_rows,
            "catalog_bytes_synthetic": os.path.getsize(path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--days", type=float, default=21.0)
    ap.add_argument("--read-only", action="store_true",
                    help="Keep the sweep runs of results/pack.json; redo the read side on "
                         "the tree the last run left.")
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    base = os.path.join(WORK, f"pack-base-{a.sessions}")
    if not os.path.isdir(base):
        log(f"generating {a.sessions} sessions")
        demo.make_tree(base, a.sessions, projects=1, scripts_per_project=2,
                       max_age_days=a.days)
    kinds = ["per-session", "pack:weekly", "pack:10000"]
    runs = []
    work = os.path.join(WORK, "pack-run")
    if a.read_only:
        with open(os.path.join(HERE, "results", "pack.json")) as f:
            old = json.load(f)
        runs = old["runs"]
        a.reps, a.sessions, a.workers = max(r["rep"] for r in runs), old["sessions"], \
            old["workers"]
    for rep in range(0 if a.read_only else a.reps):
        for kind in kinds:
            fresh(base, work)
            log(f"rep {rep + 1}: {kind}")
            r = run_one(kind, work, a.workers)
            r["rep"] = rep + 1
            runs.append(r)
            log(json.dumps(r))
    # The tree of the last pack run stays for the read-side measurements.
    show = show_latency(work)
    log(json.dumps(show))
    show10k = show_latency_10k(synthetic_pack(work))
    log(json.dumps(show10k))
    find = find_latency(work)
    log(json.dumps(find))
    ratios = []
    for rep in range(1, a.reps + 1):
        by = {r["kind"]: r for r in runs if r["rep"] == rep}
        ps = by["per-session"]
        for k in kinds[1:]:
            ratios.append({"rep": rep, "kind": k,
                           "throughput_ratio": round(by[k]["rate"] / ps["rate"], 3),
                           "size_ratio": round(by[k]["archive_bytes"] / ps["archive_bytes"], 4),
                           "inodes_after": by[k]["inodes_after"],
                           "inodes_after_per_session": ps["inodes_after"],
                           "files": by[k]["files_holding_sessions"],
                           "files_per_session": ps["files_holding_sessions"]})
    out = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                       "kernel": platform.release()},
           "sessions": a.sessions, "workers": a.workers, "runs": runs, "ratios": ratios,
           "show": show, "show_10k": show10k, "find": find}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "pack.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({"ratios": ratios, "show": show, "show_10k": show10k, "find": find},
                     indent=1))


if __name__ == "__main__":
    main()
