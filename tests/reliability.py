"""The one recoverability check the reliability tests share (tests/test_reliability_*.py).

``snapshot_sessions(root)`` records, before anything runs, every session dir under a tree:
relative path -> {member -> ("d",) | ("f", sha256) | ("l", target)}. ``check(root, before)``
then decides, for each of them, whether it is still recoverable:

- its dir is complete (same members, same bytes), or
- exactly one archive under the final name ``<name>.<fmt>`` holds exactly those members
  and bytes (read independently of the engine: whole-stream decompression, so the gzip
  CRC32 / zstd XXH64 / xz check is verified, then tarfile), or
- exactly one pack beside it (``*.pack.tar.zst``, ``sweep --pack``) holds them, read the
  same way: the whole pack as one tar stream, as ``tar --zstd -xf`` would, not through
  the engine's seek table; a session in an archive and in a pack is a duplicate.

Independently of the dirs, an archive under a final name must never be incomplete: a
final-named archive that does not hold the snapshot is a violation even when the dir is
still there. Leftovers (``*.tmp``, ``.<name>.deleting``) are reported separately: they are
allowed after a crash, never after a clean finish.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from archive_tool.names import FINISHED_STATES, FORMATS, RUNNING_STATE, is_session_name

Snapshot = dict[str, dict[str, tuple]]


def _members_of_dir(d: str) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, d).replace(os.sep, "/")
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d",)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", hashlib.sha256(f.read()).hexdigest())
    return out


def snapshot_sessions(root: str | Path) -> Snapshot:
    """Every session dir under a FINISHED_* or RUNNING parent, with its members."""
    root = os.fspath(root)
    snap: Snapshot = {}
    for dirpath, dirnames, _files in os.walk(root):
        keep = []
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if is_session_name(name) and os.path.basename(dirpath) in (*FINISHED_STATES, RUNNING_STATE):
                snap[os.path.relpath(p, root)] = _members_of_dir(p)
            else:
                keep.append(name)
        dirnames[:] = keep
    return snap


def _decompress(data: bytes, fmt: str) -> bytes:
    if fmt == "tar.gz":
        return gzip.decompress(data)
    if fmt == "tar.zst":
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as r:
            return r.read()
    if fmt == "tar.xz":
        return lzma.decompress(data)
    return data


def _member(tf: tarfile.TarFile, m: tarfile.TarInfo) -> tuple:
    if m.issym():
        return ("l", m.linkname)
    if m.isdir():
        return ("d",)
    if m.isfile():
        return ("f", hashlib.sha256(tf.extractfile(m).read()).hexdigest())
    return ("?", m.type)


def members_of_pack(path: str) -> dict[str, dict[str, tuple]]:
    """Session dir name -> its members, for every session of a pack. Raises on damage."""
    with open(path, "rb") as f:
        raw = _decompress(f.read(), "tar.zst")
    out: dict[str, dict[str, tuple]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for m in tf:
            top, _, rel = m.name.rstrip("/").partition("/")
            got = out.setdefault(top, {})
            if rel:
                got[rel] = _member(tf, m)
    return out


def members_of_archive(path: str, fmt: str) -> dict[str, tuple]:
    """Members below the top-level dir, in the snapshot's form. Raises on any damage."""
    with open(path, "rb") as f:
        raw = _decompress(f.read(), fmt)
    out: dict[str, tuple] = {}
    tops = set()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for m in tf:
            name = m.name.rstrip("/")
            top, _, rel = name.partition("/")
            tops.add(top)
            if not rel:
                continue
            out[rel] = _member(tf, m)
    if len(tops) != 1:
        raise ValueError(f"expected one top-level dir, found {sorted(tops)}")
    return out


@dataclass
class Report:
    checked: int = 0
    as_dir: int = 0
    as_archive: int = 0
    both: int = 0
    lost: list[str] = field(default_factory=list)
    bad_archives: list[str] = field(default_factory=list)  # incomplete under a final name
    duplicates: list[str] = field(default_factory=list)  # more than one archive of a session
    leftovers: list[str] = field(default_factory=list)  # *.tmp, .<name>.deleting

    @property
    def ok(self) -> bool:
        return not (self.lost or self.bad_archives or self.duplicates)

    def __str__(self) -> str:
        return (f"checked {self.checked}: dir {self.as_dir}, archive {self.as_archive}, both "
                f"{self.both}; lost {self.lost[:5]}, bad archives {self.bad_archives[:5]}, "
                f"duplicates {self.duplicates[:5]}, leftovers {self.leftovers[:5]}")


def leftovers(root: str | Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames:
            if n.endswith(".tmp"):
                out.append(os.path.join(dirpath, n))
        for n in dirnames:
            if n.endswith(".deleting") or ".restore-" in n:
                out.append(os.path.join(dirpath, n))
    return out


def check(root: str | Path, before: Snapshot) -> Report:
    """Is every session of *before* recoverable under *root*? (see module docstring)"""
    root = os.fspath(root)
    rep = Report()
    packs: dict[str, dict[str, dict[str, dict[str, tuple]]]] = {}  # dir -> pack -> sessions
    for rel, want in before.items():
        rep.checked += 1
        d = os.path.join(root, rel)
        dir_ok = os.path.isdir(d) and not os.path.islink(d) and _members_of_dir(d) == want
        good = []
        for fmt in FORMATS:
            a = f"{d}.{fmt}"
            if not os.path.lexists(a):
                continue
            try:
                complete = members_of_archive(a, fmt) == want
            except Exception:  # noqa: BLE001 - any damage means incomplete
                complete = False
            if complete:
                good.append(a)
            else:
                rep.bad_archives.append(a)
        parent, name = os.path.split(d)
        if parent not in packs:
            packs[parent] = {}
            for n in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
                if n.endswith(".pack.tar.zst") and not n.startswith("."):
                    try:
                        packs[parent][n] = members_of_pack(os.path.join(parent, n))
                    except Exception:  # noqa: BLE001 - a pack under a final name must read
                        rep.bad_archives.append(os.path.join(parent, n))
                        packs[parent][n] = {}
        # A pack may also hold an earlier state of a source that changed: not this one.
        good += [os.path.join(parent, n) for n, sessions in packs[parent].items()
                 if sessions.get(name) == want]
        if len(good) > 1:
            rep.duplicates.append(rel)
        if dir_ok and good:
            rep.both += 1
        elif dir_ok:
            rep.as_dir += 1
        elif good:
            rep.as_archive += 1
        else:
            rep.lost.append(rel)
    rep.leftovers = leftovers(root)
    return rep


def finished(before: Snapshot) -> Snapshot:
    return {k: v for k, v in before.items() if f"{os.sep}{RUNNING_STATE}{os.sep}" not in f"{os.sep}{k}"}


def assert_all_archived_once(root: str | Path, before: Snapshot) -> Report:
    """After a clean finish: every finished session is one archive only, RUNNING ones
    untouched, nothing left over."""
    rep = check(root, before)
    assert rep.ok, rep
    assert not rep.leftovers, rep
    for rel in before:
        d = os.path.join(os.fspath(root), rel)
        if rel in finished(before):
            assert not os.path.lexists(d), f"{rel}: source still there after a clean sweep"
        else:
            assert os.path.isdir(d) and not any(os.path.lexists(f"{d}.{f}") for f in FORMATS), rel
    return rep


def record(what: str, figures: dict[str, int]) -> None:
    """Append a test's figures (trials, sessions checked, lost...) to the file named by
    $RELIABILITY_FIGURES, for RELIABILITY.md; printed too (visible with ``pytest -s``)."""
    line = f"{what}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
