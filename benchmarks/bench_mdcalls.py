"""Metadata calls per session, ours against the tar floor (issue 24), on a demo tree.

    python benchmarks/bench_mdcalls.py                     # 1,000-session demo tree
    python benchmarks/bench_mdcalls.py -n 300 --delays 0,200,1000

Counts every metadata call of each contender with the md_latency shim
(``benchmarks/md_calls.py``: exact, unaffected by the load of this shared machine), then
times ours with 2 workers against two tar streams with each call delayed by the shim, the
way a Lustre/GPFS/NFS metadata server would. Every contender runs on a fresh ``cp -a``
copy of one pristine demo tree (``python -m archive_tool demo-tree``). Writes
``benchmarks/results/mdcalls-<UTC>.json`` and prints the markdown tables for RESULTS.md.

Contenders: ``sweep --execute`` tar.zst with ``-j 1`` and ``-j 2``; the floor
``fd ... | tar --remove-files -cf - | zstd`` (one stream) and two such streams; after a
sweep, ``extract --tree --remove-archive`` against one ``tar --zstd -xf`` + ``rm`` per
archive, and ``verify`` of every archive against ``zstd -t``.

Behind ``--extra`` (``--extra-only``: those rows alone), the other commands of the issue's
target list against their floors: ``sweep --pack daily --execute`` and ``sweep --pack auto
--execute -j 1``/``-j 2`` against the one-stream tar floor on the same tree; ``report ROOT --sample 0`` against
``find ROOT -printf '%p %s %T@\n'``; ``catalog --rebuild`` of a per-session-swept tree and
of a packed tree, each against ``zstd -t`` of every archive (or pack) in it; ``verify ROOT``
(``-j 1`` and the default workers) of the swept tree against the same ``zstd -t``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys

import md_calls
from bench_sweep import floor2_cmd, floor_cmd

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PY = sys.executable


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def fresh(pristine: str, dst: str) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", "--", pristine, dst], check=True)
    subprocess.run(["sync"], check=True)


def demo_root(pristine: str, root: str, n: int) -> int:
    """A demo tree of *n* sessions at *pristine* (made once, kept between runs), copied
    fresh to *root*; returns how many finished sessions a sweep will take."""
    if not os.path.isdir(pristine):
        subprocess.run([PY, "-m", "archive_tool", "demo-tree", pristine, "-n", str(n)],
                       check=True, env=_env(), stdout=subprocess.DEVNULL)
    fresh(pristine, root)
    dry = subprocess.run([PY, "-m", "archive_tool", "sweep", root, "--json"], env=_env(),
                         capture_output=True, text=True, check=True)
    return json.loads(dry.stdout)["candidates"]


def ours_sweep(root: str, workers: int | None) -> list[str]:
    """The sweep CLI; *workers* None: its default (adaptive, bulk/latency.py)."""
    return [PY, "-m", "archive_tool", "sweep", root, "--execute", "-q", "-f", "tar.zst",
            *(["-j", str(workers)] if workers else [])]


def archives(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "**", "FINISHED_*", "*.tar.zst"), recursive=True))


def count(name: str, cmd, sessions: int, *, shell: bool = False, latency_us: int = 0) -> dict:
    res = md_calls.run_counted(cmd, latency_us=latency_us, env=_env(), shell=shell)
    if res["rc"] != 0:
        raise SystemExit(f"{name}: exit {res['rc']}")
    row = md_calls.table_row(res["counts"], sessions)
    print(f"  {name}: {row['total']} calls/session, wall {res['wall_s']} s", flush=True)
    return {"name": name, "latency_us": latency_us, "row": row, **res}


def extra_rows(pristine: str, root: str, out: str, work: str, sessions: int) -> list[dict]:
    """sweep --pack, report and catalog --rebuild, each next to its natural floor."""
    rows = []
    fresh(pristine, root)
    rows.append(count("session-archive sweep --pack daily --execute",
                      [PY, "-m", "archive_tool", "sweep", root, "--pack", "daily", "--execute",
                       "-q"], sessions))
    packed = os.path.join(work, "packed")
    shutil.rmtree(packed, ignore_errors=True)
    subprocess.run(["cp", "-a", "--", root, packed], check=True)
    # --pack auto: packs spanning dirs (issue 26), one worker a pack (the demo tree: one).
    for w in (1, 2):
        fresh(pristine, root)
        rows.append(count(f"session-archive sweep --pack auto --execute -j {w}",
                          [PY, "-m", "archive_tool", "sweep", root, "--pack", "auto",
                           "--execute", "-q", "-j", str(w)], sessions))
    fresh(pristine, root)
    rows.append(count("tar --remove-files -cf - ... | zstd (same tree)", floor_cmd(root, out),
                      sessions, shell=True))
    fresh(pristine, root)
    rows.append(count("session-archive report --sample 0",
                      [PY, "-m", "archive_tool", "report", root, "--sample", "0", "--json"],
                      sessions))
    rows.append(count("find ROOT -printf '%p %s %T@\\n'",
                      f"find {shlex.quote(root)} -printf '%p %s %T@\\n' > /dev/null",
                      sessions, shell=True))
    # catalog --rebuild indexes what a sweep left: per-session archives, or packs.
    fresh(pristine, root)
    subprocess.run(ours_sweep(root, 2), check=True, env=_env())
    # verify ROOT: the same archives found by its own walk; -j 1 is zstd -t's parallelism.
    for label, jobs in (("-j 1", ["-j", "1"]), ("default workers", [])):
        rows.append(count(f"session-archive verify ROOT ({label})",
                          [PY, "-m", "archive_tool", "verify", "-q", *jobs, root], sessions))
    for label, tree in (("per-session archives", root), ("daily packs", packed)):
        arch = archives(tree)
        rows.append(count(f"session-archive catalog --rebuild ({label})",
                          [PY, "-m", "archive_tool", "catalog", tree, "--rebuild"], sessions))
        rows.append(count(f"zstd -t (every archive, {label})", ["zstd", "-q", "-t", *arch],
                          sessions))
        rows[-1]["archives"] = rows[-2]["archives"] = len(arch)
    shutil.rmtree(packed, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="sessions in the demo tree")
    ap.add_argument("--delays", default="0,200", help="us per metadata call for the walls")
    ap.add_argument("--work", default=os.path.join(HERE, "work", "mdcalls"))
    ap.add_argument("--no-restore", action="store_true", help="skip extract/verify rows")
    ap.add_argument("--no-default", action="store_true",
                    help="skip the default (adaptive) worker count in the walls")
    ap.add_argument("--walls-only", action="store_true", help="only the timed rows")
    ap.add_argument("--extra", action="store_true",
                    help="also sweep --pack, report and catalog --rebuild against their floors")
    ap.add_argument("--extra-only", action="store_true",
                    help="only the --extra rows (no other rows, no walls)")
    a = ap.parse_args(argv)
    if a.extra_only:
        a.extra = a.walls_only = a.no_restore = True
        a.delays = ""
    os.makedirs(a.work, exist_ok=True)
    pristine = os.path.join(a.work, "pristine")
    root = os.path.join(a.work, "root")
    out = os.path.join(a.work, "floor.tar.zst")
    sessions = demo_root(pristine, root, a.n)
    print(f"{sessions} finished sessions in the demo tree ({a.n} sessions)", flush=True)
    rows = []
    for w in () if a.walls_only else (1, 2):
        fresh(pristine, root)
        rows.append(count(f"session-archive sweep --execute -j {w}", ours_sweep(root, w),
                          sessions))
    if not a.walls_only:
        fresh(pristine, root)
        rows.append(count("tar --remove-files -cf - ... | zstd", floor_cmd(root, out),
                          sessions, shell=True))
        fresh(pristine, root)
        rows.append(count("two tar --remove-files | zstd streams", floor2_cmd(root, out),
                          sessions, shell=True))
    if not (a.no_restore or a.walls_only):
        fresh(pristine, root)
        subprocess.run(ours_sweep(root, 2), check=True, env=_env())
        swept = os.path.join(a.work, "swept")
        shutil.rmtree(swept, ignore_errors=True)
        subprocess.run(["cp", "-a", "--", root, swept], check=True)
        n_arch = len(archives(swept))
        rows.append(count("session-archive verify (every archive)",
                          [PY, "-m", "archive_tool", "verify", "-q", *archives(swept)], n_arch))
        rows.append(count("zstd -t (every archive)", ["zstd", "-q", "-t", *archives(swept)],
                          n_arch))
        rows.append(count("session-archive extract --tree --remove-archive -j 2",
                          [PY, "-m", "archive_tool", "extract", "--tree", root, "--execute",
                           "--remove-archive", "-q", "-j", "2"], n_arch))
        fresh(swept, root)
        body = ('for a in "$@"; do tar --zstd -xf "$a" -C "${a%/*}" && rm -- "$a" || exit 255;'
                " done")
        lst = " ".join(shlex.quote(p) for p in archives(root))
        rows.append(count("tar --zstd -xf + rm per archive",
                          f"sh -c {shlex.quote(body)} _ {lst}", n_arch, shell=True))
    if a.extra:
        rows += extra_rows(pristine, root, out, a.work, sessions)
    walls = []
    for d in (int(x) for x in a.delays.split(",") if x.strip()):
        fresh(pristine, root)
        walls.append(count("session-archive sweep --execute -j 2", ours_sweep(root, 2),
                           sessions, latency_us=d))
        if not a.no_default:
            fresh(pristine, root)
            walls.append(count("session-archive sweep --execute (default workers)",
                               ours_sweep(root, None), sessions, latency_us=d))
        fresh(pristine, root)
        walls.append(count("two tar --remove-files | zstd streams", floor2_cmd(root, out),
                           sessions, shell=True, latency_us=d))
    shutil.rmtree(root, ignore_errors=True)
    now = dt.datetime.now(dt.timezone.utc)
    doc = {"date": now.isoformat(timespec="seconds"), "sessions": sessions, "n": a.n,
           "machine": {"cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                       "python": platform.python_version()},
           "command": " ".join(["python", "benchmarks/bench_mdcalls.py", *(argv or sys.argv[1:])]),
           "rows": rows, "walls": walls}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"mdcalls-{now:%Y%m%d-%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{path}\n")
    print(md_calls.format_table([(r["name"], r["row"]) for r in rows], True))
    print("\n| contender | delay per call | wall s |\n|---|---|---|")
    for r in walls:
        print(f"| {r['name'].replace('|', chr(92) + '|')} | {r['latency_us']} us | {r['wall_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
