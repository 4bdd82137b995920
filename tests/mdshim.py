"""The metadata-call counter for tests: benchmarks/md_calls.py (it builds the LD_PRELOAD
shim ../shared/tools/md_latency.c with gcc), whether it can run here, and the environment
that lets a counted ``python -m archive_tool`` find this checkout."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))  # md_calls, and bench_sweep's floor commands
import md_calls  # noqa: E402

try:
    md_calls.shim_source()
    HAS_SHIM = shutil.which("gcc") is not None
except md_calls.ShimUnavailable:
    HAS_SHIM = False


def bench_env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(BENCH.parent) + os.pathsep + e.get("PYTHONPATH", "")
    return e
