"""`session-archive mount` (issue 25): browsing archived sessions in place.

    python benchmarks/bench_mount.py [--sessions 10000] [--reps 3] [--shape real]
                                     [--cat-sessions 10000] [--rss-sessions 100000]

One deterministic tree (archive_tool.demo), copied (``cp -a``) twice and swept two ways:
per-session tar.zst archives (``--catalog``: their member lists in the catalog), and
``--pack 10000`` (every FINISHED_* dir in one pack; the catalog always).
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
  the open+read in this process alone (median of --reps fresh mounts);
- memory (``--rss-sessions``, 0 to skip): a tree of that many small sessions generated
  straight into packs of 10,000 (one per ``s<k>_out/FINISHED_SUCCESS``, written with the
  pack writer and catalogued with the sweep's own row function: minutes, not the hour a
  real sweep of 100k sessions takes here), mounted, ``ls -R``: the mount's peak RSS and
  the listing's time;
- the FUSE floor (``--floor-sessions N``, alone): ``ls -R`` of a tree, of the same tree
  unarchived through a mount, and of a pack-swept copy through a mount.

Writes benchmarks/results/<--out>-<date>.json and .png.
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
from archive_tool.catalog import catalog  # noqa: E402
from archive_tool.catalog.rows import session_row  # noqa: E402
from archive_tool.engine.tarwrite import iter_tar  # noqa: E402
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


def view_decodes(root: str) -> int:
    """Archives a fresh View decodes to list the whole tree (0: all from the catalog)."""
    from archive_tool.mount.view import View

    v = View(root)

    def walk(path: str) -> None:
        for name, mode, _a in v.listdir_plus(path):
            if mode & 0o170000 == 0o040000:
                walk(f"{path.rstrip('/')}/{name}")

    walk("/")
    v.close()
    return v.decodes


class _Tmp:
    """What PackWriter needs of a commit.TmpArchive: an fd and a name for messages."""

    def __init__(self, path: str) -> None:
        self.final = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _session_tar(name: str, i: int) -> bytes:
    """A small session's tar members (no end blocks), as the sweep writes one: a dir
    per level, CONFIG, logs, results."""
    import io
    import tarfile

    files = {
        "CONFIGS/CONFIG.yaml": f"ID: {name}\nARGS:\n  lr: 0.0{i % 9 + 1}\nEXIT_STATUS: 0\n",
        "logs/stdout.log": "".join(f"epoch {e}: loss={1 / (e + i + 1):.6f}\n" for e in range(8)),
        "logs/stderr.log": "",
        "results.csv": f"step,value\n1,{i}\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("", "CONFIGS", "logs"):
            ti = tarfile.TarInfo(f"{name}/{d}".rstrip("/"))
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_790_000_000
            tf.addfile(ti)
            for f, text in files.items():
                if os.path.dirname(f) == d:
                    data = text.encode()
                    ti = tarfile.TarInfo(f"{name}/{f}")
                    ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_790_000_000
                    tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    end = max(o + n + (-n % 512) for _name, o, n, _t in iter_tar(raw))
    return raw[:end]  # without the end-of-archive blocks, as a pack frame holds it


def make_packed_tree(root: str, sessions: int, per_pack: int = 10_000) -> dict:
    """*sessions* small sessions straight into packs (one per s<k>_out/FINISHED_SUCCESS),
    with the catalog rows a pack sweep writes (rows.session_row: member lists included)."""
    t0 = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    n = 0
    for k in range((sessions + per_pack - 1) // per_pack):
        d = os.path.join(root, f"s{k}_out", "FINISHED_SUCCESS")
        os.makedirs(d)
        pack = os.path.join(d, f"2026-12-{k % 28 + 1:02d}{packfile.PACK_SUFFIX}")
        tmp = _Tmp(pack)
        w = packfile.PackWriter(tmp)  # type: ignore[arg-type]
        rows = []
        arel = os.path.relpath(pack, root)
        for j in range(min(per_pack, sessions - n)):
            name = f"2026Y-12M-{k % 28 + 1:02d}D-{j // 3600 % 24:02d}h{j // 60 % 60:02d}m" \
                   f"{j % 60:02d}s_{k:02d}{j:05d}-main"
            tar = _session_tar(name, n)
            f = w.add(name, tar)
            rows.append(session_row(tar, name, os.path.dirname(arel), arel, f.index,
                                    f.offset, f.csize))
            n += 1
        w.finish()
        os.close(tmp.fd)
        catalog.add_sessions(root, rows)
        log(f"  pack {k}: {len(rows)} sessions ({n}/{sessions})")
    return {"sessions": n, "generate_s": round(time.perf_counter() - t0, 1),
            "catalog_bytes": os.path.getsize(catalog.catalog_path(root))}


def rss_run(a: argparse.Namespace) -> dict:
    root = os.path.join(WORK, "rss")
    log(f"memory tree: {a.rss_sessions} sessions generated into packs")
    out = make_packed_tree(root, a.rss_sessions)
    subprocess.run(["sync"], check=True)
    runs = []
    for _ in range(a.reps):
        with Mounted(root, os.path.join(WORK, "mnt-rss")) as m:
            idle = m.hwm_mb()
            t = time.perf_counter()
            r = subprocess.run(["ls", "-R", m.mnt], check=True, capture_output=True)
            runs.append({"ls_cold_s": time.perf_counter() - t, "rss_idle_mb": idle,
                         "rss_after_ls_mb": m.hwm_mb(),
                         "lines": r.stdout.count(b"\n")})
        log(json.dumps(runs[-1]))
    out["runs"] = runs
    out["median"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    shutil.rmtree(root, ignore_errors=True)
    return out


def floor_run(a: argparse.Namespace) -> dict:
    """The FUSE floor: ``ls -R`` of the unarchived tree, of that same tree through a mount
    (every dir live: what the binding costs, no archive involved), and of a pack-swept
    copy through a mount; medians of --reps fresh mounts."""
    w = os.path.join(WORK, "floor")
    orig, packed = os.path.join(w, "orig"), os.path.join(w, "packed")
    log(f"floor: tree of {a.floor_sessions} sessions ({a.shape})")
    demo.make_tree(orig, a.floor_sessions, shape=a.shape, projects=1, scripts_per_project=2)
    subprocess.run(["cp", "-a", orig, packed], check=True)
    cli("sweep", packed, "--execute", "--quiet", "--pack", "10000")
    runs = []
    for _ in range(a.reps):
        timed(["ls", "-R", orig])
        row = {"ls_orig_s": timed(["ls", "-R", orig])}
        for key, root in (("ls_mount_unarchived_s", orig), ("ls_mount_packed_s", packed)):
            with Mounted(root, os.path.join(w, "mnt")) as m:
                row[key] = timed(["ls", "-R", m.mnt])
        log(json.dumps(row))
        runs.append(row)
    shutil.rmtree(w, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"sessions": a.floor_sessions, "tree_dirs_files": None, "runs": runs,
            "median": med,
            "ratio_unarchived_mount": med["ls_mount_unarchived_s"] / med["ls_orig_s"],
            "ratio_packed_mount": med["ls_mount_packed_s"] / med["ls_orig_s"]}


def count(root: str) -> tuple[int, int]:
    dirs = files = 0
    for _d, ds, fs in os.walk(root):
        dirs += len(ds)
        files += len(fs)
    return dirs, files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shape", default="real", choices=demo.SHAPES)
    ap.add_argument("--cat-sessions", type=int, default=10000)
    ap.add_argument("--rss-sessions", type=int, default=100000)
    ap.add_argument("--rss-only", action="store_true")
    ap.add_argument("--floor-sessions", type=int, default=0,
                    help="only the FUSE floor run, on a tree of this many sessions")
    ap.add_argument("--out", default="mount-listing")
    a = ap.parse_args()
    if a.floor_sessions:
        res = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
               "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "loadavg": os.getloadavg()},
               "floor": floor_run(a)}
        write(res, a.out)
        return
    if a.rss_only:
        res = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
               "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "loadavg": os.getloadavg()},
               "rss": rss_run(a)}
        write(res, a.out)
        return

    shutil.rmtree(WORK, ignore_errors=True)
    orig, single, packed = (os.path.join(WORK, n) for n in ("orig", "single", "packed"))
    log(f"tree of {a.sessions} sessions ({a.shape})")
    demo.make_tree(orig, a.sessions, shape=a.shape, projects=1, scripts_per_project=2)
    for dst in (single, packed):
        subprocess.run(["cp", "-a", orig, dst], check=True)
    cli("sweep", single, "--execute", "--quiet", "--catalog")
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
        "view_decodes": {"single": view_decodes(single), "packed": view_decodes(packed)},
    }
    if a.rss_sessions:
        res["rss"] = rss_run(a)
    write(res, a.out)
    shutil.rmtree(WORK, ignore_errors=True)


def write(res: dict, name: str) -> None:
    base = os.path.join(HERE, "results", f"{name}-{dt.date.today().isoformat()}")
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {base}.json")
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    plot(res, base + ".png")


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "median" in res:
        med = res["median"]
        panels.append((f"ls -R, {res['sessions']} sessions (median of {len(res['runs'])})",
                       ["unarchived", "per-session\ncold", "per-session\nwarm", "packs\ncold",
                        "packs\nwarm"],
                       [med["ls_orig_s"], med["ls_single_cold_s"], med["ls_single_warm_s"],
                        med["ls_packed_cold_s"], med["ls_packed_warm_s"]], "seconds",
                       3 * med["ls_orig_s"]))
    if "rss" in res:
        r = res["rss"]["median"]
        panels.append((f"mount RSS, {res['rss']['sessions']} sessions in packs",
                       ["idle", "after ls -R"], [r["rss_idle_mb"], r["rss_after_ls_mb"]], "MB",
                       200))
    if "floor" in res:
        f = res["floor"]["median"]
        panels.append((f"ls -R, {res['floor']['sessions']} sessions: the FUSE floor",
                       ["unarchived", "unarchived\nthrough mount", "packs\nthrough mount"],
                       [f["ls_orig_s"], f["ls_mount_unarchived_s"], f["ls_mount_packed_s"]],
                       "seconds", 3 * f["ls_orig_s"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, labels, values, unit, target) in zip(axes[0], panels, strict=True):
        ax.bar(labels, values, color="#4c72b0")
        ax.axhline(target, color="#c44e52", linestyle="--", label="target")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
