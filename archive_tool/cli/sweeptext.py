"""What sweep and compress print when done: the JSON summary, or the human lines (counts,
bytes, stale sessions finalized, the first failures)."""

from __future__ import annotations

import json
from typing import Any

import click

from archive_tool.cli.common import (
    Failed,
)
from archive_tool.errors import EXIT_CAPPED
from archive_tool.units import human_bytes, human_count


def finish_sweep(summary: dict[str, Any], as_json: bool, quiet: bool, verbose: bool = False,
                  cap_flag: str = "--max-dirs") -> None:
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    elif not quiet or summary["failed"]:
        click.echo(_stale_text(summary.get("stale"), verbose) + _human(summary))
    for f in summary["failures"][: None if verbose else 20]:
        click.echo(f"failed: {f['path']}: {f['reason']}", err=True)
    if summary.get("manifest_error"):
        click.echo(f"warning: {summary['manifest_error']}; `extract --undo` cannot put this "
                   "run back completely (`extract --tree` still finds every archive)", err=True)
    if summary.get("signal"):
        ctx = click.get_current_context()
        click.echo(f"Error: {summary['stopped']}; every session left whole", err=True)
        ctx.exit(128 + summary["signal"])
    capped = summary.get("capped") or 0
    if capped:
        # Never a silent cap (issue 16): cron sees rc 3 and the log says how much is left.
        n = summary["candidates"]
        click.echo(f"stopped at {n} of {n + capped}; rerun or pass {cap_flag} {n + capped}",
                   err=True)
    if summary.get("stopped"):
        raise Failed(summary["stopped"])
    if summary["failed"]:
        raise Failed(f"{summary['failed']} failed")
    if capped:
        click.get_current_context().exit(EXIT_CAPPED)


def _human(s: dict[str, Any]) -> str:
    c, b = human_count, human_bytes
    if s.get("kind") == "restore":
        verb = "would restore" if s["dry_run"] else "restored"
        n = s["candidates"] if s["dry_run"] else s["restored"]
        what = f" of run {s['run']}" if s.get("run") else ""
        line = (f"{verb} {c(n)} archives{what} under {s['root']} (scanned {c(s['scanned'])}, "
                f"skipped {c(s['skipped'])}, failed {c(s['failed'])}) in {s['elapsed']:.1f} s")
        if s["bytes_in"]:
            line += f"\n  archives {b(s['bytes_in'])}"
            if s["bytes_out"]:
                line += f" -> {b(s['bytes_out'])} restored"
        if s["dry_run"]:
            line += "\nNothing was changed; add --execute to restore."
        return line
    where = f"{s['root']} [{s['mode']}, {s['backend'] or 'no'} discovery"
    where += f", shard {s['shard']}]" if s.get("shard") else "]"
    if s["dry_run"]:
        line = (f"dry run: would archive {c(s['candidates'])} of {c(s['scanned'])} sessions "
                f"under {where}")
        if "packs" in s:
            line += f"\n  into {c(s['packs'])} packs"
        if s["inodes_in"]:
            line += f"\n  {c(s['inodes_in'])} inodes"
            if s["bytes_in"]:
                line += f", {b(s['bytes_in'])}"
        if s["cleaned"]:
            line += f"\n  would clean {c(s['cleaned'])} leftovers of interrupted runs"
        return line + "\nNothing was changed; add --execute to archive."
    rate = s["archived"] / s["elapsed"] if s["elapsed"] else 0.0
    line = (f"archived {c(s['archived'])} of {c(s['scanned'])} sessions under {where} in "
            f"{s['elapsed']:.1f} s ({rate:,.0f}/s): {c(s['inodes_in'])} inodes -> "
            f"{c(s['packs'] if 'packs' in s else s['archived'] + s['resumed'])} "
            f"{'packs' if 'packs' in s else 'files'}; skipped {c(s['skipped'])}, "
            f"failed {c(s['failed'])}")
    if s["bytes_in"]:
        line += f"\n  bytes {b(s['bytes_in'])} -> {b(s['bytes_out'])}"
    if s["resumed"]:
        line += (f"\n  removed {c(s['resumed'])} session dirs whose existing archive was "
                 "verified to hold them")
    if s["cleaned"]:
        line += f"\n  cleaned {c(s['cleaned'])} leftovers of interrupted runs"
    if s.get("manifest"):
        line += (f"\n  manifest {s['manifest']}\n  undo with: session-archive extract "
                 f"{s['root']} --undo {s['run']} --execute")
    return line


def _stale_text(st: dict[str, Any] | None, verbose: bool) -> str:
    if st is None:
        return ""
    text = (f"RUNNING runs: {st['running']} ({st['live']} live, {st['stale']} stale, "
            f"{st['no_heartbeat']} without heartbeat)")
    if st["finalized"] or st["skipped"] or st["failed"]:
        text += (f"; finalized {st['finalized']} into FINISHED_ERROR/, skipped "
                 f"{st['skipped']}, failed {st['failed']}")
    for r in st["runs"][: None if verbose else 50]:
        to = f" -> {r['moved_to']}" if r.get("moved_to") else ""
        text += f"\n  {r['action']}: {r['path']}{to} ({r['reason']})"
    return text + "\n"

