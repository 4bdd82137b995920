"""Benchmark corpora: pristine session trees made once by ``archive_tool.demo.make_tree``
(the project's one generator — not a second one), then fresh working copies by ``cp -a``.

Why copies: every contender destroys its input (archive + delete), so each needs its own
identical tree. ``make_tree`` is not reproducible to the byte across calls (mtimes and the
session IDs derived from them follow the wall clock), a ``cp -a`` copy is. Speed is a wash
on this machine: ``copy_vs_generate`` measured 0.8x-6x (cp -a vs make_tree, 2,000 sessions)
depending on the load other processes put on the shared disk, and every run records it in
its JSON. Generating 100,000 sessions (~1M inodes) took 90 s, once: pristine trees are
cached per (N, seed) under ``benchmarks/work/`` (gitignored).

A *flat* corpus (every finished session moved to one dir, ``<ID>-main`` renamed ``<ID>``)
is what the published ``scitex_session.archive compress ROOT`` handles: it only archives
direct children of ROOT named exactly ``<ID>`` (checked by running it: ``<ID>-main`` dirs
are scanned but not candidates).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

from archive_tool.demo import make_tree
from archive_tool.names import DISCOVERY_REGEX, FINISHED_STATES, RUNNING_STATE, SESSION_NAME_REGEX

_SESSION = re.compile(SESSION_NAME_REGEX, re.ASCII)
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("BENCH_WORK", os.path.join(HERE, "work"))

# Measured: a 2,000-session tree takes 66 MB (du) and 9.1 inodes/session (+ clutter).
BYTES_PER_SESSION = 34 * 1024
INODES_PER_SESSION = 9.2
# The "real" shape (archive_tool.demo.SHAPES; issue 15's held-out corpus): 9 inodes and
# ~73 KB of content a session (logs, CSV, an incompressible 2-40 KB plot); ~90 KB in du.
BYTES_PER_SESSION_BY_SHAPE = {"demo": BYTES_PER_SESSION, "real": 92 * 1024}

# Which corpus shape pristine()/flat_pristine() build when none is named: set once by the
# driver (bench_sweep.py --corpus), so every section measures the same corpus.
SHAPE = "demo"


def use_shape(shape: str) -> None:
    global SHAPE
    SHAPE = shape


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fit_to_disk(n: int, copies: int = 3, path: str = WORK) -> int:
    """Largest N <= *n* for which *copies* trees (pristine + working copies + archives) fit
    in the free space and inodes of *path*'s filesystem, keeping 10 % spare."""
    os.makedirs(path, exist_ok=True)
    st = os.statvfs(path)
    free_b = st.f_bavail * st.f_frsize * 0.9
    free_i = (st.f_favail if st.f_files else 1 << 62) * 0.9
    per = BYTES_PER_SESSION_BY_SHAPE[SHAPE]
    fit = int(min(free_b / (per * copies), free_i / (INODES_PER_SESSION * copies)))
    if fit < n:
        log(f"N={n} needs ~{n * per * copies / 1e9:.1f} GB and "
            f"~{int(n * INODES_PER_SESSION * copies)} inodes on {path}: scaled down to N={fit}")
        return max(fit, 0)
    return n


def _tag(n: int, seed: int, shape: str | None = None) -> str:
    shape = shape or SHAPE
    return f"n{n}-s{seed}" + ("" if shape == "demo" else f"-{shape}")


def pristine(n: int, seed: int = 0, shape: str | None = None) -> tuple[str, dict]:
    """Path of the cached pristine tree for (n, seed, shape), generating it when missing.
    Returns (path, meta) with the generator's counts and how long generation took."""
    shape = shape or SHAPE
    base = os.path.join(WORK, "pristine")
    tree = os.path.join(base, _tag(n, seed, shape))
    meta_p = tree + ".json"
    if os.path.isfile(meta_p) and os.path.isdir(tree):
        with open(meta_p) as f:
            return tree, json.load(f)
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(base, exist_ok=True)
    log(f"generating pristine corpus N={n} seed={seed} shape={shape} in {tree}")
    t0 = time.perf_counter()
    counts = make_tree(tree, n, seed=seed, shape=shape)
    meta = {"n": n, "seed": seed, "shape": shape, "counts": counts,
            "generate_s": round(time.perf_counter() - t0, 3)}
    with open(meta_p, "w") as f:
        json.dump(meta, f)
    return tree, meta


def flat_pristine(n: int, seed: int = 0, shape: str | None = None) -> tuple[str, int]:
    """A pristine flat corpus: the finished sessions of ``pristine(n, seed, shape)`` side
    by side in one dir, named ``<ID>``. Returns (path, number of sessions)."""
    tree, _ = pristine(n, seed, shape)
    flat = os.path.join(WORK, "pristine", _tag(n, seed, shape) + "-flat")
    done = flat + ".json"
    if os.path.isfile(done) and os.path.isdir(flat):
        with open(done) as f:
            return flat, json.load(f)["sessions"]
    shutil.rmtree(flat, ignore_errors=True)
    tmp = flat + ".tmp"
    fresh_copy(tree, tmp)
    os.makedirs(flat)
    count = 0
    for dirpath, dirnames, _files in os.walk(tmp):
        if os.path.basename(dirpath) in FINISHED_STATES:
            for d in dirnames:
                if not _SESSION.match(d):
                    continue  # clutter such as .cache/FINISHED_SUCCESS/not-a-session
                stem = d[:-len("-main")] if d.endswith("-main") else d
                os.rename(os.path.join(dirpath, d), os.path.join(flat, stem))
                count += 1
            dirnames[:] = []
    shutil.rmtree(tmp)
    with open(done, "w") as f:
        json.dump({"sessions": count}, f)
    return flat, count


def rm_tree(path: str) -> None:
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--", path], check=True)


def fresh_copy(src: str, dst: str) -> float:
    """Replace *dst* by a ``cp -a`` copy of *src*, then ``sync`` so no contender pays for
    writing back the copy's dirty pages (our sweep's syncfs would otherwise flush them).
    Returns the seconds the copy (without the sync) took."""
    rm_tree(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-a", "--", src, dst], check=True)
    dt = time.perf_counter() - t0
    subprocess.run(["sync"], check=True)
    return dt


def copy_vs_generate(n: int, seed: int = 0) -> dict:
    """Time ``make_tree`` and ``cp -a`` for the same N, side by side, in this run."""
    scratch = os.path.join(WORK, "scratch-gen")
    rm_tree(scratch)
    t0 = time.perf_counter()
    make_tree(scratch, n, seed=seed)
    gen = time.perf_counter() - t0
    subprocess.run(["sync"], check=True)
    cp = fresh_copy(scratch, scratch + "-cp")
    rm_tree(scratch)
    rm_tree(scratch + "-cp")
    return {"n": n, "generate_s": round(gen, 3), "cp_a_s": round(cp, 3),
            "speedup": round(gen / cp, 1) if cp else None}


def fd_args(flat: bool = False) -> list[str]:
    """The arguments our fd backend passes (archive_tool.sweep.discover), for baselines that
    must archive exactly the same sessions."""
    args = ["-u", "--type", "d", "--prune", "--color", "never"]
    if flat:
        args += ["--min-depth", "1", "--max-depth", "1"]
    else:
        args += ["--exclude", RUNNING_STATE]
    return args + ["--regex", DISCOVERY_REGEX]


def session_count(tree_meta: dict) -> int:
    c = tree_meta["counts"]
    return sum(c.get(s, 0) for s in FINISHED_STATES)
