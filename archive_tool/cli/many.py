"""Commands over many sessions: sweep (tree), compress and extract (flat, tree, undo)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

# Library imports sit inside the commands, on purpose: `--help` and shell completion
# (a TAB press runs this program) load only click, not the engine (~0.1 s vs ~0.3 s).
from archive_tool.cli.common import (
    FORMAT,
    STALE_AFTER_HELP,
    BadInput,
    age_option,
    call,
    checked_level,
    days_option,
    level_option,
    nonneg_option,
    reconcile_catalog,
    stale_after_option,
)
from archive_tool.cli.group import cli
from archive_tool.cli.sweeptext import finish_sweep
from archive_tool.progress import progress_bar, want_progress

T = TypeVar("T")


def _no_contradiction(dry_run: bool, execute: bool) -> None:
    if dry_run and execute:
        raise BadInput("--dry-run and --execute contradict each other; give one")


def _one_age(kw: dict[str, Any]) -> None:
    """--older-than AGE into older_than_days (the hidden --older-than-days is the same
    knob in days; both at once is a usage error)."""
    age = kw.pop("older_than", None)
    if age is not None:
        if kw.get("older_than_days") is not None:
            raise BadInput("--older-than and --older-than-days are the same filter; give one")
        kw["older_than_days"] = age


def _quiet_period(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from archive_tool.guard.holds import parse_period

    try:
        return None if value is None else parse_period(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


def _sweep_options(default_format: str) -> Callable[[T], T]:
    def deco(f: T) -> T:
        opts = [
            click.option("--format", "-f", "fmt", type=FORMAT, default=default_format,
                         show_default=True, help="Archive format of each session."),
            level_option,
            click.option("--workers", "-j", type=click.IntRange(1, None), default=None,
                         help="Worker processes [default: one per core; more when the "
                              "root's metadata calls are slow (not --pack)]."),
            click.option("--older-than", "older_than", default=None, metavar="AGE",
                         callback=age_option,
                         help="Only sessions whose dir and newest file are older than AGE: "
                              "7d, 12h, 30m, 2w, 1y; a bare number is days."),
            click.option("--older-than-days", type=float, default=None, callback=days_option,
                         hidden=True, help="Old spelling of --older-than (a number of days)."),
            click.option("--quiet-period", default=None, metavar="D", callback=_quiet_period,
                         help="Leave a session whose newest file is younger than D (10m, "
                              "90s, 1h; 0 = off); sessions a process on this host has open "
                              "for writing are always left [default: 10m, or "
                              "$SESSION_ARCHIVE_QUIET_PERIOD]."),
            click.option("--pattern", default=None, help="Only sessions whose name contains this."),
            click.option("--max-dirs", type=int, default=None, callback=nonneg_option,
                         help="Archive at most N sessions; when more remain, say so on "
                              "stderr and exit 3 [default: no cap]."),
            click.option("--track-bytes/--no-track-bytes", default=False,
                         help="Report bytes in/out (free when executing; one stat walk in a dry run)."),
            click.option("--use-fd/--no-use-fd", default=True, show_default=True,
                         help="Find sessions with fd when installed."),
            click.option("--json", "as_json", is_flag=True,
                         help="Print the Summary as one JSON object on stdout, nothing else."),
            click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary unless something failed."),
            click.option("--progress/--no-progress", default=None,
                         help="Progress bar on stderr [default: only when stderr is a TTY]."),
            click.option("--verbose", "-v", is_flag=True, help="List every candidate and every failure."),
        ]
        for o in reversed(opts):
            f = o(f)  # type: ignore[assignment]
        return f

    return deco


def _run_sweep(root: str, *, flat: bool, execute: bool, fmt: str, level: int | None,
               workers: int | None, older_than_days: float | None, pattern: str | None,
               max_dirs: int | None, track_bytes: bool, use_fd: bool, as_json: bool,
               quiet: bool, verbose: bool, progress: bool | None, **extra: Any) -> None:
    from archive_tool.sweep.sessions import sweep

    on_candidate = (lambda p: click.echo(p, err=as_json)) if verbose and not execute else None
    listed: list[str] = []
    if not execute and not (verbose or as_json or quiet):
        on_candidate = listed.append  # summed up per project after the run (issue 26)

    def count() -> int:
        # A second, cheap walk (discovery + name/age filters, no reads) so the bar gets a
        # total and an ETA; the sweep itself streams discovery and never knows it upfront.
        from archive_tool.sweep.discover import Discovery
        from archive_tool.sweep.plan import Planner, check_root, parse_shard

        root_p = check_root(root)
        planner = Planner(root_p, flat, fmt, pattern, older_than_days, max_dirs or None,
                          parse_shard(extra.get("shard")))
        return sum(1 for _ in planner.tasks(Discovery(root_p, flat, use_fd).paths()))

    show = execute and want_progress(quiet, progress)
    recorder = None
    if extra.pop("catalog", False) and execute:
        from archive_tool.catalog.rebuild import Recorder

        recorder = Recorder(root, fmt)
    with progress_bar(show, "archiving", count=count) as bar:
        on_result = bar.tick if bar else None
        if recorder is not None:
            tick, rec = on_result, recorder

            def on_result(r: Any) -> None:
                rec(r)
                if tick is not None:
                    tick(r)
        args: dict[str, Any] = dict(
            format=fmt, compresslevel=level, workers=workers, older_than_days=older_than_days,
            pattern=pattern, max_dirs=max_dirs or None, track_bytes=track_bytes, use_fd=use_fd,
            on_result=on_result, on_candidate=on_candidate, **extra)
        if execute and not flat and extra.get("remove_src", True):
            from archive_tool.sweep.runlog import sweep_logged

            summary = call(sweep_logged, root, **args)
        else:
            summary = call(sweep, root, flat=flat, dry_run=not execute, **args)
    if recorder is not None:
        recorder.flush()
        summary["warnings"] += recorder.warnings
    if listed:
        from archive_tool.cli.dryrun import echo_items

        echo_items(listed, summary["root"], full=False, path=str, size=None, line=str,
                   noun="sessions")
    finish_sweep(summary, as_json, quiet, verbose)


def _pack_size(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``--pack-bytes``: a size such as 256M or 2G."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        raise click.BadParameter(f"a size such as 256M or 2G, got {value!r}", param=param)
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def _pack_sweep(root: str, pack: str, execute: bool, shard: str | None, scheduler: str | None,
                batch_size: int | None, finalize_stale: bool, stale_after: float | None,
                kw: dict[str, Any], targets: dict[str, int | None]) -> None:
    from archive_tool.sweep.packsweep import pack_sweep
    from archive_tool.sweep.runlog import pack_sweep_logged

    # Options that mean nothing for packs are refused, not silently ignored.
    if kw["fmt"].lower() not in ("tar.zst", "tar.zstd", "tzst"):
        raise click.BadParameter("packs are always tar.zst (seekable zstd)", param_hint="--format")
    if batch_size is not None:
        raise click.BadParameter("a pack is the unit of work; not with --pack",
                                 param_hint="--batch-size")
    executor = None
    if scheduler:
        from archive_tool.sweep.executors import DaskExecutor

        executor = call(DaskExecutor, scheduler)
        click.get_current_context().call_on_close(executor.shutdown)
    # Executed, the run's manifest is written (runlog.py), so `extract --undo` can put it back.
    args: dict[str, Any] = {} if execute else {"dry_run": True}
    summary = call(pack_sweep_logged if execute else pack_sweep, root, pack, **args,
                    compresslevel=kw["level"],
                    workers=kw["workers"], older_than_days=kw["older_than_days"],
                    pattern=kw["pattern"], max_dirs=kw["max_dirs"] or None,
                    use_fd=kw["use_fd"], shard=shard, executor=executor,
                    finalize_stale=finalize_stale, stale_after=stale_after,
                    quiet_period=kw["quiet_period"], **targets)
    finish_sweep(summary, kw["as_json"], kw["quiet"], kw["verbose"])


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--execute", is_flag=True, help="Really archive (default: dry run, nothing changes).")
@click.option("--dry-run", "-n", "dry_run", is_flag=True,
              help="Only say what would be done (the default without --execute).")
@_sweep_options("tar.zst")
@click.option("--shard", default=None, metavar="K/N|auto",
              help="Take only shard K of N (0 <= K < N) by a stable hash of each session's "
                   "path below ROOT, for SLURM job arrays; 'auto' takes K and N from "
                   "the array task's SLURM variables.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run batches on a Dask distributed scheduler (tcp://host:8786 or a "
                   "--scheduler-file path; needs the dask extra). Workers must see ROOT "
                   "at the same path.")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=None,
              help="Sessions per task (and per durability step) [default: 128; 256 with "
                   "--scheduler].")
@click.option("--finalize-stale", is_flag=True,
              help="First move dead RUNNING runs (stale heartbeat and, on this host, process "
                   "gone) to FINISHED_ERROR/ with a marker, so they are archived too.")
@click.option("--stale-after", default=None, metavar="D", callback=stale_after_option,
              help=STALE_AFTER_HELP)
@click.option("--pack", "pack", default=None, metavar="auto|daily|weekly|N",
              help="Opt-in: many sessions per file (seekable zstd, one frame a session) "
                   "instead of one archive a session; fills ROOT/.session-archive/"
                   "catalog.sqlite. 'auto' (the usual choice): one owner's dirs in path "
                   "order until a pack holds --pack-sessions sessions or --pack-bytes "
                   "bytes, the pack in their deepest common dir; daily|weekly|N: one pack "
                   "<period>.pack.tar.zst per FINISHED_* dir and day, ISO week or N sessions.")
@click.option("--pack-sessions", type=click.IntRange(1, 10_000), default=None,
              help="--pack auto: close a pack at this many sessions [default: 1000].")
@click.option("--pack-bytes", default=None, metavar="SIZE", callback=_pack_size,
              help="--pack auto: close a pack at this many compressed bytes, e.g. 256M, "
                   "1G [default: 256M].")
@click.option("--catalog", is_flag=True,
              help="Also add a row per archived session to ROOT/.session-archive/"
                   "catalog.sqlite (always on with --pack, and when ROOT has a catalog).")
def sweep(root: str, execute: bool, dry_run: bool, shard: str | None, scheduler: str | None,
          batch_size: int | None, finalize_stale: bool, stale_after: float | None,
          pack: str | None = None, catalog: bool = False, pack_sessions: int | None = None,
          pack_bytes: int | None = None, **kw: Any) -> None:
    """Archive every finished session dir anywhere under ROOT.

    Finds <ID>[-<name>] dirs whose parent is FINISHED_SUCCESS, FINISHED_ERROR or
    FINISHED; never touches RUNNING/ unless --finalize-stale. Dry run unless
    --execute. An executed sweep writes
    a manifest to ROOT/.session-archive/runs/<UTC time>.jsonl that `extract --undo` reads.

    \b
    Example: session-archive sweep /data/runs --execute --older-than 1d --quiet
    """
    from archive_tool.sweep.sessions import DEFAULT_BATCH

    _no_contradiction(dry_run, execute)
    _one_age(kw)
    # Packs are always zstd; _pack_sweep refuses another --format.
    kw["level"] = checked_level(kw["fmt"] if pack is None else "tar.zst", kw["level"])
    if stale_after is not None and not finalize_stale:
        raise click.BadParameter("only with --finalize-stale", param_hint="--stale-after")
    # A root that has a catalog keeps it true: every sweep adds its rows, and first
    # repairs what a crash of the last command left (issue 26).
    from archive_tool.catalog.catalog import catalog_path

    has = os.path.lexists(catalog_path(os.path.abspath(root)))
    if has and execute:
        reconcile_catalog(root)
    if (pack_sessions is not None or pack_bytes is not None) and \
            (pack is None or pack.strip().lower() != "auto"):
        raise click.BadParameter("only with --pack auto", param_hint="--pack-sessions/--pack-bytes")
    if pack is not None:
        _pack_sweep(root, pack, execute, shard, scheduler, batch_size, finalize_stale,
                    stale_after, kw, {"pack_sessions": pack_sessions, "pack_bytes": pack_bytes})
        return
    extra: dict[str, Any] = {"shard": shard, "batch_size": batch_size or DEFAULT_BATCH,
                             "catalog": catalog or has}
    if finalize_stale:
        extra.update(finalize_stale=True, stale_after=stale_after)
    if scheduler:
        from archive_tool.sweep.executors import DaskExecutor

        ex = call(DaskExecutor, scheduler)
        click.get_current_context().call_on_close(ex.shutdown)
        extra["executor"] = ex
        extra["batch_size"] = batch_size or ex.default_batch_size
    _run_sweep(root, flat=False, execute=execute, **extra, **kw)


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--dry-run/--no-dry-run", "-n", default=True, show_default=True,
              help="Only say what would be done; --no-dry-run archives.")
@click.option("--execute", is_flag=True, help="Same as --no-dry-run.")
@click.option("--remove-src/--no-remove-src", default=True, show_default=True,
              help="Delete each session dir once its archive is committed.")
@_sweep_options("tar.gz")
def compress(root: str, dry_run: bool, execute: bool, remove_src: bool, **kw: Any) -> None:
    """Archive the session-shaped direct children of ROOT (flat mode, as the published
    `python -m scitex_session.archive compress`).

    \b
    Example: session-archive compress main_out/FINISHED_SUCCESS --no-dry-run
    """
    _one_age(kw)
    kw["level"] = checked_level(kw["fmt"], kw["level"])
    _run_sweep(root, flat=True, execute=execute or not dry_run, remove_src=remove_src, **kw)


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--tree", is_flag=True,
              help="Restore every session archive anywhere under ROOT (those in FINISHED_* "
                   "dirs) back into its dir, instead of only the archives directly in ROOT; "
                   "sessions inside packs too (packs are kept: `repack` drops them later).")
@click.option("--undo", "undo", default=None, metavar="RUN|last",
              help="Undo one `sweep --execute` of ROOT: restore exactly the archives it wrote "
                   "(RUN as printed by that sweep, from ROOT/.session-archive/runs/), "
                   "removing each archive once its restore is durable (a --pack run's "
                   "sessions come back from their packs, which are kept).")
@click.option("--dest", "-d", type=click.Path(), default=None,
              help="Restore into DEST/<name>/ (default: beside each archive; flat mode only).")
@click.option("--pattern", default=None,
              help="Glob on archive names [default: *.tar.gz, *.tar.zst, *.tar, *.tar.xz; "
                   "flat mode only].")
@click.option("--remove-archive/--no-remove-archive", default=False, show_default=True,
              help="Delete each archive after its restore is durable (always on with --undo).")
@click.option("--max-files", type=int, default=None, callback=nonneg_option,
              help="Restore at most N archives; when more remain, say so on stderr and "
                   "exit 3 [default: no cap].")
@click.option("--dry-run/--no-dry-run", "-n", default=True, show_default=True,
              help="Only say what would be done; --no-dry-run restores.")
@click.option("--execute", is_flag=True, help="Same as --no-dry-run.")
@click.option("--track-bytes/--no-track-bytes", default=False,
              help="Report the archives' bytes.")
@click.option("--workers", "-j", type=click.IntRange(1, None), default=None,
              help="Worker processes [default: CPU count].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the Summary as one JSON object on stdout, nothing else.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar, no summary unless something failed.")
@click.option("--verbose", "-v", is_flag=True, help="List every failure (default: the first 20).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: only when stderr is a TTY].")
def extract(root: str, tree: bool, undo: str | None, dest: str | None, pattern: str | None,
            remove_archive: bool, max_files: int | None, dry_run: bool, execute: bool,
            track_bytes: bool, workers: int | None, as_json: bool, quiet: bool,
            verbose: bool, progress: bool | None) -> None:
    """Restore archives to session dirs: those directly under ROOT (flat mode), every one
    under ROOT (--tree), or exactly one sweep run's (--undo RUN). Dry run unless --execute.

    \b
    Example: session-archive extract /data/runs --undo last --execute
    """
    run = execute or not dry_run
    if tree and undo:
        raise BadInput("--tree and --undo are exclusive")
    if (tree or undo) and (dest or pattern):
        raise BadInput("--dest and --pattern apply to flat mode only (not --tree/--undo)")
    if undo and max_files:
        raise BadInput("--undo restores a whole run; --max-files does not apply")
    from archive_tool.restore.many import restore_many, restore_tree
    from archive_tool.restore.undo import undo_run

    if run and (tree or undo):
        reconcile_catalog(root)

    with progress_bar(run and want_progress(quiet, progress), "restoring") as bar:
        hooks: dict[str, Any] = {"on_jobs": bar.set_total, "on_result": bar.tick} if bar else {}
        if undo:
            summary = call(undo_run, root, undo, dry_run=not run, workers=workers, **hooks)
        elif tree:
            summary = call(restore_tree, root, dry_run=not run, workers=workers,
                            remove_archive=remove_archive, max_files=max_files or None,
                            **hooks)
        else:
            summary = call(
                restore_many, root, pattern=pattern, dest_root=dest,
                remove_archive=remove_archive, dry_run=not run, max_files=max_files or None,
                track_bytes=track_bytes, workers=workers, **hooks,
            )
    if (tree or undo) and not track_bytes:
        summary["bytes_in"] = summary["bytes_out"] = 0
    if not (tree or undo) and max_files:
        # restore_many stops counting candidates at the cap; what it scanned beyond them
        # (minus those skipped as already restored) is what the cap left out.
        summary["capped"] = summary["scanned"] - summary["candidates"] - summary["skipped"]
    finish_sweep(summary, as_json, quiet, verbose, cap_flag="--max-files")
