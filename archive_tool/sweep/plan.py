"""From discovered paths to work: which sessions to archive, finish or clean up, and why
the others are left alone. Runs in the sweeping process; cheap per path (a few stats).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from archive_tool.errors import BadArgument, BadRoot, DangerousRoot
from archive_tool.names import (
    FINISHED_STATES,
    FORMATS,
    RUNNING_STATE,
    TMP_SUFFIX,
    is_session_name,
    session_of_trash,
)

# Roots a sweep must never be pointed at: system trees and whole home areas.
_DANGEROUS = {
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt",
    "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var", "/var/tmp",
    "/Users", "/private",
}

ARCHIVE, FINISH, CLEANUP = "archive", "finish", "cleanup"

# About 2,700 years: any age beyond it selects nothing anyway, and 1e300 days overflowed
# the cutoff in nanoseconds (an OverflowError traceback).
MAX_DAYS = 1e6


def check_days(older_than_days: float | None) -> None:
    """BadArgument unless *older_than_days* is None or a number in [0, MAX_DAYS]."""
    if older_than_days is None:
        return
    days = float(older_than_days)
    if days != days or not 0 <= days <= MAX_DAYS:
        raise BadArgument(f"older_than_days must be between 0 and {MAX_DAYS:.0f}, got {days:g}")


def check_root(root: str | os.PathLike[str]) -> str:
    """Absolute, resolved root, or BadRoot / DangerousRoot with a one-line reason."""
    raw = os.fspath(root)
    if not raw:
        raise BadRoot(raw, "empty root path")
    path = os.path.realpath(os.path.expanduser(raw))
    if path in _DANGEROUS or path == os.path.realpath(os.path.expanduser("~")):
        raise DangerousRoot(path, "refusing to sweep a system or home root; name a run directory")
    parts = path.split(os.sep)
    if ".git" in parts:
        raise DangerousRoot(path, "refusing to sweep inside a .git directory")
    if RUNNING_STATE in parts:
        raise DangerousRoot(path, "refusing to sweep inside RUNNING/ (sessions still running)")
    if not os.path.exists(path):
        raise BadRoot(raw, "no such directory")
    if not os.path.isdir(path):
        raise BadRoot(raw, "not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BadRoot(raw, "permission denied")
    return path


def check_pack_target(directory: str | os.PathLike[str], force: bool = False) -> str:
    """The real path of a dir ``pack`` may archive (and then delete): never a system or
    home root or a .git path; unless *force*, not a dir under RUNNING/ (the run may be
    live) nor one not named like a session. BadArgument / DangerousRoot otherwise."""
    path = os.path.realpath(os.fspath(directory))
    parts = path.split(os.sep)
    if path in _DANGEROUS or path == os.path.realpath(os.path.expanduser("~")) or ".git" in parts:
        raise DangerousRoot(path, "refusing to pack a system or home root or a .git path")
    if not force:
        if RUNNING_STATE in parts:
            raise BadArgument(f"{path}: inside {RUNNING_STATE}/ (the run may still be live); "
                              "--force to pack it anyway")
        if not is_session_name(os.path.basename(path)):
            raise BadArgument(f"{path}: not a session dir (name is not <ID>[-<suffix>]); "
                              "--force to pack it anyway")
    return path


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (k, n), K in 0..N-1, so ``$SLURM_ARRAY_TASK_ID`` of an
    ``--array=0-<N-1>`` job fits directly. ``"auto"`` reads the SLURM array variables
    (:func:`slurm_shard`)."""
    if spec is None:
        return None
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return slurm_shard(os.environ)
    if isinstance(spec, str):
        try:
            k_s, n_s = spec.split("/")
            k, n = int(k_s), int(n_s)
        except ValueError:
            raise BadArgument(f"shard must look like K/N (e.g. 0/4), got {spec!r}") from None
    else:
        k, n = spec
    if n < 1 or not 0 <= k < n:
        raise BadArgument(f"shard K/N needs 0 <= K < N, got {k}/{n}")
    return (k, n)


def slurm_shard(env: Mapping[str, str]) -> tuple[int, int]:
    """This array task's shard: K = TASK_ID - TASK_MIN, N = TASK_COUNT.

    Works for any contiguous array (``--array=0-7``, ``--array=1-8``, with or without a
    ``%limit``); a stepped or sparse array (``0-15:2``, ``1,4,9``) has no K/N reading
    and is refused rather than silently leaving shards unswept.
    """
    try:
        tid = int(env["SLURM_ARRAY_TASK_ID"])
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        hi = int(env.get("SLURM_ARRAY_TASK_MAX", str(lo + count - 1)))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
    except KeyError:
        raise BadArgument("--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                         "(run it inside a SLURM job array, or give --shard K/N)") from None
    except ValueError:
        raise BadArgument("--shard auto: SLURM_ARRAY_TASK_* variables are not integers") from None
    if step != 1 or hi - lo + 1 != count:
        raise BadArgument(f"--shard auto needs a contiguous job array (e.g. --array=0-{count - 1}); "
                         f"got ids {lo}-{hi} step {step} for {count} tasks: use --shard K/N")
    return parse_shard((tid - lo, count))  # type: ignore[return-value]


def shard_key(rel: str) -> str:
    """What a path is sharded by: a trash dir ``.X.deleting`` belongs to session ``X``.
    Otherwise the shard that archives X (and renames it to .X.deleting mid-delete) and
    the shard that finds .X.deleting as a leftover would race on the same dir."""
    parent, name = os.path.split(rel)
    trashed = session_of_trash(name)
    return os.path.join(parent, trashed) if trashed is not None else rel


def shard_of(rel: str, n: int) -> int:
    """Stable across machines, Python versions and runs (unlike hash())."""
    import hashlib  # late: it loads OpenSSL's libcrypto; only --shard hashes (issue 24)

    h = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(h, "big") % n


def existing_archive(parent: str, name: str) -> str | None:
    for fmt in FORMATS:
        p = os.path.join(parent, f"{name}.{fmt}")
        if os.path.lexists(p):
            return p
    return None


class SiblingNames:
    """Names in each session's parent dir, listed once per dir (one listing instead of a
    stat per format per session: on Lustre/GPFS/NFS each stat is a round trip to the
    metadata server, issue 24). Only a hint for planning: the worker re-checks under the
    session's lock (lock_session looks for an archive in every format), and the link that
    never replaces is the real guarantee. Bounded: a tree of many dirs keeps the last few."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._names: OrderedDict[str, frozenset[str] | None] = OrderedDict()

    def listing(self, parent: str) -> frozenset[str] | None:
        names = self._names.get(parent, False)
        if names is False:
            try:
                names = frozenset(os.listdir(parent))
            except OSError:
                names = None  # unreadable: fall back to a stat per name
            self._names[parent] = names
            while len(self._names) > self.limit:
                self._names.popitem(last=False)
        else:
            self._names.move_to_end(parent)
        return names  # type: ignore[return-value]

    def archive_of(self, parent: str, name: str) -> str | None:
        names = self.listing(parent)
        if names is None:
            return existing_archive(parent, name)
        for fmt in FORMATS:
            if f"{name}.{fmt}" in names:
                return os.path.join(parent, f"{name}.{fmt}")
        return None

    def stale_tmps(self, parent: str, name: str) -> tuple[str, ...]:
        """``<name>.<fmt>.tmp`` beside the session: what a crash of the named-tmp fallback
        left. Seen in the listing the planner takes anyway, so removing it costs no call
        where there is none (open_tmp no longer unlinks that name blindly, issue 24)."""
        names = self.listing(parent)
        if not names:
            return ()
        return tuple(t for fmt in FORMATS if (t := f"{name}.{fmt}{TMP_SUFFIX}") in names)

    def packs(self, parent: str, is_pack: Callable[[str], bool]) -> tuple[str, ...] | None:
        """Pack files (names *is_pack* accepts) and named-tmp packs (``<pack>.tmp``) in
        *parent*'s listing; None if it could not be listed. What ``sweep --pack`` needs
        of a dir before it writes there: the packs that may hold a crash's leftover
        sources, the names taken."""
        names = self.listing(parent)
        if names is None:
            return None
        return tuple(sorted(n for n in names if is_pack(n) or (
            n.endswith(TMP_SUFFIX) and is_pack(n[:-len(TMP_SUFFIX)]))))


@dataclass(slots=True)
class Task:
    kind: str  # ARCHIVE, FINISH (archive exists beside the source), CLEANUP (trash dir)
    path: str
    archive: str | None = None
    stale_tmps: tuple[str, ...] = ()  # crash leftovers beside it, removed by the worker


@dataclass
class Planner:
    root: str
    flat: bool
    fmt: str
    pattern: str | None = None
    older_than_days: float | None = None
    max_dirs: int | None = None
    shard: tuple[int, int] | None = None
    scanned: int = 0
    candidates: int = 0
    skipped: int = 0
    skipped_reasons: dict[str, int] | None = None
    capped: int = 0  # candidates left out by max_dirs
    # With *packs* (packfile.is_pack_name, passed in so planning loads no engine),
    # dir_packs maps each parent of a session to archive to SiblingNames.packs of it
    # (sweep --pack: the packs there before this sweep wrote any).
    packs: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        self.skipped_reasons = {}
        self.dir_packs: dict[str, tuple[str, ...] | None] = {}
        self.cutoff = (
            time.time() - self.older_than_days * 86400 if self.older_than_days is not None else None
        )

    @property
    def cutoff_ns(self) -> int | None:
        return None if self.cutoff is None else int(self.cutoff * 1e9)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skipped_reasons[reason] = self.skipped_reasons.get(reason, 0) + 1

    def tasks(self, paths: Iterable[str]) -> Iterator[Task]:
        cap = self.max_dirs if self.max_dirs else None
        siblings = SiblingNames()
        for path in paths:
            parent, name = os.path.split(path)
            if not self.flat and os.path.basename(parent) not in FINISHED_STATES:
                continue  # a session-shaped dir outside FINISHED_*: not ours to touch
            if self.shard is not None:
                k, n = self.shard
                if shard_of(shard_key(os.path.relpath(path, self.root)), n) != k:
                    continue
            trashed = session_of_trash(name)
            if trashed is not None:
                yield Task(CLEANUP, path, siblings.archive_of(parent, trashed))
                continue
            if not is_session_name(name):
                continue
            self.scanned += 1
            if self.pattern and self.pattern not in name:
                continue
            if self.cutoff is not None:
                try:
                    if os.stat(path).st_mtime >= self.cutoff:
                        self.skip("too recent")
                        continue
                except OSError:
                    continue  # vanished between discovery and now
            if cap is not None and self.candidates >= cap:
                # Counted after the age filter, so "stopped at N of M" names the sessions
                # a rerun would really take (issue 16: no silent cap).
                self.capped += 1
                continue
            arch = siblings.archive_of(parent, name)
            self.candidates += 1
            if self.packs is not None and not arch and parent not in self.dir_packs:
                self.dir_packs[parent] = siblings.packs(parent, self.packs)
            yield Task(FINISH if arch else ARCHIVE, path, arch, siblings.stale_tmps(parent, name))
