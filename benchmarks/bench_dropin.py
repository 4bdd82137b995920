"""Issue 12 costs: (a) start time of a trivial decorated script with this checkout against
another checkout (e.g. the commit before numpy/matplotlib became core dependencies),
interleaved; (b) archive_existing in-process (what a call at an unguarded script top level
now gets) against the default local pool, on the same small sessions.

    python benchmarks/bench_dropin.py --base /path/to/other/checkout [--reps 40] [--sessions 400]

Prints one JSON object (and writes benchmarks/results/dropin.json).
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
ROOT = HERE.parent

TRIVIAL = '''
import scitex_session as stx


@stx.session
def main(n: int = 1):
    """Trivial."""
    return 0


if __name__ == "__main__":
    main()
'''


def _stats(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1), "runs": len(ms)}


def start_time(base: str | None, reps: int, work: Path) -> dict[str, object]:
    script = work / "trivial.py"
    script.write_text(TRIVIAL)
    variants = {"this": str(ROOT)}
    if base:
        variants["base"] = base
    eager = work / "eager.py"
    eager.write_text("import numpy, matplotlib.pyplot\n" + TRIVIAL)
    times: dict[str, list[float]] = {k: [] for k in [*variants, "this+eager numpy/mpl"]}
    for i in range(reps + 2):
        for k, path in [*variants.items(), ("this+eager numpy/mpl", str(ROOT))]:
            env = dict(os.environ, PYTHONPATH=path)
            env.pop("SCITEX_SESSION_OUT_DIR", None)
            t = time.perf_counter()
            subprocess.run([sys.executable, str(eager if "eager" in k else script)], env=env,
                           cwd=work, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if i >= 2:  # the first two rounds warm the page cache and .pyc files
                times[k].append((time.perf_counter() - t) * 1000)
    shutil.rmtree(work / "trivial_out", ignore_errors=True)
    shutil.rmtree(work / "eager_out", ignore_errors=True)
    return {k: _stats(v) for k, v in times.items()}


def in_process_vs_pool(n: int, work: Path, reps: int = 3) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from archive_tool import api
    from archive_tool.demo import make_tree

    out: dict[str, list[float]] = {"in-process (workers=1)": [], "pool (default workers)": []}
    for _ in range(reps):
        for label, kw in (("in-process (workers=1)", {"workers": 1}),
                          ("pool (default workers)", {})):
            root = work / "tree"
            shutil.rmtree(root, ignore_errors=True)
            make_tree(str(root), n, seed=1)
            fin = [p for p in root.rglob("FINISHED_SUCCESS") if p.is_dir()]
            t = time.perf_counter()
            done = 0
            for d in fin:
                done += api.archive_existing(d, dry_run=False, format="tar.zst", **kw)["archived"]
            out[label].append(time.perf_counter() - t)
    res: dict[str, object] = {k: {"median_s": round(statistics.median(v), 3),
                                  "runs": len(v)} for k, v in out.items()}
    a = statistics.median(out["in-process (workers=1)"])
    b = statistics.median(out["pool (default workers)"])
    res["in-process / pool"] = round(a / b, 2)
    res["sessions archived per run"] = done
    # The guard detection itself: one ast.parse of the calling script per call.
    src = (ROOT / "archive_tool" / "cli.py").read_bytes()  # a ~450-line stand-in script
    import ast
    t = time.perf_counter()
    for _ in range(100):
        ast.parse(src)
    res["guard check per call (ast.parse of a 450-line script) ms"] = round(
        (time.perf_counter() - t) * 10, 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="another checkout to compare start time against")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--sessions", type=int, default=400)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dropin-") as tmp:
        work = Path(tmp)
        res = {"start_time": start_time(a.base, a.reps, work),
               "top_level_fallback": in_process_vs_pool(a.sessions, work),
               "cpus": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg()}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dropin.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
