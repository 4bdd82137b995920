"""The worker sweep of issue 24: wall time of ``sweep --execute`` for fixed ``--workers``
1..32 against the adaptive default (sweep/latency.py) and two tar streams, with every
metadata call delayed by the md_latency shim (0, 200 us, 1 ms), on a demo tree.

    python benchmarks/bench_workers.py                    # -n 1000, 3 repetitions
    python benchmarks/bench_workers.py -n 300 --repeat 1 --workers 1,2,4 --delays 0,1000

Each run gets a fresh ``cp -a`` of one pristine demo tree. Repetitions are interleaved
(every contender once per repetition, the order of delays rotated), the median is
reported. The default's worker count is read back from the run (``--json`` summary).
Writes ``benchmarks/results/workers-<UTC>.json`` and ``.png`` and prints a markdown table
per delay: each fixed count, the best fixed count, the default (and how far it is from
the best), two tar streams and tar / default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys

import md_calls
from bench_mdcalls import _env, demo_root, fresh
from bench_sweep import floor2_cmd

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PY = sys.executable


def sweep_cmd(root: str, workers: int | None) -> list[str]:
    return [PY, "-m", "archive_tool", "sweep", root, "--execute", "--json", "-f", "tar.zst",
            *(["-j", str(workers)] if workers else [])]


def run(cmd, latency_us: int, work: str, shell: bool = False) -> tuple[float, dict, dict]:
    """(wall s, the sweep's JSON summary or {}, per-kind counts); the summary goes through
    a file in *work* (--work)."""
    e = _env()
    out_file = os.path.join(work, "out.json")
    if not shell:
        cmd = " ".join(shlex.quote(c) for c in cmd) + f" > {out_file}"
    res = md_calls.run_counted(cmd, latency_us=latency_us, env=e, shell=True)
    if res["rc"] != 0:
        raise SystemExit(f"{cmd}: exit {res['rc']}")
    summary = {}
    if not shell:
        with open(out_file) as f:
            summary = json.load(f)
    return res["wall_s"], summary, res["counts"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="sessions in the demo tree")
    ap.add_argument("--workers", default="1,2,3,4,6,8,12,16,24,32")
    ap.add_argument("--delays", default="0,200,1000", help="us per metadata call")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(HERE, "work", "workers"))
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.workers.split(",") if x.strip()]
    delays = [int(x) for x in a.delays.split(",") if x.strip()]
    os.makedirs(a.work, exist_ok=True)
    pristine = os.path.join(a.work, f"pristine-{a.n}")
    root = os.path.join(a.work, "root")
    out = os.path.join(a.work, "floor.tar.zst")
    sessions = demo_root(pristine, root, a.n)
    print(f"{sessions} finished sessions ({a.n} in the tree); workers {counts}; "
          f"delays {delays} us; {a.repeat} repetitions", flush=True)
    contenders = [*(str(w) for w in counts), "default", "tar2"]
    walls: dict[int, dict[str, list[float]]] = {d: {c: [] for c in contenders} for d in delays}
    chosen: dict[int, list[int]] = {d: [] for d in delays}
    calls: dict[int, dict[str, float]] = {d: {} for d in delays}
    load = [os.getloadavg()[0]]
    for rep in range(a.repeat):
        for d in delays[rep % len(delays):] + delays[:rep % len(delays)]:
            for c in contenders:
                fresh(pristine, root)
                if c == "tar2":
                    wall, _, cnt = run(floor2_cmd(root, out), d, a.work, shell=True)
                else:
                    wall, summary, cnt = run(sweep_cmd(root, None if c == "default" else int(c)),
                                             d, a.work)
                    assert summary.get("archived") == sessions, summary
                    if c == "default":
                        chosen[d].append(summary.get("workers", -1))
                walls[d][c].append(wall)
                calls[d][c] = round(sum(cnt.values()) / sessions, 1)
                print(f"  rep {rep + 1} delay {d} us {c:>7}: {wall:.2f} s", flush=True)
        load.append(os.getloadavg()[0])
    now = dt.datetime.now(dt.timezone.utc)
    table = {}
    for d in delays:
        med = {c: round(statistics.median(v), 3) for c, v in walls[d].items()}
        fixed = {c: med[c] for c in contenders if c not in ("default", "tar2")}
        best = min(fixed, key=fixed.get)
        table[d] = {"median_wall_s": med, "best_fixed": int(best),
                    "default_workers": chosen[d],
                    "default_vs_best": round(med["default"] / med[best], 3),
                    "tar2_vs_default": round(med["tar2"] / med["default"], 3),
                    "j2_vs_tar2": round(med["2"] / med["tar2"], 3) if "2" in med else None,
                    "calls_per_session": calls[d], "runs": walls[d]}
    doc = {"date": now.isoformat(timespec="seconds"), "sessions": sessions, "n": a.n,
           "repeat": a.repeat, "load_avg_1min": load,
           "machine": {"cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                       "python": platform.python_version()},
           "command": " ".join(["python", "benchmarks/bench_workers.py", *(argv or sys.argv[1:])]),
           "delays": table}
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"workers-{now:%Y%m%d-%H%M%S}")
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    plot(doc, counts, base + ".png")
    print(f"\n{base}.json\n{base}.png\n")
    for d in delays:
        t = table[d]
        m = t["median_wall_s"]
        print(f"delay {d} us: " + ", ".join(f"-j {w} {m[str(w)]:.2f}" for w in counts))
        print(f"  best fixed -j {t['best_fixed']} {m[str(t['best_fixed'])]:.2f} s; default "
              f"({t['default_workers']}) {m['default']:.2f} s = {t['default_vs_best']:.2f}x "
              f"best; two tar streams {m['tar2']:.2f} s = {t['tar2_vs_default']:.2f}x default"
              + (f"; -j 2 / tar2 {t['j2_vs_tar2']:.2f}x" if t["j2_vs_tar2"] else ""))
    return 0


def plot(doc: dict, counts: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delays = sorted(int(d) for d in doc["delays"])
    fig, axes = plt.subplots(1, len(delays), figsize=(4.2 * len(delays), 3.6), squeeze=False)
    for ax, d in zip(axes[0], delays, strict=True):
        t = doc["delays"][d] if d in doc["delays"] else doc["delays"][str(d)]
        m = t["median_wall_s"]
        ax.plot(counts, [m[str(w)] for w in counts], "o-", label="--workers N")
        ax.axhline(m["default"], color="C2", ls="--",
                   label=f"default ({statistics.median(t['default_workers']):.0f} workers)")
        ax.axhline(m["tar2"], color="C3", ls=":", label="two tar streams")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(w) for w in counts], fontsize=7)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{d} us per metadata call")
        ax.set_xlabel("workers")
        ax.set_ylabel("wall s (median)")
        ax.legend(fontsize=7)
    fig.suptitle(f"sweep --execute, {doc['sessions']} sessions, {doc['machine']['cores']} cores",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
