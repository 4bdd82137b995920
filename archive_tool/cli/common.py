"""What the command modules share: the error-to-exit-code mapping of one library call
(:func:`call`), the two click exceptions with their exit codes, and option types and
callbacks used by more than one command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from archive_tool.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    ArchiveError,
    BadArgument,
    DaskUnavailable,
    LockBusy,
)
from archive_tool.levels import check_cli_level, level_help
from archive_tool.names import FORMATS
from archive_tool.units import parse_age

T = TypeVar("T")


class Failed(click.ClickException):
    exit_code = EXIT_FAILED


class BadInput(click.ClickException):
    exit_code = EXIT_USAGE


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one library call, turning its expected exceptions into one-line CLI errors with
    the exit code each carries (errors.py). Anything else is a bug: it keeps its
    traceback instead of passing for "bad usage"."""
    try:
        return fn(*args, **kwargs)
    except LockBusy as e:
        raise exit_with(f"another sweep holds {e.path}{getattr(e, 'holder', '')}",
                        e.exit_code) from None
    except (ArchiveError, BadArgument, DaskUnavailable) as e:
        raise exit_with(str(e), e.exit_code) from None
    except FileExistsError as e:
        raise Failed(f"{e.filename}: already exists; refusing to overwrite") from None
    except PermissionError as e:
        raise Failed(f"{e.filename}: permission denied") from None
    except OSError as e:
        raise Failed(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None


def exit_with(message: str, code: int) -> click.ClickException:
    e = click.ClickException(message)
    e.exit_code = code
    return e


FORMAT = click.Choice(FORMATS, case_sensitive=False)


def nonneg_option(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}", param=param)
    return value


def days_option(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # float() accepts inf and nan, and 1e300 days overflows the cutoff in nanoseconds:
    # all three were tracebacks or a message about integers.
    if value is None:
        return None
    # Late, as the commands' own imports: sweep.plan loads fs (ctypes) and the planner,
    # which verify, show or catalog never need (issue 24).
    from archive_tool.sweep.plan import MAX_DAYS

    if value != value:  # NaN
        raise click.BadParameter("must be a number of days, got nan", param=param)
    if not 0 <= value <= MAX_DAYS:
        raise click.BadParameter(f"must be between 0 and {MAX_DAYS:.0f} days, got {value:g}",
                                 param=param)
    return value


def stale_after_option(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from archive_tool.stale.staleness import parse_duration  # late: as MAX_DAYS above

    try:
        return None if value is None else parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


STALE_AFTER_HELP = ("Threshold for RUNNING runs: heartbeat (or, without one, the newest "
                    "write) older than D: 2d, 6h, 30m, 90s; a bare number is days. "
                    "[default: 10 x the run's heartbeat interval; runs without "
                    "heartbeat never]")


def age_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--older-than AGE`` (7d, 12h, 30m, 90s, 2w, 1y; a bare number is days) in days,
    with the bounds of --older-than-days. One parser for every command (prune's)."""
    if value is None:
        return None
    try:
        days = parse_age(value)
    except BadArgument as e:
        raise click.BadParameter(str(e), param=param) from None
    return days_option(ctx, param, days)


# Each codec's own levels and the default we really use, built from the one table
# (levels.py), so --help, the engine and the README cannot drift apart (issue 26).
LEVEL_HELP = level_help()


def level_option(f: T) -> T:
    """``--level`` as every compressing command takes it: an int, None when not given
    (the format's default). The range depends on --format, so it is checked in the
    command (:func:`checked_level`), before anything is read or written."""
    return click.option("--level", type=int, default=None, metavar="N", help=LEVEL_HELP)(f)


def checked_level(fmt: str, level: int | None) -> int:
    """--level for *fmt* resolved (None: the format's default) or a one-line error, exit 2,
    naming the format's range."""
    return call(check_cli_level, fmt, level)


def reconcile_catalog(root: str) -> None:
    """Before a command changes the tree: repair the catalog from a crash of the last one
    (catalogstate.reconcile). A catalog that cannot be read or written is a warning, never
    a reason not to run: the archives are the truth, `catalog --rebuild` rebuilds it."""
    import sqlite3

    # Late, like every library import of the CLI: --help and completion load no engine.
    from archive_tool.catalog.catalogstate import reconcile

    try:
        reconcile(root)
    except (sqlite3.Error, OSError, ArchiveError) as e:
        click.echo(f"warning: catalog not repaired: {e}; `catalog --rebuild` rebuilds it",
                   err=True)
