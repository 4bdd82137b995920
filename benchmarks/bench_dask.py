"""Dask vs the local pool: the same sweep, same corpus, same 2 cores.

    python benchmarks/bench_dask.py [--n 4000] [--rounds 3] [--batches 64,128,256,512]

Contenders (each on a fresh ``cp -a`` copy of one pristine tree, order rotated per round so
drift in machine load hits all of them alike):
- ``local``: ``sweep(root, dry_run=False, workers=2)`` — the default process pool, batch 128;
  its time includes starting the pool (that is what a cron run pays).
- ``dask-B``: ``sweep(root, dry_run=False, executor=DaskExecutor(client), batch_size=B)``
  on a ``LocalCluster`` of 2 worker processes x 1 thread over loopback TCP, started once
  (a cluster outlives sweeps; its start-up is reported separately).

Also measured: the scheduler's cost per task (1,000 no-op tasks through the same
``concurrent.futures`` executor the sweep uses), which is what batching amortises.

Writes ``results/dask.json`` and prints the Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import wait

from archive_tool.sweep.executors import DaskExecutor
from archive_tool.sweep.sessions import DEFAULT_BATCH, sweep

HERE = os.path.dirname(os.path.abspath(__file__))


def _noop(i: int) -> int:
    return i


def per_task_ms(ex: DaskExecutor, n: int = 1000) -> float:
    wait([ex.submit(_noop, i) for i in range(50)])  # warm up
    t0 = time.perf_counter()
    wait([ex.submit(_noop, i) for i in range(n)])
    return (time.perf_counter() - t0) * 1000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="sessions in the corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="64,128,256,512", help="Dask batch sizes to try")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "dask.json"))
    a = ap.parse_args()

    # Imported here, not at the top: Dask's worker processes re-import this __main__ module.
    sys.path.insert(0, HERE)
    from corpus import WORK, fresh_copy, log, pristine, rm_tree, session_count
    from distributed import Client, LocalCluster

    tree, meta = pristine(a.n, a.seed)
    want = session_count(meta)
    work = os.path.join(WORK, "run", "dask")
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    client = Client(cluster)
    startup = time.perf_counter() - t0
    ex = DaskExecutor(client)
    task_ms = per_task_ms(ex)
    log(f"cluster up in {startup:.2f} s; {task_ms:.2f} ms per no-op task")

    contenders = ["local"] + [f"dask-{b}" for b in a.batches.split(",")]
    times: dict[str, list[float]] = {c: [] for c in contenders}
    loads: list[float] = []
    for r in range(a.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:
            fresh_copy(tree, work)
            loads.append(os.getloadavg()[0])
            if c == "local":
                s = sweep(work, dry_run=False, workers=2, batch_size=DEFAULT_BATCH, lock=False)
            else:
                s = sweep(work, dry_run=False, executor=ex, batch_size=int(c.split("-")[1]),
                          lock=False)
            if s["archived"] != want or s["failed"]:
                raise SystemExit(f"{c}: archived {s['archived']} of {want}, failed {s['failed']}")
            times[c].append(s["elapsed"])
            log(f"round {r + 1} {c:>9}: {s['elapsed']:.2f} s ({want / s['elapsed']:.0f}/s)")
    ex.shutdown()
    client.close()
    cluster.close()
    rm_tree(work)

    # On a shared machine the best run is the least disturbed one: report both.
    base, base_min = statistics.median(times["local"]), min(times["local"])
    rows = {c: {"runs_s": v, "median_s": statistics.median(v), "min_s": min(v),
                "sessions_per_s": round(want / statistics.median(v)),
                "ratio_vs_local": round(statistics.median(v) / base, 3),
                "ratio_min_vs_local": round(min(v) / base_min, 3)} for c, v in times.items()}
    out = {
        "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "n_sessions": a.n, "archived_per_run": want,
        "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host=127.0.0.1)",
        "cluster_startup_s": round(startup, 3), "scheduler_ms_per_task": round(task_ms, 3),
        "loadavg_1m_during": [round(x, 2) for x in loads], "results": rows,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\n{want} sessions archived per run, median of {a.rounds} rounds\n")
    print("| contender | median s | best s | sessions/s (median) | vs local (median) | vs local (best) |")
    print("|---|---|---|---|---|---|")
    for c, row in rows.items():
        print(f"| {c} | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['sessions_per_s']} | "
              f"{row['ratio_vs_local']:.2f}x | {row['ratio_min_vs_local']:.2f}x |")
    print(f"\ncluster start-up {startup:.2f} s; {task_ms:.2f} ms per no-op task round trip")


if __name__ == "__main__":
    main()
