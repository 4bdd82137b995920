"""Before/after A/B of two checkouts of the engine, measured in ONE run.

    python benchmarks/bench_ab.py                                  # --a /work/wt-before --b .
    python benchmarks/bench_ab.py --a ../old --b . --a-label old --b-label new --pairs 7

Each contender is the same driver (``benchmarks/run_sweep.py`` of this checkout) in a fresh
python whose ``PYTHONPATH`` starts with the contender's checkout, so ``import archive_tool``
resolves there and not to the venv's editable install; run_sweep.py prints the
``archive_tool.__file__`` it imported and every run is checked against its checkout.

Workloads, each on a fresh ``cp -a`` copy (then ``sync``) per run: a tree sweep (tar.zst),
a flat sweep (``compress``, tar.gz) and bulk restores (``restore_many``) of flat tar.gz and
tar.zst archives. Runs come in pairs whose order alternates (A B, B A, A B, ...), the pairs
of all workloads interleaved, so load drifting on a shared machine hits both sides alike;
the figure is the median over pairs of B/A time. Time is the engine call inside the
process (``seconds``; process start and import are recorded apart as ``wall_s``). CPU time
(the process, its fd and its pool workers) is paired the same way: under load from other
processes it moves much less than wall time, which waits for the cores and the disk.

When B is more than ``--slowdown`` slower than A on a workload (or with ``--profile
always``), that workload is profiled with cProfile, workers=1, on both checkouts, and the
functions whose cumulative/own time grew most are listed (``profile`` in the JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pstats
import statistics
import subprocess
import sys
import time

import corpus
from corpus import WORK, fresh_copy, log, rm_tree

HERE = corpus.HERE
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
RUN_SWEEP = os.path.join(HERE, "run_sweep.py")
CORES = len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------- contenders


def env_for(checkout: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([checkout, *filter(None, [env.get("PYTHONPATH")])])
    return env


def resolve(checkout: str) -> dict:
    """Where ``import archive_tool`` lands under the contender's environment (from WORK,
    not the repo root, so the cwd on sys.path cannot pick this checkout by accident)."""
    out = subprocess.run([sys.executable, "-c", "import archive_tool; print(archive_tool.__file__)"],
                         env=env_for(checkout), cwd=WORK, capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    head = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "n/a"
    dirty = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--", "archive_tool"],
                           capture_output=True, text=True).stdout.strip()
    return {"checkout": checkout, "archive_tool": path, "commit": head,
            "engine_dirty": bool(dirty), "ok": _inside(path, checkout)}


def _inside(path: str, checkout: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(checkout) + os.sep)


def run_one(checkout: str, root: str, kw: dict, extra: list[str]) -> dict:
    cmd = [sys.executable, RUN_SWEEP, *extra, root, json.dumps(kw)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env_for(checkout), cwd=WORK, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"run_sweep failed ({checkout}): {p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if not _inside(r["engine"], checkout):
        raise RuntimeError(f"run for {checkout} imported {r['engine']}")
    r.update(wall_s=round(wall, 4), load1_before=round(load, 2))
    return r


# ---------------------------------------------------------------------- workloads


def archives_dir(n: int, fmt: str, maker: str) -> tuple[str, int]:
    """Flat archives of the flat corpus in *fmt*, made once (by checkout *maker*) and cached."""
    flat, n_flat = corpus.flat_pristine(n)
    d = os.path.join(WORK, "pristine", f"n{n}-s0-flat-{fmt}-archives")
    if not (os.path.isfile(d + ".json") and os.path.isdir(d)):
        fresh_copy(flat, d)
        r = run_one(maker, d, {"format": fmt, "workers": CORES, "flat": True}, [])
        if r.get("archived") != n_flat or r.get("failed"):
            raise RuntimeError(f"making {fmt} archives: {r}")
        with open(d + ".json", "w") as f:
            json.dump({"archives": n_flat, "made_by": r["engine"]}, f)
    return d, n_flat


def workloads(n: int, w: int, maker: str, only: set[str] | None) -> list[dict]:
    tree, meta = corpus.pristine(n)
    flat, n_flat = corpus.flat_pristine(n)
    out = [
        {"name": f"tree sweep tar.zst w{w}", "src": tree, "expect": corpus.session_count(meta),
         "count": "archived", "extra": [], "kw": {"format": "tar.zst", "workers": w}},
        {"name": f"flat compress tar.gz w{w}", "src": flat, "expect": n_flat,
         "count": "archived", "extra": [], "kw": {"format": "tar.gz", "workers": w, "flat": True}},
    ]
    for fmt in ("tar.gz", "tar.zst"):
        d, k = archives_dir(n, fmt, maker)
        out.append({"name": f"restore_many {fmt} w{w}", "src": d, "expect": k, "count": "restored",
                    "extra": ["--restore"], "kw": {"workers": w}})
    return [x for x in out if not only or x["name"].split()[0] in only or x["name"] in only]


def run_workload(x: dict, checkout: str, label: str, pair: int) -> dict:
    root = os.path.join(WORK, "run", "ab")
    copy_s = fresh_copy(x["src"], root)
    r = run_one(checkout, root, x["kw"], x["extra"])
    rm_tree(root)
    done = r.get(x["count"], 0)
    ok = done == x["expect"] and not r.get("failed")
    cpu = r["cpu_self_s"] + r["cpu_children_s"]
    r.update(label=label, pair=pair, copy_s=round(copy_s, 3), ok=ok, cpu_s=round(cpu, 3),
             cpu_ms_per_item=round(1000 * cpu / max(1, done), 3),
             sessions_per_s=round(done / r["seconds"], 1) if r["seconds"] else None)
    log(f"  {x['name']:<26} {label:<7} pair {pair}: {r['seconds']:6.2f} s "
        f"({r['wall_s']:5.2f} s wall, {r['cpu_s']:5.2f} s cpu) {r['sessions_per_s']:8.1f}/s load {r['load1_before']:.2f}"
        f"{'' if ok else '  NOT OK: ' + json.dumps({k: r.get(k) for k in (x['count'], 'failed', 'failures')})}")
    if not ok:
        raise RuntimeError(f"{label} did not do the job on {x['name']}: {r}")
    return r


def summarize(x: dict, runs: list[dict], a: str, b: str) -> dict:
    mine = [r for r in runs if r["workload"] == x["name"]]
    by = {lab: {r["pair"]: r for r in mine if r["label"] == lab} for lab in (a, b)}
    pairs = sorted(by[a])
    ratio = [round(by[b][i]["seconds"] / by[a][i]["seconds"], 4) for i in pairs]
    ratio_cpu = [round(by[b][i]["cpu_s"] / by[a][i]["cpu_s"], 4) for i in pairs]
    ratio_wall = [round(by[b][i]["wall_s"] / by[a][i]["wall_s"], 4) for i in pairs]
    med = statistics.median
    return {
        "workload": x["name"], "kw": x["kw"], "restore": bool(x["extra"]), "items": x["expect"],
        "pairs": len(pairs), "ratios_b_over_a": ratio, "median_ratio": round(med(ratio), 4),
        "ratio_range": [min(ratio), max(ratio)], "median_ratio_wall": round(med(ratio_wall), 4),
        "ratios_cpu_b_over_a": ratio_cpu, "median_ratio_cpu": round(med(ratio_cpu), 4),
        "ratio_cpu_range": [min(ratio_cpu), max(ratio_cpu)],
        **{f"median_cpu_ms_per_item_{lab}": round(med(r["cpu_ms_per_item"] for r in by[lab].values()), 3)
           for lab in (a, b)},
        **{f"median_s_{lab}": round(med(r["seconds"] for r in by[lab].values()), 4) for lab in (a, b)},
        **{f"median_per_s_{lab}": round(med(r["sessions_per_s"] for r in by[lab].values()), 1)
           for lab in (a, b)},
    }


# ---------------------------------------------------------------------- profile


def _key(file: str, func: str, checkout: str) -> str:
    # Line numbers move between the checkouts: one row per (module, function).
    if file == "~":
        return func
    real = os.path.realpath(file)
    root = os.path.realpath(checkout) + os.sep
    name = real[len(root):] if real.startswith(root) else os.path.basename(file)
    return f"{name}:{func}"


def profile_table(prof: str, checkout: str) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for (file, _line, func), (_cc, nc, tt, ct, _callers) in pstats.Stats(prof).stats.items():
        k = _key(file, func, checkout)
        r = rows.setdefault(k, [0, 0.0, 0.0])
        # Recursive or same-named functions: the cumulative figures of both rows are kept
        # apart by cProfile, summing them may count twice; fine for spotting a change.
        r[0] += nc
        r[1] += tt
        r[2] += ct
    return rows


def profile_compare(x: dict, a: tuple[str, str], b: tuple[str, str], reps: int, top: int) -> dict:
    kw = dict(x["kw"], workers=1)
    tables: dict[str, list[dict[str, list[float]]]] = {a[0]: [], b[0]: []}
    seconds: dict[str, list[float]] = {a[0]: [], b[0]: []}
    for i in range(reps):
        for label, checkout in ((a, b) if i % 2 == 0 else (b, a)):
            root = os.path.join(WORK, "run", "ab-prof")
            fresh_copy(x["src"], root)
            prof = os.path.join(WORK, f"ab-{label}.prof")
            r = run_one(checkout, root, kw, [*x["extra"], "--profile", prof])
            rm_tree(root)
            tables[label].append(profile_table(prof, checkout))
            seconds[label].append(r["seconds"])
            log(f"  profile {x['name']} {label}: {r['seconds']:.2f} s under cProfile")

    # Median over the runs of each side: one run stalled by another process's I/O must not
    # decide which function looks slower.
    def middle(label: str) -> dict[str, list[float]]:
        keys = set().union(*tables[label])
        return {k: [statistics.median(t.get(k, [0, 0.0, 0.0])[j] for t in tables[label]) for j in range(3)]
                for k in keys}

    ta, tb = middle(a[0]), middle(b[0])
    rows = []
    for k in set(ta) | set(tb):
        na, tta, cta = ta.get(k, [0, 0.0, 0.0])
        nb, ttb, ctb = tb.get(k, [0, 0.0, 0.0])
        rows.append({"func": k, "ncalls_a": round(na), "ncalls_b": round(nb),
                     "tottime_a": round(tta, 4), "tottime_b": round(ttb, 4),
                     "cumtime_a": round(cta, 4), "cumtime_b": round(ctb, 4),
                     "d_tottime": round(ttb - tta, 4), "d_cumtime": round(ctb - cta, 4)})
    return {
        "workload": x["name"], "kw": kw, "reps_each": reps, "labels": [a[0], b[0]],
        "seconds": seconds,
        # Renamed and new functions (the refactor moved code) dominate a raw cumtime diff:
        # functions present on both sides say which stage of the engine got slower.
        "cumtime_grew": sorted(rows, key=lambda r: -r["d_cumtime"])[:top],
        "cumtime_grew_common": sorted((r for r in rows if r["ncalls_a"] and r["ncalls_b"]),
                                      key=lambda r: -r["d_cumtime"])[:top],
        # System calls per item: what a dir-fd layer changes first (openat/fstat/close...).
        "posix_calls": sorted((dict(r, per_item_a=round(r["ncalls_a"] / x["expect"], 2),
                                    per_item_b=round(r["ncalls_b"] / x["expect"], 2))
                               for r in rows if r["func"].startswith("<built-in method posix.")),
                              key=lambda r: -abs(r["d_tottime"])),
        "tottime_grew": sorted(rows, key=lambda r: -r["d_tottime"])[:top],
        "tottime_shrank": sorted(rows, key=lambda r: r["d_tottime"])[:top // 2],
    }


def table(path: str) -> str:
    """Markdown table of one result file (for RESULTS.md)."""
    with open(path) as f:
        d = json.load(f)
    a, b = d["labels"]
    unit = {True: "archives/s", False: "sessions/s"}
    lines = [f"| workload | items | pairs | median {b}/{a} time | range | median {b}/{a} CPU | CPU range"
             f" | {a} /s | {b} /s | CPU ms/item {a} → {b} |", "|---" * 10 + "|"]
    for s in d["summary"]:
        lines.append(
            f"| {s['workload']} | {s['items']:,} | {s['pairs']} | **{s['median_ratio']:.3f}** |"
            f" {s['ratio_range'][0]:.2f} – {s['ratio_range'][1]:.2f} | **{s['median_ratio_cpu']:.3f}** |"
            f" {s['ratio_cpu_range'][0]:.2f} – {s['ratio_cpu_range'][1]:.2f} |"
            f" {s[f'median_per_s_{a}']:,.0f} | {s[f'median_per_s_{b}']:,.0f} {unit[s['restore']]} |"
            f" {s[f'median_cpu_ms_per_item_{a}']:.2f} → {s[f'median_cpu_ms_per_item_{b}']:.2f} |")
    ld = d.get("load1_during", {})
    lines.append(f"\n1-min load average before each run: {ld.get('min')} – {ld.get('max')}"
                 f" (median {ld.get('median', 0):.2f}); {d['cores']} cores.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default="/work/wt-before", help="checkout A (the baseline)")
    ap.add_argument("--b", default=REPO, help="checkout B (default: this one)")
    ap.add_argument("--a-label", default="before")
    ap.add_argument("--b-label", default="after")
    ap.add_argument("--n", type=int, default=2000, help="sessions in the tree corpus")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=min(2, CORES))
    ap.add_argument("--only", default="", help="comma list of workload first words: tree,flat,restore_many")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    ap.add_argument("--slowdown", type=float, default=0.05, help="profile when B/A > 1 + this")
    ap.add_argument("--profile-reps", type=int, default=2, help="profiled runs per side")
    ap.add_argument("--out", default=None, help="JSON path (default results/ab-<date>.json)")
    ap.add_argument("--table", metavar="JSON", help="print a result file as a markdown table, run nothing")
    o = ap.parse_args(argv)
    if o.table:
        print(table(o.table))
        return 0
    a = (o.a_label, os.path.abspath(o.a))
    b = (o.b_label, os.path.abspath(o.b))
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    out = o.out or os.path.join(RESULTS, f"ab-{dt.date.today().isoformat()}.json")

    who = {label: resolve(path) for label, path in (a, b)}
    for label, w in who.items():
        log(f"{label}: {w['checkout']} @ {w['commit']}{' (engine dirty)' if w['engine_dirty'] else ''}"
            f" -> import archive_tool = {w['archive_tool']}")
        if not w["ok"]:
            log(f"{label}: archive_tool does not resolve inside {w['checkout']}")
            return 2
    if who[a[0]]["archive_tool"] == who[b[0]]["archive_tool"]:
        log("A and B import the same archive_tool")
        return 2

    n = corpus.fit_to_disk(o.n)
    xs = workloads(n, o.workers, b[1], set(filter(None, o.only.split(","))) or None)
    res: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": ["python", "benchmarks/bench_ab.py", *(argv if argv is not None else sys.argv[1:])],
        "cores": CORES, "python": sys.version.split()[0], "n": n, "workers": o.workers,
        "contenders": who, "labels": [a[0], b[0]], "loadavg_start": os.getloadavg(),
        "page_cache": "warm: cp -a copy then sync before each run; no drop_caches",
        "time": "seconds = the engine call inside run_sweep.py; wall_s adds python start + import",
        "workloads": [{k: x[k] for k in ("name", "kw", "expect", "extra")} for x in xs],
        "runs": [],
    }

    def save() -> None:
        res["loadavg_end"] = os.getloadavg()
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, out)

    t0 = time.perf_counter()
    for i in range(1, o.pairs + 1):
        log(f"pair {i}/{o.pairs} (load {os.getloadavg()[0]:.2f})")
        order = (a, b) if i % 2 == 1 else (b, a)
        for x in xs:
            for label, checkout in order:
                r = run_workload(x, checkout, label, i)
                r["workload"] = x["name"]
                res["runs"].append(r)
        save()
    res["summary"] = [summarize(x, res["runs"], a[0], b[0]) for x in xs]
    loads = [r["load1_before"] for r in res["runs"]]
    res["load1_during"] = {"min": min(loads), "median": round(statistics.median(loads), 2), "max": max(loads)}
    for s in res["summary"]:
        log(f"{s['workload']:<26} {b[0]}/{a[0]} median {s['median_ratio']:.3f} "
            f"(range {s['ratio_range'][0]:.3f}-{s['ratio_range'][1]:.3f}; wall {s['median_ratio_wall']:.3f};"
            f" cpu {s['median_ratio_cpu']:.3f})"
            f"  {s[f'median_per_s_{a[0]}']:.1f} vs {s[f'median_per_s_{b[0]}']:.1f} per s")
    save()

    slow = [x for x, s in zip(xs, res["summary"], strict=True) if s["median_ratio"] > 1 + o.slowdown]
    if o.profile == "always":
        slow = xs
    if o.profile != "never" and slow:
        res["profile"] = []
        for x in slow:
            log(f"profiling {x['name']} (workers=1)")
            res["profile"].append(profile_compare(x, a, b, o.profile_reps, 15))
            save()
    res["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    log(f"wrote {out} ({res['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
