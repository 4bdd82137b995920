"""CPU cost of reading .tar.zst archives through ``formats.ZstdFramesReader`` (stream_reader plus a frame-structure tap since issue 15; frame by
frame, bf686f9) against zstandard's own ``stream_reader`` (what the engine used before),
in one process, best of ``--reps`` (robust on a loaded machine: the best run is the one
least disturbed). Each pass walks every member and reads its data with ``tarfile`` in
stream mode, as a restore or verify does: from archives preloaded into memory (verify
reads the bytes it just wrote) and from the archive files opened one by one (restore).

    python benchmarks/bench_zstd_reader.py DIR_OF_TAR_ZST [--reps 7]
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time

import zstandard

from archive_tool.engine.formats import ZstdFramesReader


def old_reader(raw: io.BytesIO) -> object:
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)


def read_all(raw: object, make: object) -> int:
    n = 0
    with tarfile.open(fileobj=make(raw), mode="r|") as t:
        for m in t:
            if m.isfile():
                n += len(t.extractfile(m).read())
    return n


def one_pass(blobs: list[bytes], paths: list[str], make: object) -> int:
    if blobs:
        return sum(read_all(io.BytesIO(b), make) for b in blobs)
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            n += read_all(f, make)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    paths = [os.path.join(a.dir, n) for n in sorted(os.listdir(a.dir)) if n.endswith(".tar.zst")]
    blobs = []
    for p in paths:
        with open(p, "rb") as f:
            blobs.append(f.read())
    for source, bl in (("in memory", blobs), ("from files", [])):
        best = {"stream_reader": float("inf"), "ZstdFramesReader": float("inf")}
        sizes = set()
        for _ in range(a.reps):
            for label, make in (("stream_reader", old_reader), ("ZstdFramesReader", ZstdFramesReader)):
                t0 = time.process_time()
                sizes.add(one_pass(bl, paths, make))
                best[label] = min(best[label], time.process_time() - t0)
        assert len(sizes) == 1, sizes
        ms = {k: round(1000 * v / len(paths), 4) for k, v in best.items()}
        print(f"{source}: {len(paths)} archives, {sizes.pop()} bytes of members; best of {a.reps},"
              f" CPU ms/archive {ms}; ratio {ms['ZstdFramesReader'] / ms['stream_reader']:.3f}")


if __name__ == "__main__":
    main()
