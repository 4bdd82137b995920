"""``session-archive``: parse -> call one library function -> print -> exit code.

Exit codes (every command): 0 done; 1 some item failed (or the sweep was stopped by a full
disk); 2 bad usage or input (missing/dangerous root, unknown format, bad numbers);
3 an explicit cap (--max-dirs / --max-files) left work undone ("stopped at N of M" on
stderr); 75 another sweep holds the lock (``flock -E 75`` convention); 128+N stopped by
signal N.
Expected failures print one ``Error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__
from .errors import (
    EXIT_CAPPED,
    EXIT_FAILED,
    EXIT_USAGE,
    ArchiveError,
    BadArgument,
    DaskUnavailable,
    LockBusy,
)
from .names import FINISHED_STATES, FORMATS
from .progress import progress_bar, want_progress
from .units import human_bytes, human_count

T = TypeVar("T")



class Failed(click.ClickException):
    exit_code = EXIT_FAILED


class BadInput(click.ClickException):
    exit_code = EXIT_USAGE


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one library call, turning its expected exceptions into one-line CLI errors with
    the exit code each carries (errors.py). Anything else is a bug: it keeps its
    traceback instead of passing for "bad usage"."""
    try:
        return fn(*args, **kwargs)
    except LockBusy as e:
        raise _exit(f"another sweep holds {e.path}", e.exit_code) from None
    except (ArchiveError, BadArgument, DaskUnavailable) as e:
        raise _exit(str(e), e.exit_code) from None
    except FileExistsError as e:
        raise Failed(f"{e.filename}: already exists; refusing to overwrite") from None
    except PermissionError as e:
        raise Failed(f"{e.filename}: permission denied") from None
    except OSError as e:
        raise Failed(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None


def _exit(message: str, code: int) -> click.ClickException:
    e = click.ClickException(message)
    e.exit_code = code
    return e


FORMAT = click.Choice(FORMATS, case_sensitive=False)


def _nonneg(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}", param=param)
    return value


def _days(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # float() accepts inf and nan, and 1e300 days overflows the cutoff in nanoseconds:
    # all three were tracebacks or a message about integers.
    from .api import MAX_DAYS

    if value is None:
        return None
    if value != value:  # NaN
        raise click.BadParameter("must be a number of days, got nan", param=param)
    if not 0 <= value <= MAX_DAYS:
        raise click.BadParameter(f"must be between 0 and {MAX_DAYS:.0f} days, got {value:g}",
                                 param=param)
    return value


def _check_pack_target(directory: str, force: bool) -> None:
    """pack deletes its source: refuse a live run, a dir that is not a session and a
    system root unless --force (system and home roots and .git stay refused)."""
    from .names import RUNNING_STATE, is_session_name
    from .plan import _DANGEROUS

    path = os.path.realpath(directory)
    parts = path.split(os.sep)
    if path in _DANGEROUS or path == os.path.realpath(os.path.expanduser("~")) or ".git" in parts:
        raise BadInput(f"{path}: refusing to pack a system or home root or a .git path")
    if force:
        return
    if RUNNING_STATE in parts:
        raise BadInput(f"{path}: inside {RUNNING_STATE}/ (the run may still be live); "
                       "--force to pack it anyway")
    if not is_session_name(os.path.basename(path)):
        raise BadInput(f"{path}: not a session dir (name is not <ID>[-<suffix>]); "
                       "--force to pack it anyway")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="session-archive")
def cli() -> None:
    """Archive finished experiment-session dirs into single verified, durable files.

    Each finished session dir (<ID>-<name>/ under FINISHED_SUCCESS, FINISHED_ERROR or
    FINISHED) becomes one <ID>-<name>.tar.zst (or .tar.gz, .tar, .tar.xz) beside it; the
    source is deleted only after the archive is verified and on stable storage.

    \b
    Example: session-archive sweep /data/runs --execute --older-than-days 1 --quiet
    """


# ------------------------------------------------------------------------ one session


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "-f", "fmt", type=FORMAT, default="tar.zst", show_default=True)
@click.option("--keep-source", is_flag=True, help="Keep the session dir after archiving.")
@click.option("--level", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Compression level on gzip's 1..9 scale.")
@click.option("--force", is_flag=True,
              help="Pack a dir under RUNNING/ or one not named like a session.")
def pack(directory: str, fmt: str, keep_source: bool, level: int, force: bool) -> None:
    """Archive one session DIRECTORY into DIRECTORY.<format> beside it.

    \b
    Example: session-archive pack main_out/FINISHED_SUCCESS/2026Y-11M-23D-18h39m23s_KYwP-main
    """
    from .single import archive_one

    _check_pack_target(directory, force)
    path = _call(archive_one, directory, format=fmt, remove_src=not keep_source, compresslevel=level)
    click.echo(str(path))


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--dest", "-d", type=click.Path(), default=None,
              help="Directory to create (default: the archive path without its suffix).")
@click.option("--remove-archive", is_flag=True,
              help="Delete the archive once the restored dir is on stable storage.")
@click.option("--keep-setuid", is_flag=True,
              help="Keep setuid/setgid/sticky bits (root only; dropped by default).")
def unpack(archive: str, dest: str | None, remove_archive: bool, keep_setuid: bool) -> None:
    """Restore one ARCHIVE into a session dir (never overwrites).

    \b
    Example: session-archive unpack FINISHED_SUCCESS/2026Y-11M-23D-18h39m23s_KYwP-main.tar.zst
    """
    from .restore import restore_one

    click.echo(str(_call(restore_one, archive, dest, remove_archive,
                         keep_special=keep_setuid)))


@cli.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print only the bad archives.")
def verify(archives: tuple[str, ...], quiet: bool) -> None:
    """Read each ARCHIVE completely: headers, data, checksums, restore safety.

    Prints one line per bad archive; exits 1 if any is bad.

    \b
    Example: session-archive verify -q main_out/FINISHED_SUCCESS/*.tar.zst
    """
    from .read import verify_archive

    bad = 0
    for a in archives:
        try:
            info = verify_archive(a)
        except ArchiveError as e:
            bad += 1
            click.echo(f"BAD {e}", err=False)
            continue
        if not quiet:
            click.echo(f"ok  {a}: {human_count(info.members)} members, {human_bytes(info.bytes)}")
    if bad:
        raise Failed(f"{bad} of {len(archives)} archives failed verification")


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.argument("member", required=False)
def show(archive: str, member: str | None) -> None:
    """List ARCHIVE's members with sizes, or write MEMBER's bytes to stdout.

    MEMBER may be the full name or the name below the session dir
    (e.g. CONFIGS/CONFIG.yaml).

    \b
    Example: session-archive show RUN.tar.zst CONFIGS/CONFIG.yaml
    """
    from .read import copy_member, list_members

    if member is not None:
        out = click.get_binary_stream("stdout")
        _call(copy_member, archive, member, out)
        out.flush()
        return

    def listing() -> None:
        for m in list_members(archive):
            link = f" -> {m.linkname}" if m.linkname else ""
            click.echo(f"{m.kind} {m.size:>12} {m.name}{link}")

    _call(listing)


# --------------------------------------------------------------------------- many sessions


def _finish_sweep(summary: dict[str, Any], as_json: bool, quiet: bool, verbose: bool = False,
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
            f"{c(s['archived'] + s['resumed'])} files; skipped {c(s['skipped'])}, "
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


def _stale_after(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from .stale import parse_duration

    try:
        return None if value is None else parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


STALE_AFTER_HELP = ("Threshold for RUNNING runs: heartbeat (or, without one, the newest "
                    "write) older than D: 2d, 6h, 30m, 90s; a bare number is days. "
                    "[default: 10 x the run's heartbeat interval; runs without "
                    "heartbeat never]")


def _sweep_options(default_format: str) -> Callable[[T], T]:
    def deco(f: T) -> T:
        opts = [
            click.option("--format", "-f", "fmt", type=FORMAT, default=default_format,
                         show_default=True),
            click.option("--level", type=click.IntRange(1, 9), default=1, show_default=True,
                         help="Compression level on gzip's 1..9 scale."),
            click.option("--workers", "-j", type=click.IntRange(1, None), default=None,
                         help="Worker processes [default: CPU count]."),
            click.option("--older-than-days", type=float, default=None, callback=_days,
                         help="Only sessions whose dir and newest file are older."),
            click.option("--pattern", default=None, help="Only sessions whose name contains this."),
            click.option("--max-dirs", type=int, default=None, callback=_nonneg,
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


def _run_sweep(root: str, *, flat: bool, execute: bool, fmt: str, level: int,
               workers: int | None, older_than_days: float | None, pattern: str | None,
               max_dirs: int | None, track_bytes: bool, use_fd: bool, as_json: bool,
               quiet: bool, verbose: bool, progress: bool | None, **extra: Any) -> None:
    from .sweep import sweep

    on_candidate = (lambda p: click.echo(p, err=as_json)) if verbose and not execute else None

    def count() -> int:
        # A second, cheap walk (discovery + name/age filters, no reads) so the bar gets a
        # total and an ETA; the sweep itself streams discovery and never knows it upfront.
        from .discover import Discovery
        from .plan import Planner, check_root, parse_shard

        root_p = check_root(root)
        planner = Planner(root_p, flat, fmt, pattern, older_than_days, max_dirs or None,
                          parse_shard(extra.get("shard")))
        return sum(1 for _ in planner.tasks(Discovery(root_p, flat, use_fd).paths()))

    show = execute and want_progress(quiet, progress)
    with progress_bar(show, "archiving", count=count) as bar:
        args: dict[str, Any] = dict(
            format=fmt, compresslevel=level, workers=workers, older_than_days=older_than_days,
            pattern=pattern, max_dirs=max_dirs or None, track_bytes=track_bytes, use_fd=use_fd,
            on_result=bar.tick if bar else None, on_candidate=on_candidate, **extra)
        if execute and not flat and extra.get("remove_src", True):
            from .runlog import sweep_logged

            summary = _call(sweep_logged, root, **args)
        else:
            summary = _call(sweep, root, flat=flat, dry_run=not execute, **args)
    _finish_sweep(summary, as_json, quiet, verbose)


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--execute", is_flag=True, help="Really archive (default: dry run, nothing changes).")
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
@click.option("--stale-after", default=None, metavar="D", callback=_stale_after,
              help=STALE_AFTER_HELP)
def sweep(root: str, execute: bool, shard: str | None, scheduler: str | None,
          batch_size: int | None, finalize_stale: bool, stale_after: float | None,
          **kw: Any) -> None:
    """Archive every finished session dir anywhere under ROOT.

    Finds <ID>[-<name>] dirs whose parent is FINISHED_SUCCESS, FINISHED_ERROR or
    FINISHED; never touches RUNNING/ unless --finalize-stale. Dry run unless
    --execute. An executed sweep writes
    a manifest to ROOT/.session-archive/runs/<UTC time>.jsonl that `extract --undo` reads.

    \b
    Example: session-archive sweep /data/runs --execute --older-than-days 1 --quiet
    """
    from .sweep import DEFAULT_BATCH

    if stale_after is not None and not finalize_stale:
        raise click.BadParameter("only with --finalize-stale", param_hint="--stale-after")
    extra: dict[str, Any] = {"shard": shard, "batch_size": batch_size or DEFAULT_BATCH}
    if finalize_stale:
        extra.update(finalize_stale=True, stale_after=stale_after)
    if scheduler:
        from .executors import DaskExecutor

        ex = _call(DaskExecutor, scheduler)
        click.get_current_context().call_on_close(ex.shutdown)
        extra["executor"] = ex
        extra["batch_size"] = batch_size or ex.default_batch_size
    _run_sweep(root, flat=False, execute=execute, **extra, **kw)


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--dry-run/--no-dry-run", default=True, show_default=True)
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
    _run_sweep(root, flat=True, execute=execute or not dry_run, remove_src=remove_src, **kw)


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--tree", is_flag=True,
              help="Restore every session archive anywhere under ROOT (those in FINISHED_* "
                   "dirs) back into its dir, instead of only the archives directly in ROOT.")
@click.option("--undo", "undo", default=None, metavar="RUN|last",
              help="Undo one `sweep --execute` of ROOT: restore exactly the archives it wrote "
                   "(RUN as printed by that sweep, from ROOT/.session-archive/runs/), "
                   "removing each archive once its restore is durable.")
@click.option("--dest", "-d", type=click.Path(), default=None,
              help="Restore into DEST/<name>/ (default: beside each archive; flat mode only).")
@click.option("--pattern", default=None,
              help="Glob on archive names [default: *.tar.gz, *.tar.zst, *.tar, *.tar.xz; "
                   "flat mode only].")
@click.option("--remove-archive/--no-remove-archive", default=False, show_default=True,
              help="Delete each archive after its restore is durable (always on with --undo).")
@click.option("--max-files", type=int, default=None, callback=_nonneg,
              help="Restore at most N archives; when more remain, say so on stderr and "
                   "exit 3 [default: no cap].")
@click.option("--dry-run/--no-dry-run", default=True, show_default=True)
@click.option("--execute", is_flag=True, help="Same as --no-dry-run.")
@click.option("--track-bytes/--no-track-bytes", default=False,
              help="Report the archives' bytes.")
@click.option("--workers", "-j", type=click.IntRange(1, None), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
@click.option("--verbose", "-v", is_flag=True)
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
    if tree or undo:
        from .tree_restore import restore_tree, undo_run

        with progress_bar(run and want_progress(quiet, progress), "restoring") as bar:
            hooks: dict[str, Any] = {"on_jobs": bar.set_total, "on_result": bar.tick} if bar else {}
            if undo:
                summary = _call(undo_run, root, undo, dry_run=not run, workers=workers, **hooks)
            else:
                summary = _call(restore_tree, root, dry_run=not run, workers=workers,
                                remove_archive=remove_archive, max_files=max_files or None,
                                **hooks)
        if not track_bytes:
            summary["bytes_in"] = summary["bytes_out"] = 0
    else:
        from .tree_restore import restore_many

        summary = _call(
            restore_many, root, pattern=pattern, dest_root=dest, remove_archive=remove_archive,
            dry_run=not run, max_files=max_files or None,
            track_bytes=track_bytes, workers=workers,
        )
        if max_files:
            # restore_many stops counting candidates at the cap; what it scanned beyond
            # them (minus those skipped as already restored) is what the cap left out.
            summary["capped"] = summary["scanned"] - summary["candidates"] - summary["skipped"]
    _finish_sweep(summary, as_json, quiet, verbose, cap_flag="--max-files")


@cli.command()
@click.argument("root", type=click.Path())
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Only archives of runs started more than AGE ago (180d, 26w, 36h, 1y; "
                   "from the session ID's timestamp).")
@click.option("--keep-last", type=click.IntRange(0, None), default=None, metavar="K",
              help="Always keep the K newest archives of each script (<script>_out dir).")
@click.option("--state", "states", type=click.Choice(FINISHED_STATES), multiple=True,
              help="Only archives in this FINISHED_* dir (repeatable).")
@click.option("--include-latest", is_flag=True,
              help="Allow deleting a script's newest FINISHED_SUCCESS archive (kept by default).")
@click.option("--execute", is_flag=True, help="Really delete (default: dry run, nothing changes).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as one JSON object on stdout, nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing unless something failed.")
def prune(root: str, older_than: str | None, keep_last: int | None, states: tuple[str, ...],
          include_latest: bool, execute: bool, as_json: bool, quiet: bool) -> None:
    """Delete old session archives under ROOT (retention). Dry run unless --execute.

    Only <ID>[-<name>].<format> files in FINISHED_* dirs are considered; session dirs are
    never touched. Per script, the K newest (--keep-last) and the newest successful run
    (unless --include-latest) are kept; of the rest, an archive goes when it matches every
    filter given. Deletions are fsynced and logged in ROOT/.session-archive/prune/.

    \b
    Example: session-archive prune /data/runs --older-than 180d --keep-last 5 --execute
    """
    from .prune import parse_age
    from .prune import prune as do_prune

    days = _call(parse_age, older_than) if older_than is not None else None

    def deleted(a: Any) -> None:
        if not quiet and not as_json:
            click.echo(f"deleted  {human_bytes(a.bytes):>10}  {a.age_days:6.0f} d  {a.path}")

    s = _call(do_prune, root, older_than_days=days, keep_last=keep_last, states=states,
              include_latest=include_latest, dry_run=not execute, on_deleted=deleted)
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
    elif not quiet or s["failed"]:
        if not execute and not quiet:
            for a in s["archives"]:
                click.echo(f"would delete  {human_bytes(a['bytes']):>10}  "
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
@click.option("--older-than-days", type=float, default=None, callback=_days,
              help="Only sessions whose dir and newest file are older (as sweep).")
@click.option("--format", "-f", "fmt", type=FORMAT, default="tar.zst", show_default=True,
              help="Archive format to estimate the size for.")
@click.option("--level", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Compression level on gzip's 1..9 scale.")
@click.option("--sample", type=click.IntRange(0, None), default=50, show_default=True,
              help="Sessions compressed in memory for the size estimate (0 = none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the sample.")
@click.option("--use-fd/--no-use-fd", default=True, show_default=True,
              help="Find sessions with fd when installed.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on stdout, nothing else.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              help="Also draw the report into a PNG (needs matplotlib).")
@click.option("--stale-after", default=None, metavar="D", callback=_stale_after,
              help=STALE_AFTER_HELP)
def report(root: str, older_than_days: float | None, fmt: str, level: int, sample: int,
           seed: int, use_fd: bool, as_json: bool, plot: str | None,
           stale_after: float | None) -> None:
    """Show what a sweep of ROOT would archive, changing nothing.

    Per <script>_out subtree: sessions, inodes and bytes; the age distribution; and the
    archived size, estimated by compressing a sample of sessions in memory. Also the
    RUNNING runs per subtree: live, stale (what sweep --finalize-stale would move), and
    without heartbeat.

    \b
    Example: session-archive report /data/runs --older-than-days 7 --plot runs.png
    """
    from .report import build_report, format_report, plot_report

    rep = _call(build_report, root, older_than_days=older_than_days, format=fmt,
                compresslevel=level, use_fd=use_fd, sample=sample, seed=seed,
                stale_after=stale_after)
    if plot is not None:
        try:
            _call(plot_report, rep, plot)
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
@click.option("--sessions", "-n", type=click.IntRange(1, 2_000_000), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo_tree(directory: str, sessions: int, seed: int) -> None:
    """Create a realistic demo tree of N sessions under DIRECTORY (to try a sweep on).

    \b
    Example: session-archive demo-tree /tmp/demo -n 5000
    """
    from .demo import make_tree

    if os.path.exists(directory) and os.listdir(directory):
        raise BadInput(f"{directory}: exists and is not empty")
    counts = _call(make_tree, directory, sessions, seed=seed)
    click.echo(f"created {human_count(sessions)} sessions under {directory}: " + ", ".join(
        f"{k} {human_bytes(v) if k == 'bytes' else human_count(v)}" for k, v in counts.items()))


def main() -> None:
    cli(prog_name="session-archive")
