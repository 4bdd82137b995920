"""The default worker count from the filesystem the sweep finds (issue 24).

On a local disk a session costs CPU (~1 ms here: read, tar, compress, verify) and its ~60
metadata calls are microseconds: one worker per core is right. On Lustre, GPFS, BeeGFS or
NFS every one of those calls is a round trip to a metadata server (0.1-1 ms), so a worker
spends most of its time waiting and a core can keep many workers busy: latency is
parallel work. So at the start of a sweep we time a few lookups below the root (names that
do not exist, so no cache can answer them) and size the pool by how long a worker waits
per unit of CPU. ``--workers`` always overrides.
"""

from __future__ import annotations

import os
import secrets
import statistics
import time

from archive_tool import fs

# Metadata calls per archived session (benchmarks/md_calls.py, demo tree: ~60), and the
# CPU a session costs a pool, calibrated: ~1 ms of archiving plus what each more process
# costs two shared cores (scheduling, a smaller batch each). Workers are forked and import
# nothing (executors.start_method), so a worker no longer costs ~1,300 calls of start-up;
# re-measured over --workers 1..32 (benchmarks/bench_workers.py, RESULTS.md, issue 24),
# 2.5 ms still puts the default within 10 % of the best fixed count: 16 workers at 200 us
# a call (best 12, 2 % slower than 16), 32 at 1 ms (best 24-32).
CALLS_PER_SESSION = 60
CPU_PER_SESSION = 0.0025
MAX_WORKERS = 32
PROBES = 9


def probe_latency(root: str, probes: int = PROBES) -> float:
    """Median seconds of one metadata round trip below *root*: lstat of random names that
    do not exist (a negative lookup, answered by the server, not a cached inode)."""
    fd = fs.open_trusted_dir(root)
    try:
        times = []
        for _ in range(probes):
            name = f".session-archive-probe-{secrets.token_hex(8)}"
            t0 = time.perf_counter()
            try:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        os.close(fd)


def workers_for(latency: float, cores: int) -> int:
    """Workers that keep *cores* busy when each session waits CALLS x *latency* besides
    its CPU: cores x (1 + wait / cpu), at most MAX_WORKERS; one per core when the wait is
    under half the CPU (a local disk: more processes would only add start-up and memory)."""
    ratio = CALLS_PER_SESSION * latency / CPU_PER_SESSION
    if ratio < 0.5:
        return max(1, cores)
    return max(cores, min(MAX_WORKERS, round(cores * (1 + ratio))))


def adaptive_workers(root: str, cores: int) -> int:
    try:
        return workers_for(probe_latency(root), cores)
    except OSError:
        return max(1, cores)
