"""Operator commands: prune, report, demo-tree."""

from __future__ import annotations

import json
import os
from typing import Any

import click

# Library imports sit inside the commands, on purpose: `--help` and shell completion
# (a TAB press runs this program) load only click, not the engine (~0.1 s vs ~0.3 s).
from archive_tool.cli.common import (
    FORMAT,
    STALE_AFTER_HELP,
    BadInput,
    Failed,
    age_option,
    call,
    checked_level,
    days_option,
    level_option,
    reconcile_catalog,
    stale_after_option,
)
from archive_tool.cli.dryrun import LIST_HELP, echo_items
from archive_tool.cli.group import cli
from archive_tool.names import FINISHED_STATES
from archive_tool.units import human_bytes, human_count


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Only archives of runs started more than AGE ago (180d, 26w, 36h, 30m, "
                   "1y; a bare number is days; from the session ID's timestamp).")
@click.option("--keep-last", type=click.IntRange(0, None), default=None, metavar="K",
              help="Always keep the K newest archives of each script (<script>_out dir).")
@click.option("--state", "states", type=click.Choice(FINISHED_STATES), multiple=True,
              help="Only archives in this FINISHED_* dir (repeatable).")
@click.option("--include-latest", is_flag=True,
              help="Allow deleting a script's newest FINISHED_SUCCESS archive (kept by default).")
@click.option("--execute", is_flag=True, help="Really delete (default: dry run, nothing changes).")
@click.option("--dry-run", "-n", "dry_run", is_flag=True,
              help="Only say what would be deleted (the default without --execute).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as one JSON object on stdout, nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing unless something failed.")
@click.option("--list", "-v", "--verbose", "as_list", is_flag=True, help=LIST_HELP)
def prune(root: str, older_than: str | None, keep_last: int | None, states: tuple[str, ...],
          include_latest: bool, execute: bool, dry_run: bool, as_json: bool,
          quiet: bool, as_list: bool) -> None:
    """Delete old session archives under ROOT (retention). Dry run unless --execute.

    Only <ID>[-<name>].<format> files in FINISHED_* dirs and the sessions inside packs
    there (listed as PACK::SESSION; pruned by rewriting the pack without them, see
    `repack`) are considered; session dirs are never touched. Per script, the K newest (--keep-last) and the newest successful run
    (unless --include-latest) are kept; of the rest, an archive goes when it matches every
    filter given. Deletions are fsynced and logged in ROOT/.session-archive/prune/.

    \b
    Example: session-archive prune /data/runs --older-than 180d --keep-last 5 --execute
    """
    from archive_tool.retention.prune import prune as do_prune
    from archive_tool.units import parse_age

    if dry_run and execute:
        raise BadInput("--dry-run and --execute contradict each other; give one")
    if execute:
        reconcile_catalog(root)
    days = call(parse_age, older_than) if older_than is not None else None

    def deleted(a: Any) -> None:
        if not quiet and not as_json:
            click.echo(f"deleted  {human_bytes(a.bytes):>10}  {a.age_days:6.0f} d  {a.path}")

    s = call(do_prune, root, older_than_days=days, keep_last=keep_last, states=states,
              include_latest=include_latest, dry_run=not execute, on_deleted=deleted)
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
    elif not quiet or s["failed"]:
        if not execute and not quiet:
            echo_items(s["archives"], s["root"], full=as_list, path=lambda a: a["path"],
                       size=lambda a: a["bytes"], noun="archives",
                       line=lambda a: f"would delete  {human_bytes(a['bytes']):>10}  "
                                      f"{a['age_days']:6.0f} d  {a['path']}")
        kept = ", ".join(f"{human_count(v)} {k}" for k, v in sorted(s["kept"].items()))
        if execute:
            line = (f"deleted {human_count(s['deleted'])} of {human_count(s['scanned'])} "
                    f"archives under {s['root']}, freed {human_bytes(s['bytes_freed'])}")
        else:
            line = (f"dry run: would delete {human_count(s['selected'])} of "
                    f"{human_count(s['scanned'])} archives under {s['root']}, freeing "
                    f"{human_bytes(s['bytes'])}")
        click.echo(line + (f"\n  kept: {kept}" if kept else ""))
        if s["log"]:
            click.echo(f"  log {s['log']}")
        if not execute:
            click.echo("Nothing was changed; add --execute to delete.")
    for f in s["failures"][:20]:
        click.echo(f"failed: {f['path']}: {f['reason']}", err=True)
    if s["failed"]:
        raise Failed(f"{s['failed']} failed")


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--older-than", "older_than", default=None, metavar="AGE", callback=age_option,
              help="Only sessions whose dir and newest file are older than AGE (as sweep): "
                   "7d, 12h, 30m, 2w, 1y; a bare number is days.")
@click.option("--older-than-days", type=float, default=None, callback=days_option, hidden=True,
              help="Old spelling of --older-than (a number of days).")
@click.option("--format", "-f", "fmt", type=FORMAT, default="tar.zst", show_default=True,
              help="Archive format to estimate the size for.")
@level_option
@click.option("--sample", type=click.IntRange(0, None), default=50, show_default=True,
              help="Sessions compressed in memory for the size estimate (0 = none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the sample.")
@click.option("--use-fd/--no-use-fd", default=True, show_default=True,
              help="Find sessions with fd when installed.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on stdout, nothing else.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Also draw the report into a PNG (needs matplotlib).")
@click.option("--stale-after", default=None, metavar="D", callback=stale_after_option,
              help=STALE_AFTER_HELP)
def report(root: str, older_than: float | None, older_than_days: float | None, fmt: str,
           level: int | None, sample: int,
           seed: int, use_fd: bool, as_json: bool, plot: str | None,
           stale_after: float | None) -> None:
    """Show what a sweep of ROOT would archive, changing nothing.

    Per <script>_out subtree: sessions, inodes and bytes; the age distribution; and the
    archived size, estimated by compressing a sample of sessions in memory. Also the
    RUNNING runs per subtree: live, stale (what sweep --finalize-stale would move), and
    without heartbeat.

    \b
    Example: session-archive report /data/runs --older-than 7d --plot runs.png
    """
    from archive_tool.catalog.report import build_report
    from archive_tool.catalog.reportview import format_report, plot_report

    if older_than is not None:
        if older_than_days is not None:
            raise BadInput("--older-than and --older-than-days are the same filter; give one")
        older_than_days = older_than

    level = checked_level(fmt, level)
    rep = call(build_report, root, older_than_days=older_than_days, format=fmt,
                compresslevel=level, use_fd=use_fd, sample=sample, seed=seed,
                stale_after=stale_after)
    if plot is not None:
        try:
            call(plot_report, rep, plot)
        except ImportError as e:
            raise Failed(f"--plot needs matplotlib ({e}); "
                         "pip install 'scitex-session-tools[plot]'") from None
    if as_json:
        click.echo(json.dumps(rep, sort_keys=True))
        return
    click.echo(format_report(rep))
    if plot is not None:
        click.echo(f"plot written to {plot}")
    for f in rep["failures"][:20]:
        click.echo(f"unreadable: {f['path']}: {f['reason']}", err=True)


@cli.command("demo-tree")
@click.argument("directory", type=click.Path())
@click.option("--sessions", "-n", type=click.IntRange(1, 2_000_000), default=1000,
              show_default=True, help="How many sessions to create.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the generator: the same seed gives the same tree.")
def demo_tree(directory: str, sessions: int, seed: int) -> None:
    """Create a realistic demo tree of N sessions under DIRECTORY (to try a sweep on).

    \b
    Example: session-archive demo-tree /tmp/demo -n 5000
    """
    from archive_tool.demo import make_tree

    if os.path.exists(directory) and os.listdir(directory):
        raise BadInput(f"{directory}: exists and is not empty")
    counts = call(make_tree, directory, sessions, seed=seed)
    click.echo(f"created {human_count(sessions)} sessions under {directory}: " + ", ".join(
        f"{k} {human_bytes(v) if k == 'bytes' else human_count(v)}" for k, v in counts.items()))
