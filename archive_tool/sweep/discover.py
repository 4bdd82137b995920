"""Find session dirs (and trash dirs left by a crash) under a root, as a stream.

Two backends, one result set (order may differ; fd walks in parallel):
- ``fd`` (Debian ``fdfind``): ``-u`` so hidden and .gitignored paths are not skipped,
  ``--prune`` so it never walks inside a session, RUNNING excluded, NUL-separated output
  read as a stream (fd's output queue is unbounded: a slow consumer of a huge tree made it
  use tens of GB, fd #918 — we consume continuously and never buffer the whole list);
- pure Python: ``os.scandir``, pruned at session dirs, symlinked dirs not followed.
Both match names with ``names.DISCOVERY_REGEX``, the one definition of a session name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from archive_tool import fs
from archive_tool.names import DISCOVERY_REGEX, RUNNING_STATE

_DISCOVERY = re.compile(DISCOVERY_REGEX, re.ASCII)

_fd_path: str | None | bool = False


def find_fd() -> str | None:
    """Path of the fd binary (``fdfind`` on Debian, ``fd`` elsewhere), or None."""
    global _fd_path
    if _fd_path is False:
        _fd_path = None
        for name in ("fdfind", "fd"):
            path = shutil.which(name)
            if not path:
                continue
            try:
                out = subprocess.run(
                    [path, "--version"], capture_output=True, text=True, timeout=10
                ).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if out.startswith(("fd ", "fdfind ")):  # not some other program called fd
                _fd_path = path
                break
    return _fd_path  # type: ignore[return-value]


@dataclass
class Discovery:
    """What a walk found, streamed by :meth:`paths`; ``backend`` says which one ran."""

    root: str
    flat: bool
    use_fd: bool = True
    backend: str = ""
    warnings: list[str] = field(default_factory=list)

    def paths(self) -> Iterator[str]:
        fd = find_fd() if self.use_fd else None
        if fd:
            self.backend = "fd"
            produced = False
            try:
                for p in _iter_fd(fd, self.root, self.flat, self.warnings):
                    produced = True
                    yield p
                return
            except _FdFailed as e:
                if produced:
                    # Results already streamed: re-walking would duplicate them. What fd
                    # could not read, scandir could not either (both skip unreadable dirs).
                    self.warnings.append(f"fd: {e}")
                    return
                self.warnings.append(f"fd failed ({e}); using the Python walker")
        self.backend = "scandir"
        yield from _iter_scandir(self.root, self.flat)


class _FdFailed(Exception):
    pass


def _iter_fd(fd: str, root: str, flat: bool, warnings: list[str]) -> Iterator[str]:
    cmd = [fd, "-u", "--type", "d", "--prune", "--print0", "--color", "never"]
    if flat:
        cmd += ["--min-depth", "1", "--max-depth", "1"]
    else:
        cmd += ["--exclude", RUNNING_STATE]
    cmd += ["--regex", DISCOVERY_REGEX, root]
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
    except OSError as e:
        raise _FdFailed(str(e)) from None
    assert proc.stdout is not None and proc.stderr is not None
    got_any = False
    rest = b""
    try:
        while True:
            chunk = proc.stdout.read1(1 << 16)
            if not chunk:
                break
            parts = (rest + chunk).split(b"\0")
            rest = parts.pop()
            for raw in parts:
                if raw:
                    got_any = True
                    yield os.fsdecode(raw).rstrip("/")
        if rest:
            yield os.fsdecode(rest).rstrip("/")
    finally:
        # A consumer that stops early (max_dirs) closes us: do not leave fd running.
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read().decode(errors="replace").strip()
        rc = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if rc not in (0, -9):
        first = err.splitlines()[0] if err else f"exit status {rc}"
        if not got_any and not err.count("Permission denied"):
            raise _FdFailed(first)
        warnings.append(f"fd: {first}")


def _iter_scandir(root: str, flat: bool) -> Iterator[str]:
    """Walk by directory fds (fs.py): each subdir is opened O_NOFOLLOW relative to its
    parent, so a dir a user swaps for a symlink mid-walk is skipped, never followed out of
    the tree. Holds one fd per level of depth, not one per pending dir."""
    try:
        top = fs.open_trusted_dir(root)
    except OSError:
        return
    frames: list[list[Any]] = [[top, root, None]]
    try:
        while frames:
            frame = frames[-1]
            fd, path, pending = frame
            if pending is None:
                pending = frame[2] = []
                try:
                    with os.scandir(fd) as it:
                        for e in it:
                            try:
                                if not e.is_dir(follow_symlinks=False):
                                    continue
                            except OSError:
                                continue
                            if _DISCOVERY.match(e.name):
                                yield os.path.join(path, e.name)
                            elif not flat and e.name != RUNNING_STATE:
                                pending.append(e.name)
                except OSError:
                    pass  # unreadable dir: skipped, as fd skips it
            if not pending:
                os.close(frames.pop()[0])
                continue
            name = pending.pop()
            try:
                sub = fs.open_dir(name, fd)
            except OSError:
                continue
            frames.append([sub, os.path.join(path, name), None])
    finally:
        for frame in frames:
            os.close(frame[0])


def iter_archives(root: str, matches) -> Iterator[str]:
    """Regular files directly under *root* accepted by *matches(name)* (bulk restore)."""
    with os.scandir(root) as it:
        for e in it:
            try:
                if e.is_file(follow_symlinks=False) and matches(e.name):
                    yield e.path
            except OSError:
                continue
