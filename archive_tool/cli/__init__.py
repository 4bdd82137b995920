"""``session-archive``: parse -> call one library function -> print -> exit code.

Exit codes (every command): 0 done; 1 some item failed (or the sweep was stopped by a full
disk); 2 bad usage or input (missing/dangerous root, unknown format, bad numbers);
3 an explicit cap (--max-dirs / --max-files) left work undone ("stopped at N of M" on
stderr); 75 another sweep holds the lock (``flock -E 75`` convention); 128+N stopped by
signal N.
Expected failures print one ``Error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from archive_tool import __version__
from archive_tool.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    ArchiveError,
    BadArgument,
    DaskUnavailable,
    LockBusy,
)
from archive_tool.names import FORMATS

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
    from archive_tool.api import MAX_DAYS

    if value is None:
        return None
    if value != value:  # NaN
        raise click.BadParameter("must be a number of days, got nan", param=param)
    if not 0 <= value <= MAX_DAYS:
        raise click.BadParameter(f"must be between 0 and {MAX_DAYS:.0f} days, got {value:g}",
                                 param=param)
    return value


def _stale_after(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from archive_tool.bulk.stale import parse_duration

    try:
        return None if value is None else parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


STALE_AFTER_HELP = ("Threshold for RUNNING runs: heartbeat (or, without one, the newest "
                    "write) older than D: 2d, 6h, 30m, 90s; a bare number is days. "
                    "[default: 10 x the run's heartbeat interval; runs without "
                    "heartbeat never]")


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


def main() -> None:
    import sys

    from archive_tool import interrupt
    from archive_tool.errors import Interrupted

    # SIGTERM/SIGINT: stop at the next safe point (or the backstop) within 2 s, cleaning
    # up on the way out, and exit 128+N (interrupt.py).
    if not interrupt.installed():
        interrupt.install()
    try:
        try:
            cli(prog_name="session-archive")
        except SystemExit as e:
            # Done: a signal from now on stays pending (the interpreter's teardown would
            # put back the default action and die by it, exit -N instead of 128+N) ...
            interrupt.block()
            # ... and one that came when no check was left to see it is still reported,
            # so cron never reads a stop as a clean run.
            if interrupt.requested() and e.code in (0, None):
                raise Interrupted(interrupt.requested()) from None
            raise
    except Interrupted as e:
        interrupt.block()
        click.echo(f"Error: {e}; temp files removed", err=True)
        sys.exit(e.exit_code)


# The commands register themselves on the group when imported (one module a stage).
from archive_tool.cli import catalog, many, one, ops  # noqa: E402, F401
