"""What a sweep would do, without doing it: per-subtree counts, ages, and an estimate of the
archived size made by really compressing a small sample of sessions in memory.

Read-only by construction: it discovers and plans exactly as :func:`sweep.sweep` does
(``Discovery`` + ``Planner``), stats each candidate once (``scan_session``, as a dry run
with ``track_bytes`` does), and reads the content of at most ``sample`` sessions to build
their tar streams in memory. Nothing is written, locked or deleted, so its totals equal
``sweep(root, dry_run=True, track_bytes=True)``'s (tests/test_report.py checks this).

matplotlib is imported only by :func:`plot_report`.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from archive_tool import fs
from archive_tool.bulk import stale
from archive_tool.bulk.discover import Discovery
from archive_tool.bulk.plan import Planner, check_days, check_root
from archive_tool.bulk.sweep import scan_candidates
from archive_tool.engine import attrs
from archive_tool.engine.formats import check_level, compress_bytes, open_compressed_writer
from archive_tool.engine.scan import DIR, FILE, Entry, content_bytes, newest_mtime_ns
from archive_tool.engine.single import IN_MEMORY_LIMIT
from archive_tool.engine.tarwrite import tar_header, write_tar
from archive_tool.errors import ArchiveError, BadArgument, SourceUnreadable
from archive_tool.names import normalize_format
from archive_tool.units import human_bytes, human_count

DAY = 86400.0
# (label, lower bound in days); a session falls in the last bucket whose bound it reaches.
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1d", 0.0), ("1-7d", 1.0), ("7-30d", 7.0), ("30-90d", 30.0), ("90-365d", 90.0),
    (">365d", 365.0),
)


def age_bucket(age_days: float) -> str:
    label = AGE_BUCKETS[0][0]
    for name, lo in AGE_BUCKETS:
        if age_days >= lo:
            label = name
    return label


def subtree_of(root: str, session: str) -> str:
    """``<script>_out`` of a session (the parent of its FINISHED_* dir), relative to root."""
    return os.path.relpath(os.path.dirname(os.path.dirname(session)), root)


def tar_size(top: str, entries: list[Entry]) -> int:
    """Bytes of the tar stream :mod:`single` writes for *entries*, from the manifest alone
    (no content read): headers as ``single`` builds them (PAX when a name needs it), content
    padded to blocks, the end-of-archive blocks, and — for the in-memory path most sessions
    take — padding to a full record."""
    n = 2 * tarfile.BLOCKSIZE
    for e in entries:
        # The PAX header of a sub-second mtime or a dir's xattrs (a file's xattrs are read
        # only when it is archived: counted as none, which files nearly always have).
        recs = attrs.pax_records(e.mtime_ns, e.xattrs if e.kind == DIR else None)
        n += len(tar_header(e, top, recs))
        if e.kind == FILE:
            n += e.size + (-e.size % tarfile.BLOCKSIZE)
    if content_bytes(entries) <= IN_MEMORY_LIMIT:
        n += -n % tarfile.RECORDSIZE
    return n


def _sample_key(seed: int, rel: str) -> int:
    # Bottom-k sampling on a keyed hash of the path: the same sessions are picked whatever
    # order discovery yields them in (fd walks in parallel, so its order varies between
    # runs; reservoir sampling over that stream would not be reproducible).
    h = hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8,
                        key=str(seed).encode())
    return int.from_bytes(h.digest(), "big")


def compressed_size(src: str, entries: list[Entry], fmt: str, compresslevel: int) -> int:
    """Size of *src*'s archive as ``single`` would write it, built in memory (large sessions
    stream through the compressor into a byte counter). Raises ArchiveError if the session
    changes or cannot be read meanwhile."""
    top = os.path.basename(src)
    try:
        with fs.parent_of(src) as (parent_fd, name):
            top_fd = fs.open_dir(name, parent_fd)
    except OSError as e:
        raise SourceUnreadable(src, e.strerror or str(e)) from None
    if os.fstat(top_fd).st_ino != entries[0].ino:
        os.close(top_fd)
        raise SourceUnreadable(src, "replaced since it was scanned")
    try:
        if content_bytes(entries) <= IN_MEMORY_LIMIT:
            parts: list[bytes] = []
            write_tar(top_fd, src, top, entries, parts.append)
            tar = b"".join(parts)
            tar += tarfile.NUL * (-len(tar) % tarfile.RECORDSIZE)
            return len(compress_bytes(tar, fmt, compresslevel))
        sink = _Counter()
        comp = open_compressed_writer(sink, fmt, compresslevel)  # type: ignore[arg-type]
        write_tar(top_fd, src, top, entries, comp.write)
        comp.close()
        return sink.count
    finally:
        os.close(top_fd)


class _Counter:
    """A write-only binary sink that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, b: Any) -> int:
        n = len(b)
        self.count += n
        return n

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False


@dataclass
class _Subtree:
    sessions: int = 0
    inodes: int = 0
    bytes: int = 0
    tar_bytes: int = 0
    oldest_days: float = 0.0
    newest_days: float = float("inf")
    ages: dict[str, int] = field(default_factory=lambda: {b: 0 for b, _ in AGE_BUCKETS})


def build_report(
    root: str | os.PathLike[str],
    *,
    older_than_days: float | None = None,
    format: str = "tar.zst",  # noqa: A002 - matches sweep()'s name
    compresslevel: int = 1,
    use_fd: bool = True,
    sample: int = 50,
    seed: int = 0,
    on_candidate: Callable[[str], None] | None = None,
    stale_after: float | None = None,
) -> dict[str, Any]:
    """What ``sweep(root, older_than_days=..., format=...)`` would archive, as a dict (plain
    JSON types): the dry-run totals, per-subtree counts, the age distribution, and
    ``estimated_bytes_out`` from compressing up to *sample* sessions picked by *seed*;
    ``running``: RUNNING runs per subtree, live / stale / without heartbeat
    (:func:`stale.survey`, *stale_after* in seconds)."""
    t0 = time.monotonic()
    fmt = normalize_format(format)
    check_days(older_than_days)
    if sample < 0:
        raise BadArgument(f"sample must be >= 0, got {sample}")
    check_level(compresslevel)  # a bad level fails now, not after the walk
    root_p = check_root(root)
    now = time.time()
    disc = Discovery(root_p, False, use_fd)
    planner = Planner(root_p, False, fmt, None, older_than_days)

    ages = {b: 0 for b, _ in AGE_BUCKETS}
    subtrees: dict[str, _Subtree] = {}
    heap: list[tuple[int, str, list[Entry]]] = []  # max-heap of the k smallest keys (negated)

    counts: dict[str, Any] = {"cleaned": 0, "failed": 0, "failures": []}
    for t, entries in scan_candidates(planner.tasks(disc.paths()), planner, counts):
        assert entries is not None
        newest = newest_mtime_ns(entries)
        if on_candidate is not None:
            on_candidate(t.path)
        n_bytes = sum(e.size for e in entries if e.kind == FILE)
        n_tar = tar_size(os.path.basename(t.path), entries)
        age_days = max(0.0, (now - newest / 1e9) / DAY)
        bucket = age_bucket(age_days)
        st = subtrees.setdefault(subtree_of(root_p, t.path), _Subtree())
        st.sessions += 1
        st.inodes += len(entries)
        st.bytes += n_bytes
        st.tar_bytes += n_tar
        st.oldest_days = max(st.oldest_days, age_days)
        st.newest_days = min(st.newest_days, age_days)
        st.ages[bucket] += 1
        ages[bucket] += 1
        if sample:
            key = _sample_key(seed, os.path.relpath(t.path, root_p))
            item = (-key, t.path, entries)
            if len(heap) < sample:
                heapq.heappush(heap, item)
            elif -key > heap[0][0]:
                heapq.heapreplace(heap, item)

    total = _Subtree(
        sessions=sum(s.sessions for s in subtrees.values()),
        inodes=sum(s.inodes for s in subtrees.values()),
        bytes=sum(s.bytes for s in subtrees.values()),
        tar_bytes=sum(s.tar_bytes for s in subtrees.values()),
    )
    est = _estimate(heap, fmt, compresslevel, total.tar_bytes)
    ratio = est["ratio"]
    rows = [
        {
            "subtree": name,
            "sessions": s.sessions,
            "inodes": s.inodes,
            "bytes": s.bytes,
            "tar_bytes": s.tar_bytes,
            "estimated_bytes_out": None if ratio is None else round(ratio * s.tar_bytes),
            "oldest_days": round(s.oldest_days, 3),
            "newest_days": round(s.newest_days, 3),
            "ages": s.ages,
        }
        for name, s in sorted(subtrees.items(), key=lambda kv: (-kv[1].sessions, kv[0]))
    ]
    return {
        "root": root_p,
        "format": fmt,
        "compresslevel": compresslevel,
        "older_than_days": older_than_days,
        "backend": disc.backend,
        "warnings": list(disc.warnings),
        "scanned": planner.scanned,
        "candidates": planner.candidates,
        "skipped": planner.skipped,
        "skipped_reasons": dict(planner.skipped_reasons or {}),
        "cleaned": counts["cleaned"],
        "failed": counts["failed"],
        "failures": counts["failures"],
        "sessions": total.sessions,  # candidates minus the unreadable ones
        "inodes_in": total.inodes,
        "bytes_in": total.bytes,
        "tar_bytes": total.tar_bytes,
        "inodes_freed": total.inodes - total.sessions,
        "estimated_bytes_out": est["estimated_bytes_out"],
        "estimate": {k: v for k, v in est.items() if k != "estimated_bytes_out"},
        "ages": [{"bucket": b, "min_days": lo, "sessions": ages[b]} for b, lo in AGE_BUCKETS],
        "subtrees": rows,
        "running": stale.survey(root_p, stale_after, now, lambda p: subtree_of(root_p, p)),
        "generated_at": now,
        "elapsed": round(time.monotonic() - t0, 3),
    }


def _estimate(heap: list[tuple[int, str, list[Entry]]], fmt: str, compresslevel: int,
              total_tar: int) -> dict[str, Any]:
    tar_in = out = used = 0
    errors: list[dict[str, str]] = []
    for _key, path, entries in sorted(heap, key=lambda x: x[1]):
        try:
            size = compressed_size(path, entries, fmt, compresslevel)
        except ArchiveError as e:  # changed or unreadable since it was scanned: not sampled
            errors.append({"path": path, "reason": e.reason})
            continue
        tar_in += tar_size(os.path.basename(path), entries)
        out += size
        used += 1
    ratio = out / tar_in if tar_in else None
    return {
        "sampled": used,
        "sample_tar_bytes": tar_in,
        "sample_bytes_out": out,
        "ratio": None if ratio is None else round(ratio, 6),
        "errors": errors,
        "estimated_bytes_out": None if ratio is None else round(ratio * total_tar),
    }


# --------------------------------------------------------------------------------- output


def format_report(r: dict[str, Any], max_rows: int = 20) -> str:
    """The report as a readable text table."""
    est = r["estimate"]
    older = "" if r["older_than_days"] is None else f", older than {r['older_than_days']:g} days"
    lines = [
        f"report for {r['root']} [{r['format']}{older}, {r['backend'] or 'no'} discovery]",
        f"would archive {human_count(r['sessions'])} of {human_count(r['scanned'])} finished "
        f"sessions (skipped {human_count(r['skipped'])}, unreadable {human_count(r['failed'])}, "
        f"leftovers to clean {human_count(r['cleaned'])})",
        f"  inodes {human_count(r['inodes_in'])} -> {human_count(r['sessions'])} archives "
        f"({human_count(r['inodes_freed'])} freed)",
        f"  bytes  {human_bytes(r['bytes_in'])} content, {human_bytes(r['tar_bytes'])} as tar "
        f"-> ~{human_bytes(r['estimated_bytes_out'])} {r['format']}",
    ]
    if est["ratio"] is not None:
        lines.append(f"  estimate: ratio {est['ratio']:.3f} from {est['sampled']} sampled "
                     f"sessions compressed in memory")
    else:
        lines.append("  estimate: no sessions sampled")
    if r["sessions"]:
        lines.append("")
        lines.append("age of newest file   " + "  ".join(
            f"{a['bucket']}: {human_count(a['sessions'])}" for a in r["ages"]))
    rows = r["subtrees"]
    if rows:
        width = min(60, max(len("subtree"), *(len(s["subtree"]) for s in rows[:max_rows])))
        lines.append("")
        lines.append(f"{'subtree':<{width}}  {'sessions':>8}  {'inodes':>8}  {'bytes':>10}  "
                     f"{'~archived':>10}  {'ages (days)':>13}")
        for s in rows[:max_rows]:
            name = s["subtree"] if len(s["subtree"]) <= width else "…" + s["subtree"][-width + 1:]
            span = f"{s['newest_days']:.0f}-{s['oldest_days']:.0f}"
            lines.append(f"{name:<{width}}  {s['sessions']:>8,}  {s['inodes']:>8,}  "
                         f"{human_bytes(s['bytes']):>10}  "
                         f"{human_bytes(s['estimated_bytes_out']):>10}  {span:>13}")
        if len(rows) > max_rows:
            rest = rows[max_rows:]
            lines.append(f"... {len(rest)} more subtrees with {sum(s['sessions'] for s in rest)} "
                         f"sessions (--json lists all)")
    lines += _running_lines(r.get("running"), max_rows)
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    lines.append("Nothing was changed; `session-archive sweep ROOT --execute` archives.")
    return "\n".join(lines)


def _running_lines(run: dict[str, Any] | None, max_rows: int) -> list[str]:
    if not run or not run["subtrees"]:
        return []
    lines = ["", f"RUNNING runs: {run['live']} live, {run['stale']} stale, "
             f"{run['no_heartbeat']} without heartbeat"
             + ("" if run["stale_after"] is None else f" (stale after {run['stale_after']:g} s)")]
    width = min(60, max(len("subtree"), *(len(s["subtree"]) for s in run["subtrees"])))
    lines.append(f"{'subtree':<{width}}  {'live':>6}  {'stale':>6}  {'no heartbeat':>12}")
    for s in run["subtrees"][:max_rows]:
        name = s["subtree"] if len(s["subtree"]) <= width else "…" + s["subtree"][-width + 1:]
        lines.append(f"{name:<{width}}  {s['live']:>6}  {s['stale']:>6}  {s['no_heartbeat']:>12}")
    if len(run["subtrees"]) > max_rows:
        lines.append(f"... {len(run['subtrees']) - max_rows} more subtrees (--json lists all)")
    for st in run["stale_runs"][:max_rows]:
        lines.append(f"stale: {st['path']} ({st['reason']})")
    if run["stale"]:
        lines.append("`session-archive sweep ROOT --finalize-stale --execute` moves stale runs "
                     "to FINISHED_ERROR/ and archives them.")
    return lines


def plot_report(report: dict[str, Any], path: str | os.PathLike[str], top: int = 15) -> None:
    """Draw *report* into a PNG at *path*: sessions and inodes of the largest subtrees, the
    age histogram, and bytes before vs estimated after. Uses matplotlib's Agg canvas
    through ``Figure`` (no pyplot, so no global state and no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    rows = report["subtrees"][:top][::-1]  # largest at the top of a horizontal bar chart
    names = [r["subtree"] if len(r["subtree"]) <= 40 else "…" + r["subtree"][-39:] for r in rows]
    for ax, key, colour in ((axes[0][0], "sessions", "tab:blue"), (axes[0][1], "inodes", "tab:orange")):
        ax.barh(range(len(rows)), [r[key] for r in rows], color=colour)
        ax.set_yticks(range(len(rows)), names if key == "sessions" else [""] * len(rows),
                      fontsize=8)
        ax.set_xlabel(key)
        more = len(report["subtrees"]) - len(rows)
        ax.set_title(f"{key} to archive per subtree (top {len(rows)}"
                     + (f", {more} more)" if more > 0 else ")"))
    ages = report["ages"]
    ax = axes[1][0]
    bars = ax.bar([a["bucket"] for a in ages], [a["sessions"] for a in ages], color="tab:green")
    ax.bar_label(bars, fontsize=8)
    ax.set_xlabel("age of the newest file in the session")
    ax.set_ylabel("sessions")
    ax.set_title("age distribution")
    ax = axes[1][1]
    est = report["estimated_bytes_out"] or 0
    labels = ["content", "as tar", f"~{report['format']}"]
    values = [report["bytes_in"], report["tar_bytes"], est]
    mib = [v / 2**20 for v in values]
    bars = ax.bar(labels, mib, color=["tab:gray", "tab:gray", "tab:purple"])
    ax.bar_label(bars, labels=[human_bytes(v) for v in values], fontsize=8)
    ax.set_ylabel("MiB")
    ratio = report["estimate"]["ratio"]
    ax.set_title("bytes before vs estimated after"
                 + (f" (ratio {ratio:.2f}, {report['estimate']['sampled']} sampled)"
                    if ratio is not None else ""))
    older = report["older_than_days"]
    fig.suptitle(f"{report['root']}: {report['sessions']} sessions, "
                 f"{report['inodes_in']} inodes would be archived"
                 + (f" (older than {older:g} d)" if older is not None else ""))
    fig.savefig(os.fspath(path), format="png", dpi=100)
