"""Where our sweep's time goes beyond the floor: the same workers=1 sweep with the safety
steps the floor does not have switched off one at a time, beside one GNU tar stream.

    python benchmarks/bench_gap.py [--n 2000] [--reps 3] [--corpus real]

The floor (``tar --remove-files | zstd``, one stream, like workers=1) writes no
per-session files, verifies nothing and syncs nothing. The variants exist ONLY here, by
monkeypatching in the measuring process (``--variant``): the product has no switch to
skip a verify or a sync. Each variant runs in a fresh python on a fresh ``cp -a`` copy;
variants are interleaved per repetition; figures are medians. Writes
results/gap-<stamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import corpus
from bench_sweep import floor_cmd  # the same one-stream floor as the contenders table
from corpus import WORK, fresh_copy, log, rm_tree

HERE = corpus.HERE
RESULTS = os.path.join(HERE, "results")
VARIANTS = ["ours", "no verify", "no durable commit", "no verify, no durable commit"]


class _Same:
    def __eq__(self, other: object) -> bool:
        return True


def _apply(variant: str) -> None:
    from archive_tool.engine import commit, single

    if "no verify" in variant:
        # The in-memory verify decodes the read-back and compares it with the tar.
        single.decompress_bytes = lambda *a, **kw: _Same()
    if "no durable commit" in variant:
        commit.make_durable = lambda tmps: None
        commit.fsync_dirs = lambda tmps: None


def run_variant(variant: str, root: str, fmt: str) -> None:
    _apply(variant)
    from archive_tool.sweep.sessions import sweep

    t0 = time.perf_counter()
    s = sweep(root, dry_run=False, format=fmt, workers=1)
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)  # fd
    print(json.dumps({"archived": s["archived"], "failed": s["failed"],
                      "seconds": round(time.perf_counter() - t0, 3),
                      "cpu_s": round(r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime, 3)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--corpus", choices=["demo", "real"], default="real")
    ap.add_argument("--format", default="tar.zst")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.variant:
        run_variant(a.variant, a.root, a.format)
        return 0
    corpus.use_shape(a.corpus)
    tree, meta = corpus.pristine(a.n)
    k = corpus.session_count(meta)
    root = os.path.join(WORK, "run", "gap")
    runs = []
    for rep in range(1, a.reps + 1):
        order = VARIANTS + ["floor: one tar --remove-files | zstd"]
        order = order[rep - 1:] + order[:rep - 1]
        for name in order:
            fresh_copy(tree, root)
            load = os.getloadavg()[0]
            if name.startswith("floor"):
                out = os.path.join(WORK, "run", "gap-floor.tar.zst")
                t0 = time.perf_counter()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(floor_cmd(root, out), shell=True, check=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = {"seconds": round(time.perf_counter() - t0, 3), "archived": k,
                     "cpu_s": round(after.ru_utime + after.ru_stime
                                    - before.ru_utime - before.ru_stime, 3)}
                os.unlink(out)
            else:
                p = subprocess.run([sys.executable, __file__, "--variant", name, "--root", root,
                                    "--format", a.format], capture_output=True, text=True,
                                   check=True, cwd=HERE)
                r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(name=name, rep=rep, loadavg=load)
            log(f"  {name:<40} rep {rep}: {r['seconds']:6.2f} s  cpu {r['cpu_s']:6.2f} s")
            runs.append(r)
            rm_tree(root)
    table = []
    for name in VARIANTS + ["floor: one tar --remove-files | zstd"]:
        mine = [r for r in runs if r["name"] == name]
        floor = {r["rep"]: r for r in runs if r["name"].startswith("floor")}
        table.append({
            "name": name,
            "seconds": round(statistics.median(r["seconds"] for r in mine), 3),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in mine), 3),
            "ratio_to_floor": round(statistics.median(
                r["seconds"] / floor[r["rep"]]["seconds"] for r in mine), 2),
            "ms_per_session": round(statistics.median(r["seconds"] for r in mine) / k * 1e3, 3),
        })
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"gap-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"date": dt.datetime.now().isoformat(timespec="seconds"), "n": a.n,
                   "sessions": k, "corpus": a.corpus, "format": a.format, "reps": a.reps,
                   "cores": len(os.sched_getaffinity(0)), "table": table, "runs": runs}, f,
                  indent=1)
    for row in table:
        print(f"{row['name']:<42} {row['seconds']:7.2f} s  cpu {row['cpu_s']:6.2f} s  "
              f"{row['ms_per_session']:6.3f} ms/session  {row['ratio_to_floor']:5.2f}x floor")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
