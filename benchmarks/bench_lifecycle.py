"""Cost of the session lifecycle: start overhead of a trivial decorated script, and close()
of a run holding 2,000 files / 200 MB — ours against a bare script and, in the same run,
against the published scitex-session (``/opt/pubref``, skipped when missing).

    python benchmarks/bench_lifecycle.py [--reps 15] [--close-reps 3]

Writes benchmarks/results/lifecycle.json and lifecycle.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PUBREF = Path("/opt/pubref/bin/python")

BARE = """
def main(x: int = 1):
    return 0

if __name__ == "__main__":
    main()
"""

DECORATED = """
import scitex_session as stx

@stx.session
def main(x: int = 1):
    return 0

if __name__ == "__main__":
    main()
"""

# start() and close() timed inside one process, with the run dir filled in between.
CLOSE = """
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
import scitex_session as stx

t0 = time.perf_counter()
CONFIG, sys.stdout, sys.stderr, plt, COLORS, rng = stx.start(sys, None, verbose=False)
t_start = time.perf_counter() - t0
blob = os.urandom(100_000)
root = CONFIG["SDIR_RUN"]
for d in range(20):
    sub = os.path.join(root, "data", f"d{{d:02d}}")
    os.makedirs(sub)
    for f in range({files_per_dir}):
        with open(os.path.join(sub, f"f{{f:03d}}.bin"), "wb") as fh:
            fh.write(blob)
os.sync()
t0 = time.perf_counter()
stx.close(CONFIG, exit_status=0, verbose=False)
t_close = time.perf_counter() - t0
sys.__stdout__.write("RESULT " + json.dumps({{"start_s": t_start, "close_s": t_close}}) + "\\n")
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCITEX_SESSION_OUT_DIR"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def wall(python: str, script: Path, reps: int) -> list[float]:
    """Wall time of whole-process runs; the run dirs are removed between runs."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([python, str(script)], cwd=script.parent, env=_env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(script.parent / f"{script.stem}_out", ignore_errors=True)
    return times


def close_cost(python: str, workdir: Path, reps: int, files: int) -> list[dict[str, float]]:
    script = workdir / "closebench.py"
    script.write_text(textwrap.dedent(CLOSE.format(files_per_dir=files // 20)))
    out = []
    for _ in range(reps):
        r = subprocess.run([python, str(script)], cwd=workdir, env=_env(), capture_output=True,
                           text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{python} close benchmark failed:\n{r.stderr[-2000:]}")
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        out.append(json.loads(line[len("RESULT "):]))
        shutil.rmtree(workdir / "closebench_out", ignore_errors=True)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15, help="whole-script runs per variant")
    ap.add_argument("--close-reps", type=int, default=3, help="close() runs per package")
    ap.add_argument("--files", type=int, default=2000, help="files in the run dir (100 kB each)")
    args = ap.parse_args(argv)

    have_pub = PUBREF.exists()
    if not have_pub:
        print(f"published package not found at {PUBREF}: comparison skipped")
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "reps": args.reps, "close_reps": args.close_reps, "files": args.files,
        "bytes": args.files * 100_000,
    }
    with tempfile.TemporaryDirectory(prefix="bench_lifecycle_") as tmp:
        work = Path(tmp)
        bare = work / "bare.py"
        bare.write_text(textwrap.dedent(BARE))
        deco = work / "decorated.py"
        deco.write_text(textwrap.dedent(DECORATED))
        # Interleave so drift in machine load hits every variant alike.
        runs: dict[str, list[float]] = {"bare": [], "ours": [], "bare_pub": [], "published": []}
        for _ in range(args.reps):
            runs["bare"] += wall(sys.executable, bare, 1)
            runs["ours"] += wall(sys.executable, deco, 1)
            if have_pub:
                runs["bare_pub"] += wall(str(PUBREF), bare, 1)
                runs["published"] += wall(str(PUBREF), deco, 1)
        res["wall_s"] = {k: v for k, v in runs.items() if v}
        res["median_wall_s"] = {k: med(v) for k, v in runs.items() if v}
        res["start_overhead_s"] = {"ours": med(runs["ours"]) - med(runs["bare"])}
        if have_pub:
            res["start_overhead_s"]["published"] = med(runs["published"]) - med(runs["bare_pub"])

        ours_close = close_cost(sys.executable, work, args.close_reps, args.files)
        res["close_s"] = {"ours": [r["close_s"] for r in ours_close]}
        res["start_call_s"] = {"ours": [r["start_s"] for r in ours_close]}
        if have_pub:
            pub_close = close_cost(str(PUBREF), work, max(1, args.close_reps // 2), args.files)
            res["close_s"]["published"] = [r["close_s"] for r in pub_close]
            res["start_call_s"]["published"] = [r["start_s"] for r in pub_close]

    res["median_close_s"] = {k: med(v) for k, v in res["close_s"].items()}
    mw, so, mc = res["median_wall_s"], res["start_overhead_s"], res["median_close_s"]
    print(f"{'variant':<12}{'median wall (s)':>16}{'x bare':>9}")
    for k, base in (("bare", "bare"), ("ours", "bare"), ("bare_pub", "bare_pub"),
                    ("published", "bare_pub")):
        if k in mw:
            print(f"{k:<12}{mw[k]:>16.3f}{mw[k] / mw[base]:>9.2f}")
    print(f"whole-script overhead (start+close) vs bare python: ours {so['ours'] * 1000:.0f} ms"
          + (f", published {so['published'] * 1000:.0f} ms" if "published" in so else ""))
    print(f"close() of {args.files} files / {res['bytes'] / 1e6:.0f} MB: ours "
          f"{mc['ours'] * 1000:.1f} ms"
          + (f", published {mc['published'] * 1000:.0f} ms "
             f"({mc['published'] / mc['ours']:.0f}x ours)" if "published" in mc else ""))

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lifecycle.json").write_text(json.dumps(res, indent=2) + "\n")
    _plot(res, RESULTS / "lifecycle.png")
    print(f"wrote {RESULTS / 'lifecycle.json'} and {RESULTS / 'lifecycle.png'}")
    return 0


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    so = res["start_overhead_s"]
    names = list(so)
    a1.bar(names, [so[n] * 1000 for n in names], color=["#0080C0", "#FF4632"][: len(names)])
    a1.axhline(250, ls="--", c="grey", lw=1, label="target 250 ms")
    a1.set_ylabel("ms over bare python")
    a1.set_title("trivial decorated script (start+close)")
    a1.legend()
    mc = res["median_close_s"]
    names = list(mc)
    a2.bar(names, [mc[n] * 1000 for n in names], color=["#0080C0", "#FF4632"][: len(names)])
    a2.axhline(50, ls="--", c="grey", lw=1, label="target 50 ms")
    a2.set_yscale("log")
    a2.set_ylabel("ms (log)")
    a2.set_title(f"close(): {res['files']} files / {res['bytes'] / 1e6:.0f} MB")
    a2.legend()
    fig.suptitle(f"session lifecycle, {res['date']}, {res['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
