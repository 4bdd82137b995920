"""Sweep benchmarks: our sweep against GNU tar baselines and the published scitex-session
0.3.1, on fresh ``cp -a`` copies of one deterministic corpus; scaling with N; discovery;
group-commit batch size; bulk restore; a cProfile of one run. Writes one JSON per run to
``benchmarks/results/`` (``benchmarks/render.py`` turns it into RESULTS.md and PNGs).

    python benchmarks/bench_sweep.py --quick           # < 5 min: small N, one repetition
    python benchmarks/bench_sweep.py                   # full: N=5000 x3, scaling 1k/10k/100k
    python benchmarks/bench_sweep.py --sections scaling --sizes 100000

Page cache: every contender runs on a tree copied just before (``cp -a``) and flushed with
``sync``: warm cache (metadata and data in RAM), no dirty pages. We do not drop caches —
the machine is shared. Repetitions are interleaved (rep 1 of every contender, then rep 2,
...) and ratios are taken within a repetition, so load from other processes hits both
sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import pstats
import shlex
import shutil
import subprocess
import sys
import time

import corpus
from corpus import WORK, fd_args, fresh_copy, log, rm_tree

HERE = corpus.HERE
RESULTS = os.path.join(HERE, "results")
RUN_SWEEP = os.path.join(HERE, "run_sweep.py")
PUBREF = "/opt/pubref/bin/python"
CORES = len(os.sched_getaffinity(0))
FD = shutil.which("fdfind") or shutil.which("fd") or "fdfind"
HAVE_FD = bool(shutil.which("fdfind") or shutil.which("fd"))
NO_FD_NOTE = ("fd-find is not installed: the baselines that list sessions with fd (xargs, "
              "tar streams) are skipped, ours discover with the Python walker")

# ---------------------------------------------------------------------- contenders

# Per-session GNU tar via xargs, same set of sessions (fd with our discovery arguments),
# archive next to the session, then delete it: the job our sweep does, minus verification
# and durability. ``-n1``: one shell per session, the usual idiom. ``-n64``: a loop inside
# one shell per 64 sessions — a stronger baseline (no sh start per session).
_TAR_GZ = 'tar -C "${d%/*}" -cf - "${d##*/}" | gzip -1 > "$d.tar.gz" && rm -rf "$d"'
_TAR_ZST = 'tar -C "${d%/*}" -cf - "${d##*/}" | zstd -q -3 > "$d.tar.zst" && rm -rf "$d"'


def _fd_list(root: str) -> str:
    return " ".join([shlex.quote(FD), *map(shlex.quote, fd_args()), "--print0", shlex.quote(root)])


def xargs_cmd(root: str, per_session: str, n: int) -> str:
    body = f'for d in "$@"; do {per_session} || exit 255; done'
    return f"{_fd_list(root)} | xargs -0 -r -P{CORES} -n{n} sh -c {shlex.quote(body)} _"


def floor2_cmd(root: str, out: str) -> str:
    # Two GNU tar streams (one per core) over the same sessions split round-robin, each
    # deleting as it goes and piped to its own zstd: the floor for a 2-worker job.
    lst = shlex.quote(out + ".list")
    part = shlex.quote(out + ".part.")
    streams = " & ".join(
        f"tar --null -T {part}a{c} --remove-files -cf - 2>/dev/null | zstd -q -3 -T1 > "
        f"{shlex.quote(out + '.' + c)}" for c in "ab")
    return (f"{_fd_list(root)} > {lst} && split -n r/2 -t '\\0' {lst} {part} && "
            f"{{ {streams} & wait; }}")


def floor_cmd(root: str, out: str) -> str:
    # One GNU tar stream over every finished session, deleting as it goes, piped to zstd:
    # no per-session files, no verification, no fsync — the floor for this job.
    return (f"{_fd_list(root)} | tar --null -T - --remove-files -cf - 2>/dev/null"
            f" | zstd -q -3 -T1 > {shlex.quote(out)}")


def pub_compress_cmd(flat: str) -> str:
    return (f"{PUBREF} -m scitex_session.archive compress {shlex.quote(flat)} --no-dry-run"
            f" --max-dirs 0 --format tar.gz")


def ours_compress_cmd(flat: str, fmt: str) -> str:
    return (f"{shlex.quote(sys.executable)} -m archive_tool compress {shlex.quote(flat)} --execute"
            f" --max-dirs 0 -q -f {fmt}")


def contenders(quick: bool) -> list[dict]:
    """What runs on the main corpus. ``kind``: ours (in a fresh python via run_sweep.py),
    shell (a command line, the tree corpus) or flat (a command line, the flat corpus)."""
    c: list[dict] = []
    for w in range(1, CORES + 1):
        c.append({"name": f"ours tar.zst w{w}", "kind": "ours",
                  "kw": {"format": "tar.zst", "workers": w}})
    c += [
        {"name": f"ours tar.zst w{CORES} track-bytes", "kind": "ours",
         "kw": {"format": "tar.zst", "workers": CORES, "track_bytes": True}},
        {"name": f"ours tar.zst w{CORES} scandir", "kind": "ours",
         "kw": {"format": "tar.zst", "workers": CORES, "use_fd": False}},
        {"name": f"ours tar.gz w{CORES}", "kind": "ours",
         "kw": {"format": "tar.gz", "workers": CORES}},
        {"name": f"xargs -P{CORES} tar|gzip -1", "kind": "shell",
         "cmd": lambda r, o: xargs_cmd(r, _TAR_GZ, 1), "format": "tar.gz"},
        {"name": f"xargs -P{CORES} -n64 tar|gzip -1", "kind": "shell",
         "cmd": lambda r, o: xargs_cmd(r, _TAR_GZ, 64), "format": "tar.gz"},
        {"name": f"xargs -P{CORES} tar|zstd", "kind": "shell",
         "cmd": lambda r, o: xargs_cmd(r, _TAR_ZST, 1), "format": "tar.zst"},
        {"name": "floor: one tar --remove-files | zstd", "kind": "shell",
         "cmd": floor_cmd, "format": "one stream"},
        {"name": "floor: two tar --remove-files | zstd streams", "kind": "shell",
         "cmd": floor2_cmd, "format": "two streams"},
        {"name": "flat: ours compress tar.gz", "kind": "flat",
         "cmd": lambda r, o: ours_compress_cmd(r, "tar.gz"), "format": "tar.gz"},
        {"name": "flat: ours compress tar.zst", "kind": "flat",
         "cmd": lambda r, o: ours_compress_cmd(r, "tar.zst"), "format": "tar.zst"},
    ]
    for d in ("syncfs", "fsync"):
        # The durability knob (archive_tool.engine.commit.DURABILITY_ENV); "+ writer": while
        # another process dirties the same filesystem at WRITER_MBPS (section "writer").
        for w in (False, True):
            c.append({"name": f"ours tar.zst w{CORES} {d}" + (" + writer" if w else ""),
                      "kind": "ours", "kw": {"format": "tar.zst", "workers": CORES},
                      "env": {DURABILITY_ENV: d}, "writer": w})
    if os.path.exists(PUBREF):
        c.append({"name": "flat: published 0.3.1 compress tar.gz", "kind": "flat",
                  "cmd": lambda r, o: pub_compress_cmd(r), "format": "tar.gz"})
    else:
        log(f"{PUBREF} not found: the published scitex-session 0.3.1 is skipped")
    if not HAVE_FD:
        log(NO_FD_NOTE)
        c = [x for x in c if x["kind"] != "shell"]
    return c


WRITER_MBPS = 100
DURABILITY_ENV = "SESSION_ARCHIVE_DURABILITY"
_WRITER = """
import os, sys, time
path, mbps, limit = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ring = 1 << 30  # rewrite a 1 GiB file: the disk does not fill, pages stay dirty
buf = os.urandom(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
t0 = last = time.monotonic()
i = 0
while time.monotonic() - t0 < limit:
    os.pwrite(fd, buf, (i << 20) % ring)
    i += 1
    now = time.monotonic()
    if now - last >= 0.5:  # progress for the driver, which SIGKILLs us (pwrite may block)
        print(f"{i} {now - t0:.3f}", flush=True)
        last = now
    ahead = i / mbps - (now - t0)
    if ahead > 0:
        time.sleep(ahead)
"""


class Writer:
    """A concurrent writer dirtying the benchmark's filesystem at *mbps* MB/s (page cache,
    no fsync: the kernel writes back as it likes), for at most *limit* seconds."""

    def __init__(self, mbps: float = WRITER_MBPS, limit: float = 300.0) -> None:
        self.path = os.path.join(WORK, "writer.dat")
        self.p = subprocess.Popen([sys.executable, "-c", _WRITER, self.path, str(mbps),
                                   str(limit)], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let dirty pages build up before the contender starts

    def stop(self) -> float:
        """Stop it; returns the MB/s it achieved (a writer throttled by the kernel's dirty
        limits writes less than asked: that is part of the measurement)."""
        self.p.kill()
        out, _ = self.p.communicate(timeout=60)
        try:
            n, dt = out.strip().splitlines()[-1].split()
            return round(int(n) * 1.048576 / float(dt), 1)
        except (ValueError, IndexError):
            return float("nan")


# ---------------------------------------------------------------------- running things


def run_proc(cmd: list[str] | str, capture: bool = False, env: dict | None = None) -> dict:
    """Run *cmd*, return wall seconds, exit status and the peak RSS of its process tree
    (``wait4``'s ru_maxrss: the largest single process among it and its descendants)."""
    t0 = time.perf_counter()
    # cwd=WORK: from the repo root, ``python -m scitex_session...`` would import OUR
    # scitex_session package (cwd first on sys.path) instead of the published one.
    p = subprocess.Popen(cmd, shell=isinstance(cmd, str), cwd=WORK,
                         executable="/bin/bash" if isinstance(cmd, str) else None,
                         stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                         stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
                         env={**os.environ, **env} if env else None)
    out = p.stdout.read() if capture else b""
    err = p.stderr.read() if capture else b""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 4), "rc": p.returncode, "maxrss_tree_mb": round(ru.ru_maxrss / 1024, 1),
            "stdout": out.decode(errors="replace"), "stderr": err.decode(errors="replace")[-2000:]}


def left_sessions(root: str, flat: bool = False) -> int:
    from archive_tool.sweep.discover import Discovery

    return sum(1 for _ in Discovery(root, flat, use_fd=HAVE_FD).paths())


def run_ours(root: str, kw: dict, extra: list[str] | None = None,
             env: dict | None = None) -> dict:
    r = run_proc([sys.executable, RUN_SWEEP, *(extra or []), root, json.dumps(kw)], capture=True,
                 env=env)
    if r["rc"] != 0:
        raise RuntimeError(f"run_sweep failed: {r['stderr']}")
    inner = json.loads(r["stdout"].strip().splitlines()[-1])
    inner.update(wall_s=r["wall_s"], maxrss_tree_mb=r["maxrss_tree_mb"])
    return inner


def run_contender(c: dict, src: str, n_sessions: int, rep: int) -> dict:
    work = os.path.join(WORK, "run")
    root = os.path.join(work, "tree")
    copy_s = fresh_copy(src, root)
    res: dict = {"name": c["name"], "rep": rep, "copy_s": round(copy_s, 3),
                 "loadavg": os.getloadavg()[0]}
    writer = Writer() if c.get("writer") else None
    try:
        if c["kind"] == "ours":
            r = run_ours(root, c["kw"], c.get("extra"), c.get("env"))
            res.update(r)
            res["sessions"] = r["archived"]
        else:
            out = os.path.join(work, "floor.tar.zst")
            subprocess.run(f"rm -rf -- {shlex.quote(out)}*", shell=True, check=True)
            r = run_proc(c["cmd"](root, out))
            res.update({k: r[k] for k in ("wall_s", "rc", "maxrss_tree_mb")})
            res["sessions"] = n_sessions
    finally:
        if writer is not None:
            res["writer_mbps"] = writer.stop()
    res["left"] = left_sessions(root, flat=c["kind"] == "flat")
    res["sessions_per_s"] = round(res["sessions"] / res["wall_s"], 1)
    ok = res["left"] == 0 and res.get("rc", 0) == 0 and not res.get("failed")
    res["ok"] = ok
    log(f"  {c['name']:<44} rep {rep}: {res['wall_s']:7.2f} s  {res['sessions_per_s']:8.1f} sessions/s"
        f"{'' if ok else '  NOT OK: ' + json.dumps({k: res.get(k) for k in ('rc', 'left', 'failed')})}")
    rm_tree(root)
    return res


# ---------------------------------------------------------------------- sections


def section_contenders(n: int, reps: int, quick: bool) -> dict:
    tree, meta = corpus.pristine(n)
    flat, n_flat = corpus.flat_pristine(n)
    n_tree = corpus.session_count(meta)
    cs = [c for c in contenders(quick) if "env" not in c]  # those run in section "writer"
    runs = []
    for rep in range(1, reps + 1):
        log(f"contenders N={n} ({n_tree} finished sessions), repetition {rep}/{reps}")
        for c in cs:
            src, k = (flat, n_flat) if c["kind"] == "flat" else (tree, n_tree)
            r = run_contender(c, src, k, rep)
            r["kind"], r["format"] = c["kind"], c.get("format") or c["kw"]["format"]
            runs.append(r)
    return {"n": n, "finished_sessions": n_tree, "flat_sessions": n_flat, "reps": reps,
            "runs": runs, "commands": {c["name"]: (json.dumps(c["kw"]) if "kw" in c else
                                                   c["cmd"]("ROOT", "OUT.tar.zst")) for c in cs}}


def section_batch(n: int, reps: int, sizes: list[int]) -> dict:
    tree, meta = corpus.pristine(n)
    runs = []
    for rep in range(1, reps + 1):
        log(f"batch sizes N={n}, repetition {rep}/{reps}")
        for b in sizes:
            c = {"name": f"batch {b}", "kind": "ours",
                 "kw": {"format": "tar.zst", "workers": CORES, "batch_size": b}}
            r = run_contender(c, tree, corpus.session_count(meta), rep)
            r["batch_size"] = b
            runs.append(r)
    return {"n": n, "runs": runs}


def section_ab(specs: list[tuple[str, str, int, int]]) -> dict:
    """Paired A/B runs for the ratios that matter most on a noisy shared machine: A and B
    alternate (AB, BA, AB, ...) so drifting load hits both; each pair gives B/A."""
    byname = {c["name"]: c for c in contenders(False)}
    out = []
    for a_name, b_name, n, pairs in specs:
        if a_name not in byname or b_name not in byname:
            log(f"A/B {a_name} vs {b_name}: skipped (contender unavailable)")
            continue
        tree, meta = corpus.pristine(n)
        k = corpus.session_count(meta)
        flat, k_flat = corpus.flat_pristine(n)
        log(f"A/B N={n}: {a_name}  vs  {b_name}, {pairs} pairs")
        ratios, walls = [], {a_name: [], b_name: []}
        for i in range(pairs):
            order = (a_name, b_name) if i % 2 == 0 else (b_name, a_name)
            w = {}
            for name in order:
                c = byname[name]
                src, kk = (flat, k_flat) if c["kind"] == "flat" else (tree, k)
                r = run_contender(c, src, kk, i + 1)
                if not r["ok"]:
                    raise RuntimeError(f"{name} did not do the job: {r}")
                w[name] = r["wall_s"]
                walls[name].append(r["wall_s"])
            ratios.append(round(w[b_name] / w[a_name], 4))
        out.append({"a": a_name, "b": b_name, "n": n, "sessions": k, "pairs": pairs,
                    "ratios_b_over_a": ratios, "walls": walls})
    return {"pairs": out}


def _time_min(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


def discovery_times(root: str, repeat: int = 3) -> dict:
    """Best of *repeat* (warm cache): fd's own run, our fd-backed and scandir discovery
    (consumed in this process, as the sweep consumes them), and GNU find."""
    from archive_tool.names import DISCOVERY_REGEX, RUNNING_STATE
    from archive_tool.sweep.discover import Discovery

    body = DISCOVERY_REGEX.lstrip("^").rstrip("$")
    find = (f"find {shlex.quote(root)} -name {RUNNING_STATE} -prune -o -type d -regextype posix-extended"
            f" -regex {shlex.quote('.*/' + body)} -print -prune > /dev/null")
    fd_own = f"{_fd_list(root)} > /dev/null"
    counts = {b: sum(1 for _ in Discovery(root, False, use_fd=b == "fd").paths()) for b in ("fd", "scandir")}
    if not HAVE_FD:
        return {"ours_scandir_s": _time_min(lambda: sum(1 for _ in Discovery(root, False, use_fd=False).paths()), repeat),
                "find_s": _time_min(lambda: subprocess.run(find, shell=True, check=True), repeat),
                "found": counts, "find_cmd": find, "note": NO_FD_NOTE}
    return {
        "fd_own_s": _time_min(lambda: subprocess.run(fd_own, shell=True, check=True), repeat),
        "ours_fd_s": _time_min(lambda: sum(1 for _ in Discovery(root, False, use_fd=True).paths()), repeat),
        "ours_scandir_s": _time_min(lambda: sum(1 for _ in Discovery(root, False, use_fd=False).paths()), repeat),
        "find_s": _time_min(lambda: subprocess.run(find, shell=True, check=True), repeat),
        "found": counts, "fd_own_cmd": fd_own, "find_cmd": find,
    }


def section_scaling(sizes: list[int]) -> dict:
    points = []
    for n in sizes:
        n_fit = corpus.fit_to_disk(n)
        if n_fit < n:
            log(f"scaling: N={n} does not fit, using N={n_fit}")
            n = n_fit
        tree, meta = corpus.pristine(n)
        log(f"scaling N={n}: discovery")
        disc = discovery_times(tree)
        c = {"name": f"scaling N={n}", "kind": "ours", "kw": {"format": "tar.zst", "workers": CORES},
             "extra": ["--marks", str(max(100, n // 20))]}
        r = run_contender(c, tree, corpus.session_count(meta), 1)
        r.update(n=n, discovery=disc, generate_s=meta.get("generate_s"),
                 sec_per_1k=round(1000 * r["wall_s"] / max(1, r["sessions"]), 3))
        points.append(r)
    return {"points": points}


def section_restore(n: int, reps: int) -> dict:
    """Bulk restore of the same tar.gz archives (made once by our flat compress): ours
    ``session-archive extract --execute`` vs the published ``extract``, each on its own
    copy of the archive dir; archives are kept (neither removes them)."""
    flat, n_flat = corpus.flat_pristine(n)
    archives = flat + "-archives"
    if not os.path.isfile(archives + ".json"):
        fresh_copy(flat, archives)
        r = run_proc(ours_compress_cmd(archives, "tar.gz"))
        assert r["rc"] == 0 and left_sessions(archives, flat=True) == 0, r
        with open(archives + ".json", "w") as f:
            json.dump({"archives": n_flat}, f)
    ours = f"{shlex.quote(sys.executable)} -m archive_tool extract"
    cmds = {"ours extract": lambda d: f"{ours} {shlex.quote(d)} --execute --max-files 0 -q"}
    # The default is one worker per core; one worker tells whether that is a win here.
    cmds["ours extract -j1"] = lambda d: (f"{ours} {shlex.quote(d)} --execute"
                                          " --max-files 0 -q -j 1")
    # Removing each archive once its restore is durable: one syncfs per batch (issue 15).
    cmds["ours extract --remove-archive"] = lambda d: (
        f"{ours} {shlex.quote(d)} --execute --max-files 0 -q --remove-archive")
    cmds["ours extract --remove-archive + writer"] = cmds["ours extract --remove-archive"]
    # The same with the other durability strategy (one syncfs per batch).
    cmds["ours extract --remove-archive syncfs"] = lambda d: (
        f"{DURABILITY_ENV}=syncfs " + cmds["ours extract --remove-archive"](d))
    cmds["ours extract --remove-archive syncfs + writer"] = cmds["ours extract --remove-archive syncfs"]
    # The floor for a restore on this filesystem: two GNU tar -x streams over the same
    # archives (no checks, no sync). Creating the inodes is most of any restore's time.
    cmds["floor: two tar -xzf streams"] = lambda d: (
        f"cd {shlex.quote(d)} && ls | grep '[.]tar[.]gz$' > ../restore.list && "
        f"split -n r/2 ../restore.list ../restore.part. && "
        f"{{ xargs -n1 tar -xzf < ../restore.part.aa & xargs -n1 tar -xzf < ../restore.part.ab"
        f" & wait; }} && rm ../restore.list ../restore.part.*")
    if os.path.exists(PUBREF):
        cmds["published 0.3.1 extract"] = lambda d: (
            f"{PUBREF} -m scitex_session.archive extract {shlex.quote(d)} --no-dry-run"
            f" --max-files 0 --no-remove-archive")
        cmds["published 0.3.1 extract + writer"] = cmds["published 0.3.1 extract"]
    else:
        log(f"{PUBREF} not found: the published scitex-session 0.3.1 is skipped")
    runs = []
    names = list(cmds)
    for rep in range(1, reps + 1):
        # Rotated order per repetition: drifting load from other processes hits all alike.
        for name in names[rep - 1:] + names[:rep - 1]:
            cmd = cmds[name]
            d = os.path.join(WORK, "run", "restore")
            fresh_copy(archives, d)
            load = os.getloadavg()[0]
            writer = Writer() if name.endswith("+ writer") else None
            try:
                r = run_proc(cmd(d))
            finally:
                mbps = writer.stop() if writer is not None else None
            restored = left_sessions(d, flat=True)
            r = {"name": name, "rep": rep, "wall_s": r["wall_s"], "rc": r["rc"],
                 "maxrss_tree_mb": r["maxrss_tree_mb"], "restored": restored,
                 "ok": r["rc"] == 0 and restored == n_flat, "loadavg": load,
                 "writer_mbps": mbps, "sessions_per_s": round(restored / r["wall_s"], 1)}
            log(f"  restore {name:<40} rep {rep}: {r['wall_s']:7.2f} s  "
                f"{r['sessions_per_s']:8.1f} archives/s{'' if r['ok'] else '  NOT OK'}")
            runs.append(r)
            rm_tree(d)
    return {"n_archives": n_flat, "format": "tar.gz", "reps": reps, "runs": runs,
            "commands": {k: v("ROOT") for k, v in cmds.items()}}


def section_writer(n: int, reps: int) -> dict:
    """Sweep tar.zst on CORES workers, each durability strategy with and without another
    process writing WRITER_MBPS MB/s to the same filesystem; the four configurations run in
    a rotated order per repetition. The drop is median(with writer) / median(without) - 1."""
    tree, meta = corpus.pristine(n)
    k = corpus.session_count(meta)
    byname = {c["name"]: c for c in contenders(False)}
    names = [f"ours tar.zst w{CORES} {d}" + w for d in ("syncfs", "fsync") for w in ("", " + writer")]
    runs = []
    for rep in range(1, reps + 1):
        log(f"writer N={n}, repetition {rep}/{reps}")
        for name in names[rep - 1:] + names[:rep - 1]:
            r = run_contender(byname[name], tree, k, rep)
            runs.append(r)
    rm_tree(os.path.join(WORK, "writer.dat"))
    return {"n": n, "sessions": k, "reps": reps, "writer_target_mbps": WRITER_MBPS,
            "runs": runs}


def _many_files_session(root: str, files: int) -> None:
    """One finished session of *files* small files (100 a dir) under *root*."""
    sess = os.path.join(root, "proj", "x_out", "FINISHED_SUCCESS",
                        "2026Y-01M-02D-03h04m05s_MANY-main")
    payload = b"step,value\n" + b"0,0.5\n" * 12
    for i in range(files):
        d = os.path.join(sess, f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:06d}.csv"), "wb") as f:
            f.write(payload)
    old = time.time() - 86400
    for dirpath, _dirs, names in os.walk(sess, topdown=False):
        for name in names:
            os.utime(os.path.join(dirpath, name), (old, old))
        os.utime(dirpath, (old, old))


def section_manyfiles(sizes: list[int]) -> dict:
    """Peak RSS of sweeping ONE session of N small files (tar.zst): a session over
    IN_MEMORY_MAX_ENTRIES entries streams its bytes; what grows with N is the manifest.
    workers=1 runs the batch in the sweeping process, so RUSAGE_SELF is the worker's peak:
    a forkserver pool's workers are not our children, and RUSAGE_CHILDREN misses them."""
    points = []
    for files in sizes:
        root = os.path.join(WORK, "run", f"many-{files}")
        rm_tree(root)
        t0 = time.perf_counter()
        _many_files_session(root, files)
        subprocess.run(["sync"], check=True)
        gen = time.perf_counter() - t0
        r = run_ours(root, {"format": "tar.zst", "workers": 1})
        left = left_sessions(root)
        points.append({"files": files, "generate_s": round(gen, 2), "wall_s": r["wall_s"],
                       "archived": r["archived"], "left": left,
                       "maxrss_worker_mb": r["maxrss_self_mb"]})
        log(f"  one session of {files} files: {r['wall_s']:.1f} s, worker peak RSS "
            f"{r['maxrss_self_mb']} MB")
        rm_tree(root)
    return {"points": points}


def section_durability(reps: int, batch: int = 128, size: int = 24_000) -> dict:
    """The one step the two durability strategies differ in, isolated: make a batch of
    *batch* freshly written tmp archives of *size* bytes (a compressed real-shape session)
    durable with commit.make_durable, "syncfs" vs "fsync", with and without the writer.
    In this process (one worker's view), strategies and writer alternate per repetition."""
    from archive_tool.engine import commit

    d = os.path.join(WORK, "run", "durability")
    rm_tree(d)
    os.makedirs(d)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    runs = []
    combos = [(st, w) for st in ("syncfs", "fsync") for w in (False, True)]
    old = os.environ.get(DURABILITY_ENV)
    try:
        for rep in range(1, reps + 1):
            for st, w in combos[rep % 4:] + combos[:rep % 4]:
                subprocess.run(["sync"], check=True)
                writer = Writer() if w else None
                try:
                    tmps = [commit.open_tmp(dfd, os.path.join(d, f"a{i}.tar.zst"))
                            for i in range(batch)]
                    for t in tmps:
                        os.write(t.fd, os.urandom(size))
                    os.environ[DURABILITY_ENV] = st
                    t0 = time.perf_counter()
                    commit.make_durable(tmps)
                    dt_s = time.perf_counter() - t0
                finally:
                    mbps = writer.stop() if writer is not None else None
                for t in tmps:
                    t.close()
                runs.append({"strategy": st, "writer": w, "rep": rep, "seconds": round(dt_s, 4),
                             "writer_mbps": mbps, "loadavg": os.getloadavg()[0]})
                log(f"  durability {st:<6} writer={'on ' if w else 'off'} rep {rep}: "
                    f"{dt_s * 1000:8.1f} ms for {batch} archives")
    finally:
        os.close(dfd)
        if old is None:
            os.environ.pop(DURABILITY_ENV, None)
        else:
            os.environ[DURABILITY_ENV] = old
        rm_tree(d)
        rm_tree(os.path.join(WORK, "writer.dat"))
    return {"batch": batch, "size": size, "reps": reps, "runs": runs}


def section_profile(n: int, top: int = 18, where: str = WORK) -> dict:
    tree, meta = corpus.pristine(n)
    root = os.path.join(where, "bench-profile-tree")
    fresh_copy(tree, root)
    prof = os.path.join(WORK, "sweep.prof")
    r = run_ours(root, {"format": "tar.zst", "workers": 1}, extra=["--profile", prof])
    rm_tree(root)
    out = profile_rows(prof, top)
    out.update({"n": n, "sessions": r["archived"], "where": where,
                "cpu_s": r["cpu_self_s"], "wall_s": r["seconds"],
                "stages_ms": stage_table(prof, r["archived"]),
                "command": "python benchmarks/run_sweep.py --profile OUT.prof ROOT "
                           "'{\"format\": \"tar.zst\", \"workers\": 1}'"})
    return out


# Stages of one session's path, as (label, file, function): cumulative time of each, per
# session. remove_source includes the re-check; "delete" is it minus the re-check.
STAGES = [
    ("discover + plan (parent)", "plan.py", "tasks"),
    ("lock session (flock, archive-exists check)", "lock.py", "lock_session"),
    ("scan (manifest: scandir + lstat)", "scan.py", "scan_fd"),
    ("open tmp archive (O_TMPFILE)", "commit.py", "open_tmp"),
    ("read files + tar headers", "tarwrite.py", "write_tar"),
    ("compress (zstd)", "formats.py", "compress_bytes"),
    ("write archive", "single.py", "_write_all"),
    ("verify (read back + decompress + compare)", "single.py", "_write_in_memory"),
    ("durable (syncfs / fsync, per batch)", "commit.py", "make_durable"),
    ("link to final name", "commit.py", "publish"),
    ("fsync archive dirs", "commit.py", "fsync_dirs"),
    ("re-check source unchanged", "removesource.py", "_unchanged"),
    ("delete source (unlink + rmdir)", "removesource.py", "remove_source"),
    ("unlock", "single.py", "unlock"),
    ("whole sweep", "sweep.py", "sweep"),
]


def stage_table(prof: str, sessions: int) -> list[dict]:
    """Milliseconds per session of each stage in STAGES (cProfile cumulative times)."""
    st = pstats.Stats(prof)
    cum: dict[tuple[str, str], float] = {}
    for (fn, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        if "archive_tool" in fn:
            key = (os.path.basename(fn), func)
            cum[key] = cum.get(key, 0.0) + ct
    rows = {label: cum.get((f, fn), 0.0) for label, f, fn in STAGES}
    inner = ("write archive", "read files + tar headers", "compress (zstd)")
    v = "verify (read back + decompress + compare)"
    rows[v] -= sum(rows[k] for k in rows if k.startswith(inner))  # _write_in_memory minus parts
    rows["delete source (unlink + rmdir)"] -= rows["re-check source unchanged"]
    total = rows["whole sweep"]
    out = [{"stage": k, "ms_per_session": round(1000 * t / max(1, sessions), 3),
            "pct": round(100 * t / total, 1) if total else None} for k, t in rows.items()]
    accounted = sum(t for k, t in rows.items() if k != "whole sweep")
    out.insert(-1, {"stage": "other (pool loop, batching, accounting)",
                    "ms_per_session": round(1000 * (total - accounted) / max(1, sessions), 3),
                    "pct": round(100 * (total - accounted) / total, 1) if total else None})
    return out


def profile_rows(prof: str, top: int = 18) -> dict:
    """Top functions by own time, and the engine's stages (archive_tool functions) by
    cumulative time — the second list says which stage of a sweep bounds it."""
    st = pstats.Stats(prof)
    rows = []
    for (fn, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append({"func": f"{os.path.basename(fn)}:{line}({func})" if line else func,
                     "file": fn, "ncalls": nc, "tottime": round(tt, 4), "cumtime": round(ct, 4)})
    by_tt = sorted(rows, key=lambda x: -x["tottime"])[:top]
    stages = sorted((r for r in rows if "archive_tool" in r["file"]), key=lambda x: -x["cumtime"])[:top + 6]
    for r in rows:
        del r["file"]
    return {"seconds_profiled": round(st.total_tt, 3), "top_tottime": by_tt, "stages_cumtime": stages}


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd="/")
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "n/a"


def machine() -> dict:
    os.makedirs(WORK, exist_ok=True)
    df = subprocess.run(["df", "-T", WORK], capture_output=True, text=True).stdout.strip().splitlines()
    model = "n/a"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "n/a")
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "cores": CORES, "cpu": model, "mem_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "df_T": df[-1] if df else "n/a",
        "filesystem": df[-1].split()[1] if df else "n/a",
        "work_dir": WORK, "loadavg_start": os.getloadavg(),
        "tools": {"fd": _first_line([FD, "--version"]), "tar": _first_line(["tar", "--version"]),
                  "zstd": _first_line(["zstd", "--version"]), "gzip": _first_line(["gzip", "--version"]),
                  "published": (_first_line([PUBREF, "-c", "import importlib.metadata as m;"
                                             "print(m.version('scitex-session'))"])
                                if os.path.exists(PUBREF) else "absent")},
    }


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small N, one repetition (< 5 min)")
    ap.add_argument("--n", type=int, default=None, help="sessions for contenders/batch/restore (5000; quick 1000)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (3; quick 1)")
    ap.add_argument("--sizes", default=None, help="scaling N list (1000,10000,100000; quick 500,1000,2000)")
    ap.add_argument("--batch-sizes", default="16,64,128,512")
    ap.add_argument("--sections", default="copy,contenders,ab,batch,scaling,restore,profile",
                    help="comma list; discovery is measured inside scaling; also: writer "
                         "(durability strategies under a concurrent writer), ratios (issue "
                         "15's paired ratios), manyfiles (RSS of one 100k-file session), durability (the "
                         "durable step alone, syncfs vs fsync, with/without the writer)")
    ap.add_argument("--out", default=None, help="JSON path (default results/sweep-<date>[-quick].json;"
                    " results/<corpus>-<date>.json for another corpus)")
    ap.add_argument("--corpus", default="demo", choices=("demo", "real"),
                    help="session shape (archive_tool.demo.SHAPES): demo ~7 KB a session, real "
                         "~73 KB (logs, CSV, an incompressible 2-40 KB plot; issue 15)")
    a = ap.parse_args(argv)
    corpus.use_shape(a.corpus)
    if not HAVE_FD:
        log(NO_FD_NOTE)
    n = a.n or (1000 if a.quick else 5000)
    reps = a.reps or (1 if a.quick else 3)
    sizes = [int(x) for x in (a.sizes or ("500,1000,2000" if a.quick else "1000,10000,100000")).split(",")]
    sections = set(a.sections.split(","))
    n = corpus.fit_to_disk(n)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # render.py reads sweep-*.json into the generated tables (demo corpus only); the other
    # corpus gets its own files, summarised by hand in RESULTS.md.
    kind = "sweep" if a.corpus == "demo" else a.corpus
    out = a.out or os.path.join(RESULTS, f"{kind}-{stamp}{'-quick' if a.quick else ''}.json")
    os.makedirs(RESULTS, exist_ok=True)
    res: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "quick": a.quick,
                 "argv": ["python", "benchmarks/bench_sweep.py", *(argv if argv is not None else sys.argv[1:])],
                 "machine": machine(), "corpus": a.corpus, "have_fd": HAVE_FD,
                 "page_cache": "warm: cp -a copy then sync before each run; no drop_caches"}

    def save() -> None:
        res["machine"]["loadavg_end"] = os.getloadavg()
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, out)

    t0 = time.perf_counter()
    if "copy" in sections:
        res["copy_vs_generate"] = corpus.copy_vs_generate(min(n, 2000))
        log(f"copy vs generate: {res['copy_vs_generate']}")
        save()
    if "contenders" in sections:
        res["contenders"] = section_contenders(n, reps, a.quick)
        save()
    if "batch" in sections:
        res["batch"] = section_batch(n, max(1, reps - 1), [int(x) for x in a.batch_sizes.split(",")])
        save()
    if "ab" in sections:
        ref = f"ours tar.zst w{CORES}"
        res["ab"] = section_ab([
            (ref, f"{ref} track-bytes", min(n, 2000), 4 if a.quick else 8),
            (ref, f"xargs -P{CORES} tar|gzip -1", n, 2 if a.quick else 4),
            (ref, f"{ref} scandir", min(n, 2000), 2 if a.quick else 6),
        ])
        save()
    if "scaling" in sections:
        res["scaling"] = section_scaling(sizes)
        save()
    if "restore" in sections:
        res["restore"] = section_restore(n, reps)
        save()
    if "manyfiles" in sections:
        res["manyfiles"] = section_manyfiles([1000, 10000, 100000] if not a.quick else [1000, 10000])
        save()
    if "durability" in sections:
        res["durability"] = section_durability(max(reps, 6) if not a.quick else 3)
        save()
    if "writer" in sections:
        res["writer"] = section_writer(n, reps)
        save()
    if "ratios" in sections:
        # Issue 15's ratios, each an alternating pair so load drift hits both sides.
        ref = f"ours tar.zst w{CORES}"
        pairs = 2 if a.quick else reps + 1
        res["ratios"] = section_ab([
            (ref, "floor: two tar --remove-files | zstd streams", n, pairs),
            (ref, f"xargs -P{CORES} tar|gzip -1", n, pairs),
            (ref, "flat: ours compress tar.zst", n, pairs),
            ("flat: ours compress tar.gz", "flat: published 0.3.1 compress tar.gz", n, pairs),
        ])
        save()
    if "profile" in sections:
        res["profile"] = section_profile(min(n, 2000))
        save()
        if os.path.isdir("/dev/shm"):
            # The same on tmpfs: no disk, so what is left is the CPU work per session.
            res["profile_tmpfs"] = section_profile(min(n, 2000), where="/dev/shm")
            save()
    res["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    log(f"wrote {out} ({res['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
