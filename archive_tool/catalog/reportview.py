"""The report as text (format_report) and as a picture (plot_report, matplotlib loaded
only there); build_report in report.py makes the numbers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from archive_tool.catalog.report import project_of
from archive_tool.units import human_bytes, human_count

Column = tuple[str, int, Callable[[dict[str, Any]], str]]


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
        f"  disk   {human_bytes(r['disk_bytes_in'])} on disk (du) -> "
        f"~{human_bytes(r['estimated_disk_after'])} ({_freed(r['disk_freed'])})",
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
    lines += _project_lines(r.get("projects") or [], max_rows)
    lines += _table(r["subtrees"], "subtree", 60, max_rows, "subtrees", [
        ("sessions", 8, lambda s: f"{s['sessions']:,}"),
        ("inodes", 8, lambda s: f"{s['inodes']:,}"),
        ("on disk", 10, lambda s: human_bytes(s["disk_bytes"])),
        ("~after", 10, lambda s: human_bytes(s["estimated_disk_after"])),
        ("ages (days)", 13, lambda s: f"{s['newest_days']:.0f}-{s['oldest_days']:.0f}"),
    ])
    lines += _running_lines(r.get("running"), max_rows)
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    lines.append("Nothing was changed; `session-archive sweep ROOT --execute` archives.")
    return "\n".join(lines)


def _freed(n: int | None) -> str:
    return "nothing sampled" if n is None else f"{human_bytes(n)} freed"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def _table(rows: list[dict[str, Any]], key: str, cap: int, max_rows: int, what: str,
           columns: list[Column]) -> list[str]:
    """A text table: *key* left-aligned (cut from the left past *cap*), then *columns*
    (heading, width, cell) right-aligned; rows past *max_rows* summed in one line."""
    if not rows:
        return []
    width = min(cap, max(len(key), *(len(r[key]) for r in rows[:max_rows])))
    lines = ["", f"{key:<{width}}" + "".join(f"  {h:>{w}}" for h, w, _ in columns)]
    for r in rows[:max_rows]:
        name = r[key] if len(r[key]) <= width else "…" + r[key][-width + 1:]
        lines.append(f"{name:<{width}}" + "".join(f"  {cell(r):>{w}}" for _, w, cell in columns))
    if len(rows) > max_rows:
        rest = rows[max_rows:]
        more = f"... {len(rest):,} more {what}"
        if "sessions" in rest[0]:
            more += f" with {sum(x['sessions'] for x in rest):,} sessions"
        lines.append(more + " (--json lists all)")
    return lines


def _project_lines(projects: list[dict[str, Any]], max_rows: int) -> list[str]:
    return _table(projects, "project", 40, max_rows, "projects", [
        ("sessions", 8, lambda p: f"{p['sessions']:,}"),
        ("inodes freed", 12, lambda p: f"{p['inodes_freed']:,}"),
        ("share", 5, lambda p: _pct(p["share_inodes_freed"])),
        ("disk freed", 10, lambda p: human_bytes(p["disk_freed"])),
        ("share", 5, lambda p: _pct(p["share_disk_freed"])),
    ])


def _running_lines(run: dict[str, Any] | None, max_rows: int) -> list[str]:
    if not run or not run["subtrees"]:
        return []
    lines = ["", f"RUNNING runs: {run['live']:,} live, {run['stale']:,} stale, "
             f"{run['no_heartbeat']:,} without heartbeat"
             + ("" if run["stale_after"] is None else f" (stale after {run['stale_after']:g} s)")]
    for st in run["stale_runs"][:max_rows]:
        lines.append(f"stale: {st['path']} ({st['reason']})")
    lines += _table(run["subtrees"], "subtree", 60, max_rows, "subtrees", [
        ("live", 6, lambda s: f"{s['live']:,}"),
        ("stale", 6, lambda s: f"{s['stale']:,}"),
        ("no heartbeat", 12, lambda s: f"{s['no_heartbeat']:,}"),
    ])[1:]  # right under the RUNNING line
    if run["stale"]:
        lines.append("`session-archive sweep ROOT --finalize-stale --execute` moves stale runs "
                     "to FINISHED_ERROR/ and archives them.")
    return lines


def _top(items: list[dict[str, Any]], key: str, n: int) -> tuple[list[str], list[float]]:
    """The *n* largest by *key* and one "other (k)" bar for the rest, largest on top."""
    ranked = sorted(items, key=lambda x: -(x[key] or 0))
    names = [x["project"] for x in ranked[:n]]
    values = [float(x[key] or 0) for x in ranked[:n]]
    if len(ranked) > n:
        names.append(f"other ({len(ranked) - n})")
        values.append(float(sum(x[key] or 0 for x in ranked[n:])))
    short = [m if len(m) <= 30 else "…" + m[-29:] for m in names]
    return short[::-1], values[::-1]


def _share_bars(ax: Any, projects: list[dict[str, Any]], key: str, top: int, total: float,
                unit: float, fmt: Callable[[float], str], colour: str, xlabel: str,
                title: str) -> None:
    """Horizontal bars of *key* per project (top *top* and the rest as one), each labelled
    with its value and share of *total*."""
    names, values = _top(projects, key, top)
    bars = ax.barh(names, [v / unit for v in values], color=colour)
    ax.bar_label(bars, labels=[f"{fmt(v)} ({100 * v / (total or 1):.0f} %)" for v in values],
                 fontsize=8, padding=2)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.3)


def plot_report(report: dict[str, Any], path: str | os.PathLike[str], top: int = 12) -> None:
    """Draw *report* into a PNG at *path*, around what an operator decides from: inodes and
    disk a sweep frees per project (each with its share), the age histogram, and RUNNING
    runs by state per project. Uses matplotlib's Agg canvas through ``Figure`` (no pyplot,
    so no global state and no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    projects = report.get("projects") or []

    _share_bars(axes[0][0], projects, "inodes_freed", top, report["inodes_freed"], 1,
                lambda v: f"{v:,.0f}", "tab:orange", "inodes freed",
                f"inodes freed per project: {report['inodes_freed']:,} in all")
    if report.get("disk_freed") is None:
        axes[0][1].text(0.5, 0.5, "no sessions sampled: no disk estimate", ha="center",
                        va="center")
        axes[0][1].set_axis_off()
    else:
        _share_bars(axes[0][1], projects, "disk_freed", top, report["disk_freed"], 2**20,
                    human_bytes, "tab:purple", "MiB on disk freed (du, estimated)",
                    f"disk freed per project: {human_bytes(report['disk_bytes_in'])} -> "
                    f"~{human_bytes(report['estimated_disk_after'])}")

    ages = report["ages"]
    ax = axes[1][0]
    bars = ax.bar([a["bucket"] for a in ages], [a["sessions"] for a in ages], color="tab:green")
    ax.bar_label(bars, labels=[f"{a['sessions']:,}" for a in ages], fontsize=8)
    ax.set_xlabel("age of the newest file in the session")
    ax.set_ylabel("sessions")
    ax.set_title("age of the sessions to archive")

    ax = axes[1][1]
    run = report.get("running") or {"subtrees": []}
    per: dict[str, dict[str, int]] = {}
    for r in run["subtrees"]:
        row = per.setdefault(project_of(r["subtree"]), {"live": 0, "stale": 0, "no_heartbeat": 0})
        for k in row:
            row[k] += r[k]
    if not per:
        ax.text(0.5, 0.5, "no RUNNING runs", ha="center", va="center")
        ax.set_axis_off()
    else:
        order = sorted(per, key=lambda p: (-per[p]["stale"], -per[p]["no_heartbeat"], p))[:top]
        order = order[::-1]
        left = [0.0] * len(order)
        for state, colour, label in (("stale", "tab:red", "stale"),
                                     ("no_heartbeat", "tab:gray", "no heartbeat"),
                                     ("live", "tab:blue", "live")):
            vals = [per[p][state] for p in order]
            ax.barh(order, vals, left=left, color=colour, label=label)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("RUNNING runs")
        ax.margins(x=0.1)
        ax.set_title(f"RUNNING runs: {run['stale']:,} stale, {run['no_heartbeat']:,} without "
                     f"heartbeat, {run['live']:,} live")

    older = report["older_than_days"]
    fig.suptitle(f"{report['root']}: archiving {report['sessions']:,} sessions frees "
                 f"{report['inodes_freed']:,} inodes and ~{human_bytes(report.get('disk_freed'))}"
                 + (f" (older than {older:g} d)" if older is not None else ""))
    fig.savefig(os.fspath(path), format="png", dpi=100)

