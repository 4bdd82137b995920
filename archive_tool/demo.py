"""A deterministic, realistic session tree: for the README's demo, the tests and benchmarks.

``N`` sessions spread over projects and scripts, each ``<script>_out/<STATE>/<ID>-main/``
holding what the decorator writes (logs, CONFIG.yaml/.pkl) plus a CSV and a small
incompressible blob: 9 inodes a session. About 85 % finish with success, 10 % with error,
5 % are still RUNNING; non-session clutter sits beside them. Mtimes are spread over the
past ``max_age_days`` so age filters have something to bite on.
"""

from __future__ import annotations

import os
import random
import time

from archive_tool.names import new_session_id, session_dir_name

STATES = (("FINISHED_SUCCESS", 0.85), ("FINISHED_ERROR", 0.10), ("RUNNING", 0.05))


def _state(rng: random.Random) -> str:
    x = rng.random()
    acc = 0.0
    for name, p in STATES:
        acc += p
        if x < acc:
            return name
    return STATES[-1][0]


def _write(path: str, data: bytes, mtime: float) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


# The "real" shape: what users' sessions looked like in a held-out corpus (issue 15):
# 9 inodes and ~73 KB a session, mostly logs and a CSV, plus an incompressible 2-40 KB
# plot. The demo shape (the default) is smaller: ~7 KB a session.
SHAPES = ("demo", "real")


def _real_files(path: str, rng: random.Random) -> dict[str, bytes]:
    n = rng.randint(450, 1150)  # ~48 bytes a line: 21-55 KB of stdout
    lines = "".join(f"epoch {i}: loss={rng.random():.6f} acc={rng.random():.4f}\n" for i in range(n))
    rows = rng.randint(1000, 2200)  # ~11 bytes a row: 11-24 KB of CSV
    png = b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randint(2048, 40960) - 8)
    return {
        "logs/stdout.log": lines.encode(),
        "logs/stderr.log": b"" if rng.random() < 0.7 else b"UserWarning: something minor\n" * 20,
        "CONFIGS/CONFIG.yaml": (
            f"ID: {os.path.basename(path)}\nSEED: {rng.randint(0, 1000)}\n"
            f"LR: {rng.random():.5f}\nSDIR_RUN: {path}\n"
        ).encode(),
        "CONFIGS/CONFIG.pkl": bytes(rng.getrandbits(8) for _ in range(96)),
        "results.csv": ("step,value\n" + "".join(f"{i},{rng.random():.6f}\n"
                                                 for i in range(rows))).encode(),
        "plot.png": png,
    }


def make_session(path: str, rng: random.Random, mtime: float, blob_bytes: int = 2048,
                 shape: str = "demo") -> int:
    """One session dir like the decorator leaves it. Returns content bytes written."""
    os.makedirs(os.path.join(path, "logs"))
    os.makedirs(os.path.join(path, "CONFIGS"))
    if shape == "real":
        return _write_all(path, _real_files(path, rng), mtime)
    n = rng.randint(5, 40)
    lines = "".join(f"epoch {i}: loss={rng.random():.6f} acc={rng.random():.4f}\n" for i in range(n))
    files = {
        "logs/stdout.log": lines.encode(),
        "logs/stderr.log": b"" if rng.random() < 0.7 else b"UserWarning: something minor\n",
        "CONFIGS/CONFIG.yaml": (
            f"ID: {os.path.basename(path)}\nSEED: {rng.randint(0, 1000)}\n"
            f"LR: {rng.random():.5f}\nSDIR_RUN: {path}\n"
        ).encode(),
        "CONFIGS/CONFIG.pkl": bytes(rng.getrandbits(8) for _ in range(96)),
        "results.csv": ("step,value\n" + "".join(f"{i},{rng.random():.6f}\n" for i in range(n))).encode(),
        "blob.bin": rng.randbytes(blob_bytes),
    }
    return _write_all(path, files, mtime)


def _write_all(path: str, files: dict[str, bytes], mtime: float) -> int:
    total = 0
    for rel, data in files.items():
        _write(os.path.join(path, rel), data, mtime)
        total += len(data)
    for d in ("logs", "CONFIGS", ""):
        p = os.path.join(path, d) if d else path
        os.utime(p, (mtime, mtime))
    return total


def make_tree(
    root: str,
    sessions: int,
    *,
    projects: int | None = None,
    scripts_per_project: int = 4,
    seed: int = 0,
    max_age_days: float = 120.0,
    blob_bytes: int = 2048,
    clutter: bool = True,
    shape: str = "demo",
) -> dict[str, int]:
    """Create *sessions* session dirs under *root* (which may exist). Returns counts by
    state and ``bytes``. *shape*: "demo" (small sessions) or "real" (see SHAPES)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    rng = random.Random(seed)
    projects = projects or max(1, min(50, sessions // 200))
    now = time.time()
    counts = {name: 0 for name, _ in STATES}
    counts["bytes"] = 0
    used: set[str] = set()
    for i in range(sessions):
        proj = f"project{i % projects:02d}"
        script = f"script{(i // projects) % scripts_per_project}"
        state = _state(rng)
        age = rng.random() * max_age_days * 86400
        mtime = now - age if state != "RUNNING" else now
        while True:
            sid = new_session_id(
                now=mtime, rand="".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4))
            )
            name = session_dir_name(sid, "main")
            if name not in used:
                used.add(name)
                break
        path = os.path.join(root, proj, f"{script}_out", state, name)
        counts["bytes"] += make_session(path, rng, mtime, blob_bytes, shape)
        counts[state] += 1
    if clutter:
        for p in range(projects):
            base = os.path.join(root, f"project{p:02d}")
            os.makedirs(os.path.join(base, "data", "raw"), exist_ok=True)
            _write(os.path.join(base, "README.md"), b"# project\n", now)
            _write(os.path.join(base, "data", "raw", "input.csv"), b"a,b\n1,2\n", now)
            os.makedirs(os.path.join(base, ".cache", "FINISHED_SUCCESS", "not-a-session"), exist_ok=True)
    return counts
