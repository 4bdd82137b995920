"""Run one ``archive_tool.sweep.sessions.sweep`` in this (fresh) process and print one JSON line:
the Summary's counts, the wall time of the call, and peak RSS of this process and of its
worker processes (``ru_maxrss`` of RUSAGE_SELF / RUSAGE_CHILDREN: the children figure is
the largest single worker, reaped through the forkserver).

    python benchmarks/run_sweep.py ROOT '{"format": "tar.zst", "workers": 2}'
    python benchmarks/run_sweep.py --restore ROOT '{"workers": 2}'
    python benchmarks/run_sweep.py --profile OUT.prof ROOT '{"workers": 1}'
    python benchmarks/run_sweep.py --restore --profile OUT.prof ROOT '{"workers": 1}'
    python benchmarks/run_sweep.py --marks 5000 ROOT '{"workers": 2}'   # + (results, s) every 5000

Kept separate from the driver so each run starts cold (no imported state, its own RSS).
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _reap_forkserver() -> None:
    # Pool workers are children of multiprocessing's forkserver, which reaps them; their
    # CPU time reaches our RUSAGE_CHILDREN only once we reap the forkserver itself.
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        server._stop()


def main(argv: list[str]) -> None:
    restore = profile = None
    every = 0
    if argv[0] == "--marks":
        every, argv = int(argv[1]), argv[2:]
    if argv[0] == "--restore":
        restore, argv = True, argv[1:]
    if argv[0] == "--profile":
        profile, argv = argv[1], argv[2:]
    root, kwargs = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    t_import = time.perf_counter()
    import archive_tool
    try:
        from archive_tool.restore.many import restore_many
        from archive_tool.sweep.sessions import sweep
    except ImportError:  # an engine checkout of an older layout (bench_ab.py --a)
        try:  # bulk/ (before issue 27)
            from archive_tool.sweep.sessions import restore_many, sweep  # type: ignore[no-redef]
        except ImportError:  # flat (before the subpackages)
            from archive_tool.sweep import restore_many, sweep  # type: ignore[no-redef]

    t0 = time.perf_counter()
    marks: list[tuple[int, float]] = []
    if every:
        # Rate within one run: a cost that grows with the tree shows as a falling rate.
        def on_result(_r: object, n: list[int] = [0]) -> None:  # noqa: B006 - a counter
            n[0] += 1
            if n[0] % every == 0:
                marks.append((n[0], round(time.perf_counter() - t0, 3)))

        kwargs["on_result"] = on_result
    if restore:
        kwargs["max_files"] = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        s = prof.runcall(restore_many if restore else sweep, root, dry_run=False, **kwargs)
        prof.dump_stats(profile)
    elif restore:
        s = restore_many(root, dry_run=False, **kwargs)
    else:
        s = sweep(root, dry_run=False, **kwargs)
    dt = time.perf_counter() - t0
    _reap_forkserver()
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    keep = ("archived", "restored", "failed", "skipped", "candidates", "scanned", "bytes_in",
            "bytes_out", "inodes_in", "backend", "stopped")
    out = {k: s[k] for k in keep if k in s}
    out.update({
        "seconds": round(dt, 4), "import_s": round(t0 - t_import, 4),
        "maxrss_self_mb": round(me.ru_maxrss / 1024, 1),
        "maxrss_child_mb": round(ch.ru_maxrss / 1024, 1),
        "cpu_self_s": round(me.ru_utime + me.ru_stime, 3),
        "cpu_children_s": round(ch.ru_utime + ch.ru_stime, 3),
        "failures": s.get("failures", [])[:3],
        # Which checkout ran: an A/B of two checkouts is worthless if both import the same.
        "engine": archive_tool.__file__,
    })
    if every:
        out["marks"] = marks
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
