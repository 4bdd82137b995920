"""Count (and optionally slow down) the metadata calls of any command: the ``--trace-calls``
tool of issue 24. It builds the LD_PRELOAD shim ``../shared/tools/md_latency.c`` with gcc
into a temp dir, runs the command under it (every process it starts included: pool
workers, fdfind, tar, zstd) and prints one table row per kind.

    python benchmarks/md_calls.py -- tar -cf /dev/null some/dir
    python benchmarks/md_calls.py --sessions 926 -- python -m archive_tool sweep ROOT --execute
    python benchmarks/md_calls.py --latency-us 200 --sessions 926 -- CMD...   # + wall time
    python benchmarks/md_calls.py --json -- CMD...

Counts are exact and do not depend on the load of this shared machine, unlike times: the
next change to the sweep shows its effect here first. The shim sees calls that go through
libc's exported symbols (Python's os module, GNU tar, coreutils); ``readdir`` is one per
listing opened plus one per getdents64 refill.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_ENV = "MD_LATENCY_SRC"
# The shim lives beside the checkouts (/work/shared/tools), not in the package: it is a
# measuring instrument, and the project ships no native code.
DEFAULT_SHIM = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "tools", "md_latency.c"))

# Columns of the table (issue 24): the kinds tar also does, then the safety steps it skips.
COLUMNS = ("open", "stat", "readdir", "unlink", "other", "total")
OTHER = ("link", "rename", "sync", "attr", "mkdir")
OTHER_LABEL = "link+rename+sync+chmod/chown+mkdir"

_built: dict[str, str] = {}


class ShimUnavailable(RuntimeError):
    """No shim source or no gcc: counting is impossible on this machine."""


def shim_source() -> str:
    src = os.environ.get(SHIM_ENV, DEFAULT_SHIM)
    if not os.path.isfile(src):
        raise ShimUnavailable(f"shim source not found: {src} (set {SHIM_ENV})")
    return src


# Appended to the shim's source before it is built: a child forked without exec (a pool
# worker under multiprocessing's fork or forkserver) starts with a copy of its parent's
# counters and dumped them again at its exit, counting the parent's calls twice (the
# forkserver's ~430 once per worker). exec already starts from zero (tar, zstd, fd).
FORK_RESET = r"""
#include <pthread.h>
static void md_reset_after_fork(void) {
    for (int k = 0; k < K_N; k++) counts[k] = 0;
}
__attribute__((constructor)) static void md_register_fork_reset(void) {
    pthread_atfork(NULL, NULL, md_reset_after_fork);
}
"""


def build_shim(src: str | None = None) -> str:
    """Path of a freshly built ``md_latency.so`` (once per process, in a temp dir)."""
    src = src or shim_source()
    if src in _built:
        return _built[src]
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise ShimUnavailable("no gcc/cc to build the shim")
    out_dir = tempfile.mkdtemp(prefix="md-shim-")
    so = os.path.join(out_dir, "md_latency.so")
    c_src = os.path.join(out_dir, "md_latency.c")
    with open(src) as f, open(c_src, "w") as out:
        out.write(f.read() + FORK_RESET)
    subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", so, c_src, "-ldl", "-lpthread"],
                   check=True)
    _built[src] = so
    return so


def run_counted(cmd: list[str] | str, *, latency_us: int = 0, env: dict[str, str] | None = None,
                cwd: str | None = None, shell: bool = False) -> dict:
    """Run *cmd* under the shim; ``{"counts": {kind: n}, "wall_s": s, "rc": rc}``.
    Every process of the command appends its own lines to one count file at exit."""
    so = build_shim()
    fd, count_file = tempfile.mkstemp(prefix="md-counts-")
    os.close(fd)
    e = dict(os.environ if env is None else env)
    e["LD_PRELOAD"] = so
    e["MD_LATENCY_US"] = str(int(latency_us))
    e["MD_COUNT_FILE"] = count_file
    try:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=e, cwd=cwd, shell=shell,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
        wall = time.perf_counter() - t0
        counts: Counter[str] = Counter()
        with open(count_file) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    counts[parts[1]] += int(parts[2])
    finally:
        os.unlink(count_file)
    return {"counts": dict(counts), "wall_s": round(wall, 3), "rc": rc}


def table_row(counts: dict[str, int], sessions: int | None = None) -> dict[str, float]:
    """The issue's columns from raw per-kind counts; per session when *sessions* is given."""
    row = {k: counts.get(k, 0) for k in ("open", "stat", "readdir", "unlink")}
    row["other"] = sum(counts.get(k, 0) for k in OTHER)
    row["total"] = sum(counts.values())
    if sessions:
        return {k: round(v / sessions, 1) for k, v in row.items()}
    return {k: float(v) for k, v in row.items()}


def format_table(rows: list[tuple[str, dict[str, float]]], per_session: bool) -> str:
    head = "per session" if per_session else "calls"
    cols = [c if c != "other" else OTHER_LABEL for c in COLUMNS]
    lines = [f"| {head} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows:
        vals = [f"{row[c]:,.1f}" if per_session else f"{int(row[c]):,}" for c in COLUMNS]
        lines.append(f"| {name.replace('|', chr(92) + '|')} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, help="divide by this many sessions")
    ap.add_argument("--latency-us", type=int, default=0, help="delay per metadata call (us)")
    ap.add_argument("--name", default=None, help="row label (default: the command)")
    ap.add_argument("--shell", action="store_true", help="run CMD through sh -c (pipes)")
    ap.add_argument("--json", action="store_true", help="print the raw result as JSON")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given (put it after --)")
    try:
        res = run_counted(" ".join(cmd) if a.shell else cmd, latency_us=a.latency_us,
                          shell=a.shell)
    except ShimUnavailable as e:
        print(f"md_calls: {e}", file=sys.stderr)
        return 2
    row = table_row(res["counts"], a.sessions)
    if a.json:
        print(json.dumps({**res, "row": row, "sessions": a.sessions}))
    else:
        label = a.name or " ".join(cmd)[:60]
        print(format_table([(label, row)], bool(a.sessions)))
        print(f"\nraw: {dict(sorted(res['counts'].items()))}; wall {res['wall_s']} s; "
              f"exit {res['rc']}")
    return 0 if res["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
