"""``repack`` (issue 14): drop restored sessions from a big pack, merge daily packs.

    python benchmarks/bench_repack.py [--sessions 3000] [--restored 0.1]

One dir of --sessions demo sessions (archive_tool.demo) over three days, swept twice on
copies: ``--pack N`` (all in one pack) and ``--pack daily`` (three packs). Then:
1. --restored of the big pack's sessions are restored beside it (``unpack --session``)
   and ``repack`` drops them: wall time per phase (plan incl. re-tarring each restored
   dir, frame copy, verify = the whole ``verify PACK``, fsync+link, catalog, unlink),
   bytes before/after, and proof of no recompression (every kept frame's compressed
   bytes identical to the old pack's) next to what recompressing the kept frames costs;
2. ``repack --merge monthly`` of the three daily packs into one.
Writes benchmarks/results/repack.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
WORK = os.environ.get("BENCH_WORK", os.path.join(HERE, "work"))

import zstandard  # noqa: E402

from archive_tool import demo, fs  # noqa: E402
from archive_tool.engine.formats import zstd_level  # noqa: E402
from archive_tool.names import new_session_id, session_dir_name  # noqa: E402
from archive_tool.pack import packfile  # noqa: E402
from archive_tool.pack.restore import restore_session  # noqa: E402
from archive_tool.retention.repack import repack  # noqa: E402
from archive_tool.sweep.packsweep import pack_sweep  # noqa: E402

FIN = os.path.join("proj", "train_out", "FINISHED_SUCCESS")


def make(root: str, n: int) -> None:
    rng = random.Random(0)
    base = time.mktime((2026, 11, 23, 8, 0, 0, 0, 0, -1))
    for i in range(n):
        t = base + (i % 3) * 86400 + i * 7
        name = session_dir_name(new_session_id(now=t, rand=f"b{i:05d}"), "main")
        demo.make_session(os.path.join(root, FIN, name), rng, t)


def frames(path: str) -> dict[str, bytes]:
    with open(path, "rb") as f:
        data = f.read()
    with packfile.Pack(path) as p:
        return {n: data[p.frames.offset[i]:p.frames.offset[i] + p.frames.csize[i]]
                for i, n in enumerate(p.names)}


def phases(run) -> tuple[dict[str, float], object]:  # noqa: ANN001
    marks: dict[str, float] = {}

    def hook(point: str, _where: str) -> None:
        marks.setdefault(point, time.monotonic())
        if point.startswith("repack-"):
            marks[point + ":last"] = time.monotonic()

    fs.race_hook = hook
    t0 = time.monotonic()
    try:
        out = run()
    finally:
        fs.race_hook = None
    end = time.monotonic()
    got = {"total": end - t0}
    if "repack-frame" in marks:
        got["plan"] = marks["repack-frame"] - t0
        got["copy_frames"] = marks["repack-frame:last"] - marks["repack-frame"]
        got["verify_and_fsync"] = marks["repack-publish"] - marks["repack-frame:last"]
        got["link_dir_fsync"] = marks["repack-published"] - marks["repack-publish"]
        got["catalog"] = marks["repack-catalog"] - marks["repack-published"]
        got["unlink"] = end - marks["repack-catalog"]
    return {k: round(v, 3) for k, v in got.items()}, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--restored", type=float, default=0.1)
    a = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    src = os.path.join(WORK, "src")
    make(src, a.sessions)
    res: dict = {"sessions": a.sessions, "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version()}

    big = os.path.join(WORK, "big")
    subprocess.run(["cp", "-a", src, big], check=True)
    t = time.monotonic()
    s = pack_sweep(big, a.sessions, dry_run=False, workers=2)
    res["sweep_one_pack_s"] = round(time.monotonic() - t, 3)
    assert s["failed"] == 0, s["failures"][:3]
    (pack,) = [os.path.join(big, FIN, f) for f in os.listdir(os.path.join(big, FIN))
               if packfile.is_pack_name(f)]
    old = frames(pack)
    res["pack_bytes_before"] = os.path.getsize(pack)
    names = sorted(old)
    back = names[::round(1 / a.restored)] if a.restored else []
    t = time.monotonic()
    for n in back:
        restore_session(pack, n)
    res["restore_s"] = round(time.monotonic() - t, 3)
    res["restored"] = len(back)
    os.sync()
    ph, s = phases(lambda: repack(big, dry_run=False))
    assert s["failed"] == 0 and s["dropped"] == len(back), s
    res["repack_phases_s"] = ph
    (new,) = [os.path.join(big, FIN, f) for f in os.listdir(os.path.join(big, FIN))
              if packfile.is_pack_name(f)]
    got = frames(new)
    res["pack_bytes_after"] = os.path.getsize(new)
    res["kept"] = len(got)
    res["frames_identical"] = all(old[n] == f for n, f in got.items()) and \
        set(got) == set(names) - set(back)
    # What recompressing the kept frames would have cost on top (decompress +
    # compress each, at our default level): the work repack does not do.
    dctx = zstandard.ZstdDecompressor()
    cctx = zstandard.ZstdCompressor(level=zstd_level(None), write_checksum=True)
    t = time.monotonic()
    for f in got.values():
        cctx.compress(dctx.decompress(f))
    res["recompress_kept_s"] = round(time.monotonic() - t, 3)
    t = time.monotonic()
    for f in got.values():
        dctx.decompress(f)
    res["decompress_kept_s"] = round(time.monotonic() - t, 3)

    daily = os.path.join(WORK, "daily")
    subprocess.run(["cp", "-a", src, daily], check=True)
    pack_sweep(daily, "daily", dry_run=False, workers=2)
    dpacks = sorted(os.path.join(daily, FIN, f) for f in os.listdir(os.path.join(daily, FIN))
                    if packfile.is_pack_name(f))
    before = {}
    for p in dpacks:
        before |= frames(p)
    din = sum(os.path.getsize(p) for p in dpacks)
    os.sync()
    ph, s = phases(lambda: repack(daily, merge="monthly", dry_run=False))
    assert s["failed"] == 0, s
    merged = os.path.join(daily, FIN, "2026-11.pack.tar.zst")
    res["merge"] = {"packs_in": len(dpacks), "phases_s": ph,
                    "bytes_in": din,
                    "bytes_out": os.path.getsize(merged),
                    "frames_identical": frames(merged) == before}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "repack.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print(json.dumps(res, indent=1, sort_keys=True))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
