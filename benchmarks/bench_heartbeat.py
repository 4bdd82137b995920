"""Cost of the session heartbeat (issue 13): CPU per beat, and a short decorated script's
wall time with the heartbeat on (default 60 s) vs off (SCITEX_SESSION_HEARTBEAT=0).

    python benchmarks/bench_heartbeat.py [--beats 3000] [--runs 30]

CPU per beat: a heartbeat thread at a 1 ms interval on a real run dir, the main thread
asleep; process CPU time (user+sys, getrusage) over the window divided by the beats counted
(each beat is one utime call, counted by wrapping it). Wall time: alternating on/off
launches of the same trivial script, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = """
import scitex_session as stx

@stx.session
def main():
    return 0

if __name__ == "__main__":
    main()
"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_per_beat(beats: int) -> dict[str, float]:
    from scitex_session import _heartbeat

    count = 0
    real_utime = os.utime

    class CountingOs:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(os, name)

        @staticmethod
        def utime(*a, **k):  # type: ignore[no-untyped-def]
            nonlocal count
            count += 1
            return real_utime(*a, **k)

    _heartbeat.os = CountingOs()  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        run.mkdir()
        idle0, t0 = cpu(), time.monotonic()
        time.sleep(1.0)
        idle = cpu() - idle0  # baseline: the main thread asleep, no heartbeat
        _heartbeat.begin("bench", run, 0.001)
        c0, t0 = cpu(), time.monotonic()
        while count < beats:
            time.sleep(0.05)
        c1, t1 = cpu(), time.monotonic()
        n = count
        _heartbeat.end("bench")
    used = (c1 - c0) - idle * (t1 - t0)
    return {"beats": n, "seconds": round(t1 - t0, 3), "cpu_s": round(c1 - c0, 4),
            "cpu_us_per_beat": round(1e6 * used / n, 1),
            "cpu_share_at_60s": used / n / 60.0}


def wall(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "exp.py"
        script.write_text(SCRIPT)
        base = {k: v for k, v in os.environ.items() if k != "SCITEX_SESSION_OUT_DIR"}
        times: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(2 * runs + 2):
            mode = "on" if i % 2 == 0 else "off"
            env = dict(base, SCITEX_SESSION_HEARTBEAT="60" if mode == "on" else "0")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(script)], env=env, cwd=d, check=True,
                           capture_output=True)
            if i >= 2:  # first pair warms the page cache
                times[mode].append(time.perf_counter() - t0)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {"runs_each": runs, "median_on_ms": round(1e3 * on, 1),
            "median_off_ms": round(1e3 * off, 1), "diff_ms": round(1e3 * (on - off), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beats", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    print(json.dumps({"cpu": cpu_per_beat(a.beats), "wall": wall(a.runs)}, indent=2))


if __name__ == "__main__":
    main()
