"""The manifest of one ``sweep --execute``: which session became which archive.

``<root>/.session-archive/runs/<UTC time>.jsonl``, one JSON object a line::

    {"session": "/abs/.../FINISHED_SUCCESS/<ID>-main", "archive": ".../<ID>-main.tar.zst",
     "bytes": 12345, "status": "archived"}

``bytes`` is the archive's size. A session that ``sweep --pack`` put into a pack has a
line that also names the pack, relative to the root (``"pack"``: the field that tells the
two kinds apart; ``archive`` is the pack's absolute path, so code that knows no packs
refuses the line, as it pairs a file with a dir not named after it)::

    {"session": "/abs/.../FINISHED_SUCCESS/<ID>-main", "archive": "/abs/.../2026-W47.pack.tar.zst",
     "pack": "a_out/FINISHED_SUCCESS/2026-W47.pack.tar.zst", "bytes": 2345, "status": "archived"}

A line is written (and flushed) as each result comes
back from a worker, i.e. after that batch's sources were deleted; the file is fsynced
when the run ends. A crash between a batch's delete and its line loses only that line:
the archive is still there, only ``extract --undo`` will not know it came from this run.
``extract --undo <time>`` (restore/undo.py) reads it back.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

from archive_tool import fs
from archive_tool.errors import ArchiveError, BadArgument, UnsupportedFormat, UntrustedInput
from archive_tool.guard import untrusted
from archive_tool.names import normalize_format
from archive_tool.pack import packfile
from archive_tool.sweep.packplan import parse_pack
from archive_tool.sweep.packsweep import pack_sweep
from archive_tool.sweep.plan import check_days, check_root, existing_archive, parse_shard
from archive_tool.sweep.sessions import SWEEP_FORMAT, sweep

RUNS_DIR = os.path.join(fs.STATE_DIR, "runs")
# Results whose source this run deleted: undo puts exactly these back.
_UNDOABLE = ("archived", "resumed")


def open_stamped(root: str, sub: str, now: float | None = None) -> tuple[str, str, Any]:
    """A new ``<root>/.session-archive/<sub>/<UTC time>.jsonl`` opened for writing, its
    dir made and fsynced; reached by fds without following symlinks (fs.open_state_dir)."""
    d = fs.open_state_dir(root, sub)
    where = os.path.join(root, fs.STATE_DIR, sub)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        # Two runs in one second (shards of one root): the second gets a suffix, never the
        # first's file (O_EXCL).
        for i in range(1000):
            name = stamp if i == 0 else f"{stamp}-{i}"
            try:
                fd = fs.create_file(name + ".jsonl", d, 0o644)
            except FileExistsError:
                continue
            os.fchmod(fd, 0o644)
            os.fsync(d)
            return name, os.path.join(where, name + ".jsonl"), os.fdopen(fd, "w", encoding="utf-8")
        raise FileExistsError(17, "too many runs in one second", os.path.join(where, stamp))
    finally:
        os.close(d)


def close_durably(f: Any) -> None:
    if f.closed:
        return
    try:
        f.flush()
        os.fsync(f.fileno())
    finally:
        try:
            f.close()  # closes the fd even when its flush fails again
        except OSError:
            pass  # the first error is the one raised


def runs_dir(root: str) -> str:
    return os.path.join(root, RUNS_DIR)


class RunLog:
    """Wraps a sweep's ``on_result`` callback: records each session the run archived."""

    def __init__(self, root: str, inner: Callable[[Any], None] | None = None,
                 now: float | None = None, fmt: str | None = None) -> None:
        self.root = root
        self.inner = inner
        # The sweep's format: an "archived" session's archive is <session>.<fmt>, the name
        # its worker linked (never replacing) before it deleted the source; no stat per
        # session to find it again (issue 24). None (a pack sweep): looked up.
        self.fmt = fmt
        self.count = 0
        self.error: str | None = None  # why the manifest is incomplete, if it is
        self.name, self.path, self._f = open_stamped(root, "runs", now)

    def __call__(self, r: Any) -> None:
        if r[1] in _UNDOABLE and self.error is None:
            self._archive_line(r)
        if self.inner is not None:
            self.inner(r)

    def _archive_line(self, r: Any) -> None:
        path = r[0]
        if self.fmt is not None and r[1] == "archived":
            archive: str | None = f"{path}.{self.fmt}"
        else:
            archive = existing_archive(*os.path.split(path))
        if archive is not None:
            self._write({"session": path, "archive": archive, "bytes": r[4], "status": r[1]})

    def packed(self, r: Any, row: dict[str, Any] | None) -> None:
        """A pack sweep's result with its catalog row (``row["archive"]``: the file that
        holds the session, relative to the root). Sessions the pack sweep gave their own
        archive (too big for memory) get the per-session line; a resumed session (its
        pack written by a crashed earlier run) has no row: its dir's packs are looked in."""
        path, status = r[0], r[1]
        if status not in _UNDOABLE or self.error is not None:
            return
        rel = row.get("archive") if row else None
        if not (isinstance(rel, str) and packfile.is_pack_name(os.path.basename(rel))):
            rel = None
            if existing_archive(*os.path.split(path)) is None:
                rel = _pack_holding(self.root, path)
            if rel is None:
                self._archive_line(r)
                return
        self._write({"session": path, "archive": os.path.join(self.root, rel), "pack": rel,
                     "bytes": r[4], "status": status})

    def _write(self, rec: dict[str, Any]) -> None:
        try:
            self._f.write(json.dumps(rec) + "\n")
            self._f.flush()
            self.count += 1
        except OSError as e:
            # A full disk must not stop the sweep (this runs inside its accounting);
            # the run is then only partly undoable, which the summary says.
            self.error = f"cannot write {self.path}: {e.strerror or e}"

    def close(self) -> None:
        try:
            close_durably(self._f)
        except OSError as e:
            self.error = self.error or f"cannot write {self.path}: {e.strerror or e}"
        if self.count == 0 and self.error is None:
            # Nothing to undo (a cron night with no new sessions): no empty manifest.
            d = fs.open_state_dir(self.root, "runs")
            try:
                fs.unlink_at(d, os.path.basename(self.path))
            finally:
                os.close(d)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pack_holding(root: str, session: str) -> str | None:
    """A pack beside *session* that lists it (last by name), or in a dir above it up to
    *root* listing it by its path below that dir (a ``--pack auto`` pack), relative to
    *root*; read only, packs opened by the dir's fd without following a symlink (rare:
    crash resumes only)."""
    parent = os.path.dirname(session)
    while True:
        found = _pack_in(root, parent, os.path.relpath(session, parent))
        if found is not None or not parent.startswith(root.rstrip("/") + "/"):
            return found
        parent = os.path.dirname(parent)


def _pack_in(root: str, parent: str, name: str) -> str | None:
    try:
        dfd = fs.open_trusted_dir(parent)
    except OSError:
        return None
    try:
        packs = sorted(n for n in os.listdir(dfd) if packfile.is_pack_name(n))
        for n in reversed(packs):
            try:
                with packfile.Pack(os.path.join(parent, n), fs.open_file(n, dfd)) as p:
                    if name in p.names:
                        return os.path.relpath(os.path.join(parent, n), root)
            except (ArchiveError, OSError):
                continue
    finally:
        os.close(dfd)
    return None


def sweep_logged(root: str | os.PathLike[str], *,
                 on_result: Callable[[Any], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``sweep(root, dry_run=False, ...)`` that records its manifest; the Summary gains
    ``manifest`` (path) and ``run`` (the name ``undo_run`` takes) when anything was archived."""
    def run(root_p: str, log: RunLog | None) -> dict[str, Any]:
        return sweep(root_p, dry_run=False, on_result=log or on_result, **kwargs)

    try:
        fmt: str | None = normalize_format(kwargs.get("format", SWEEP_FORMAT))
    except UnsupportedFormat:
        fmt = None  # the sweep refuses it, as before
    return _logged(root, on_result, run, fmt)


def pack_sweep_logged(root: str | os.PathLike[str], pack: str | int, *,
                      on_result: Callable[[Any], None] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
    """``pack_sweep(root, pack, dry_run=False, ...)`` that records its manifest, one line
    per packed session naming its pack (see the module doc); Summary as sweep_logged's."""
    # Bad input is refused before the manifest's dir is made: it changes nothing.
    parse_pack(pack)
    check_days(kwargs.get("older_than_days"))
    parse_shard(kwargs.get("shard"))

    def run(root_p: str, log: RunLog | None) -> dict[str, Any]:
        return pack_sweep(root_p, pack, dry_run=False, on_result=on_result,
                          on_packed=log.packed if log else None, **kwargs)

    return _logged(root, on_result, run)


def _logged(root: str | os.PathLike[str], on_result: Callable[[Any], None] | None,
            run: Callable[[str, RunLog | None], dict[str, Any]],
            fmt: str | None = None) -> dict[str, Any]:
    root_p = check_root(root)
    try:
        log = RunLog(root_p, on_result, fmt=fmt)
    except OSError as e:
        # E.g. ROOT/.session-archive made by root's cron and this is the tree's owner:
        # archiving still goes ahead; only --undo of this run is lost, and said so.
        summary = run(root_p, None)
        summary["manifest_error"] = f"cannot create a run manifest in {runs_dir(root_p)}: " \
                                    f"{e.strerror or e}"
        return summary
    with log:
        summary = run(root_p, log)
    if log.count:
        summary["manifest"], summary["run"] = log.path, log.name
    if log.error:
        summary["manifest_error"] = log.error
    return summary


def _runs_fd(root: str) -> int | None:
    """fd of the runs dir, None if absent. The dir is the tree owner's: never through a
    symlink, only if theirs (or root's, or ours); untrusted.open_state_sub."""
    return untrusted.open_state_sub(root, "runs")


def _names(runs_fd: int | None) -> list[str]:
    if runs_fd is None:
        return []
    return sorted(n[:-len(".jsonl")] for n in os.listdir(runs_fd) if n.endswith(".jsonl"))


def list_runs(root: str) -> list[str]:
    """Run names, oldest first (the UTC stamp sorts as text)."""
    fd = _runs_fd(root)
    try:
        return _names(fd)
    finally:
        if fd is not None:
            os.close(fd)


def _pick(root: str, run: str, runs: list[str]) -> str:
    name = run[:-len(".jsonl")] if run.endswith(".jsonl") else run
    if name == "last" and runs:
        name = runs[-1]
    if name not in runs:
        known = ", ".join(runs[-5:]) or "none"
        raise BadArgument(f"no sweep run {run!r} under {runs_dir(root)} (latest: {known})")
    return name


def run_path(root: str, run: str) -> str:
    """The manifest for *run*: a name from list_runs (with or without .jsonl), or
    ``last``. ValueError with the known names otherwise."""
    return os.path.join(runs_dir(root), _pick(root, run, list_runs(root)) + ".jsonl")


def open_run(root: str, run: str) -> tuple[str, list[dict[str, Any]]]:
    """(path, records) of *run* under *root*, the dir and file reached by fds without
    following a symlink, the file a regular one of the tree's owner, root or us, capped
    (untrusted.py); what ``extract --undo`` reads."""
    fd = _runs_fd(root)
    try:
        name = _pick(root, run, _names(fd))
        path = os.path.join(runs_dir(root), name + ".jsonl")
        return path, read_run(path, fd)
    finally:
        if fd is not None:
            os.close(fd)


def read_run(path: str, runs_fd: int | None = None) -> list[dict[str, Any]]:
    """The records of the manifest *path* (in the dir *runs_fd* when given, else its
    parent as named). Read from a regular file only, opened O_NOFOLLOW|O_NONBLOCK (a FIFO
    never blocks, even a dry run), owned by the dir's owner, root or us, at most
    untrusted.MANIFEST_CAP bytes; an error names the line, never its content."""
    parent, name = os.path.split(path)
    d = fs.open_trusted_dir(parent or ".") if runs_fd is None else runs_fd
    try:
        allowed = {os.fstat(d).st_uid, 0, os.geteuid()}
        try:
            fd = untrusted.open_state_file(d, name, path, allowed)
        except FileNotFoundError:
            raise BadArgument(f"no manifest {path}") from None
        try:
            return _records(fd, path)
        finally:
            os.close(fd)
    finally:
        if runs_fd is None:
            os.close(d)


def _records(fd: int, path: str) -> list[dict[str, Any]]:
    """Lines streamed (no copy of the whole file in memory), each at most
    untrusted.MANIFEST_LINE_CAP bytes, the file at most untrusted.MANIFEST_CAP."""
    cap, line_cap = untrusted.MANIFEST_CAP, untrusted.MANIFEST_LINE_CAP
    if os.fstat(fd).st_size > cap:
        raise UntrustedInput(path, f"larger than {cap >> 20} MiB; refused")
    out = []
    seen = 0
    with os.fdopen(os.dup(fd), "rb") as f:
        for i in itertools.count(1):
            line = f.readline(line_cap + 1)
            if not line:
                break
            seen += len(line)
            if seen > cap:  # grew while read: cut off, not followed
                raise UntrustedInput(path, f"larger than {cap >> 20} MiB; refused")
            whole = line.endswith(b"\n")
            if not line.strip():
                continue
            try:
                if len(line) > line_cap:
                    raise ValueError
                rec = json.loads(line.decode("utf-8"))
                if not isinstance(rec.get("session"), str) or \
                        not isinstance(rec.get("archive"), str):
                    raise ValueError
            except (ValueError, AttributeError, RecursionError):
                if not whole and len(line) <= line_cap:
                    continue  # a crash mid-write tears at most the last line (no newline yet)
                raise BadArgument(f"{path}:{i}: not a manifest line") from None
            out.append(rec)
    return out
