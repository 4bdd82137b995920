"""`session-archive mount` (issue 25): browsing archived sessions in place.

    python benchmarks/bench_mount.py [--sessions 2000] [--reps 3] [--shape real]

One deterministic tree (archive_tool.demo), copied (``cp -a``) twice and swept two ways:
per-session tar.zst archives, and ``--pack 10000`` (every FINISHED_* dir in one pack).
Measured, in interleaved repetitions:

- ``ls -R`` of the unarchived tree (warm page cache) against ``ls -R`` of a fresh mount of
  each swept copy (cold: first listing after the mount came up, nothing decoded yet) and
  the same again (warm: the mount's cache and the kernel's attribute cache filled);
- the mount process's peak RSS (VmHWM) after the cold listing;
- the same walk done on a fresh ``View`` in this process (listdir + resolve of each dir):
  the Python share of the cost, without FUSE's kernel round trips;
- ``cat`` of one small file (CONFIGS/CONFIG.yaml of a session in the middle of the pack)
  on a fresh mount of a second tree (also ``ls -R`` of it before the sweep and of a fresh
  mount after, and that mount's peak RSS): --cat-sessions small ("demo" shape) sessions in ONE
  FINISHED_SUCCESS dir, pack-swept into one pack: the ``cat`` process's wall time, and
  the open+read in this process alone (median of --reps fresh mounts).

Writes benchmarks/results/mount-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
WORK = os.environ.get("BENCH_WORK", os.path.join(HERE, "work", "mount"))

from archive_tool import demo  # noqa: E402
from archive_tool.pack import packfile  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "archive_tool", *args], check=True,
                   env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


class Mounted:
    def __init__(self, root: str, mnt: str) -> None:
        os.makedirs(mnt, exist_ok=True)
        self.mnt = mnt
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "archive_tool", "mount", root, mnt, "--foreground"],
            env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mount did not come up")
            time.sleep(0.02)

    def hwm_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def __enter__(self) -> Mounted:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        self.proc.wait(30)


def view_walk(root: str) -> float:
    """What ``ls -R`` asks of the mount, done on a fresh View in this process: our share
    of the cost, without FUSE's round trips through the kernel."""
    from archive_tool.mount.view import View

    t = time.perf_counter()
    v = View(root)

    def walk(path: str) -> None:
        for name, mode in v.listdir(path):
            if mode & 0o170000 == 0o040000:
                sub = f"{path.rstrip('/')}/{name}"
                v.resolve(sub)
                walk(sub)

    walk("/")
    v.close()
    return time.perf_counter() - t


def count(root: str) -> tuple[int, int]:
    dirs = files = 0
    for _d, ds, fs in os.walk(root):
        dirs += len(ds)
        files += len(fs)
    return dirs, files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shape", default="real", choices=demo.SHAPES)
    ap.add_argument("--cat-sessions", type=int, default=10000)
    a = ap.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    orig, single, packed = (os.path.join(WORK, n) for n in ("orig", "single", "packed"))
    log(f"tree of {a.sessions} sessions ({a.shape})")
    demo.make_tree(orig, a.sessions, shape=a.shape, projects=1, scripts_per_project=2)
    for dst in (single, packed):
        subprocess.run(["cp", "-a", orig, dst], check=True)
    cli("sweep", single, "--execute", "--quiet")
    cli("sweep", packed, "--execute", "--quiet", "--pack", "10000")
    packs = len([f for _d, _ds, fs in os.walk(packed) for f in fs
                 if f.endswith(packfile.PACK_SUFFIX)])

    # The cat tree: every session in one dir, one pack (a sweep's states split them; the
    # successful ones are moved into one FINISHED_SUCCESS dir first).
    cat_root = os.path.join(WORK, "cat")
    log(f"cat tree of {a.cat_sessions} sessions (demo) in one pack")
    demo.make_tree(os.path.join(WORK, "cat-src"), a.cat_sessions, projects=1,
                   scripts_per_project=1, clutter=False)
    one = os.path.join(cat_root, "train_out", "FINISHED_SUCCESS")
    os.makedirs(one)
    for d, ds, _fs in os.walk(os.path.join(WORK, "cat-src")):
        if os.path.basename(d).startswith("FINISHED"):
            for n in ds:
                os.rename(os.path.join(d, n), os.path.join(one, n))
            ds.clear()
    shutil.rmtree(os.path.join(WORK, "cat-src"))
    ls_one_dir_orig = []
    for _ in range(a.reps + 1):
        ls_one_dir_orig.append(timed(["ls", "-R", cat_root]))
    cli("sweep", cat_root, "--execute", "--quiet", "--pack", "10000")
    pack = [f for f in os.listdir(one) if f.endswith(packfile.PACK_SUFFIX)]
    biggest = os.path.join(one, max(pack, key=lambda f: os.path.getsize(os.path.join(one, f))))
    with packfile.Pack(biggest) as p:
        target_session = p.names[len(p.names) // 2]
        pack_sessions = len(p.names)
    small = os.path.join("train_out", "FINISHED_SUCCESS", target_session, "CONFIGS",
                         "CONFIG.yaml")
    subprocess.run(["sync"], check=True)

    runs: list[dict] = []
    for rep in range(a.reps):
        row: dict = {"rep": rep}
        timed(["ls", "-R", orig])  # warm the page cache the same way every time
        row["ls_orig_s"] = timed(["ls", "-R", orig])
        for name, root in (("single", single), ("packed", packed)):
            row[f"view_walk_{name}_s"] = view_walk(root)
            with Mounted(root, os.path.join(WORK, f"mnt-{name}")) as m:
                row[f"ls_{name}_cold_s"] = timed(["ls", "-R", m.mnt])
                row[f"rss_{name}_mb"] = m.hwm_mb()
                time.sleep(1.1)  # past the 1 s attribute/entry timeouts: the mount is asked
                row[f"ls_{name}_warm_s"] = timed(["ls", "-R", m.mnt])
        with Mounted(cat_root, os.path.join(WORK, "mnt-cat")) as m:
            row["cat_pack_cold_process_s"] = timed(["cat", os.path.join(m.mnt, small)])
        with Mounted(cat_root, os.path.join(WORK, "mnt-cat")) as m:
            t = time.perf_counter()
            with open(os.path.join(m.mnt, small), "rb") as f:
                f.read()
            row["cat_pack_cold_read_s"] = time.perf_counter() - t
        with Mounted(cat_root, os.path.join(WORK, "mnt-cat")) as m:
            row["ls_pack_dir_cold_s"] = timed(["ls", "-R", m.mnt])
            row["rss_pack_dir_mb"] = m.hwm_mb()
        log(json.dumps(row))
        runs.append(row)

    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "rep"}
    res = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg": os.getloadavg()},
        "sessions": a.sessions, "shape": a.shape,
        "tree_dirs_files": count(orig), "packs": packs,
        "cat_target": {"pack": os.path.relpath(biggest, cat_root), "sessions_in_pack":
                       pack_sessions, "pack_bytes": os.path.getsize(biggest), "file": small},
        "runs": runs, "median": med,
        # the cat tree before its sweep (first run cold-ish, then warm): all sessions in one dir
        "ls_pack_dir_orig_s": ls_one_dir_orig,
        "ratio_ls_pack_dir_cold": med["ls_pack_dir_cold_s"] / min(ls_one_dir_orig[1:]),
        "ratio_ls_single_cold": med["ls_single_cold_s"] / med["ls_orig_s"],
        "ratio_ls_packed_cold": med["ls_packed_cold_s"] / med["ls_orig_s"],
        "ratio_ls_single_warm": med["ls_single_warm_s"] / med["ls_orig_s"],
        "ratio_ls_packed_warm": med["ls_packed_warm_s"] / med["ls_orig_s"],
    }
    out = os.path.join(HERE, "results", f"mount-{dt.date.today().isoformat()}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {out}")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
