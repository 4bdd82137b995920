"""The ``session-archive`` click group: name, version, help, and :func:`run` (what the
console script and ``python -m archive_tool`` run, through cli/start.py). It imports no
command module: each command module adds itself to :data:`cli` (``@cli.command()``) when
it is imported; the group imports the one a command line names (:data:`COMMANDS`), and
cli/app.py imports them all."""

from __future__ import annotations

import importlib
import sys

import click

from archive_tool import __version__
from archive_tool.errors import Interrupted
from archive_tool.guard import interrupt

# Command name -> the module of cli/ that registers it. A command line loads only its
# command's module (and what that imports): `verify` no longer loads the sweep's, the
# catalog's and the mount's option helpers, ~600 metadata calls at each start (issue 24).
# tests/test_md_calls.py checks this map against what cli/app.py registers.
COMMANDS = {
    "archive": "one", "pack": "one", "unpack": "one", "verify": "one", "show": "one",
    "sweep": "many", "compress": "many", "extract": "many",
    "prune": "ops", "report": "ops", "demo-tree": "ops",
    "catalog": "catalog", "find": "catalog", "repack": "catalog",
    "mount": "mount",
}


class LazyGroup(click.Group):
    """click's documented pattern for subcommands loaded on first use: `--help` and
    completion still list them all (and load them all)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"archive_tool.cli.{COMMANDS[cmd_name]}")
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="session-archive")
def cli() -> None:
    """Archive finished experiment-session dirs into single verified, durable files.

    Each finished session dir (<ID>-<name>/ under FINISHED_SUCCESS, FINISHED_ERROR or
    FINISHED) becomes one <ID>-<name>.tar.zst (or .tar.gz, .tar, .tar.xz) beside it; the
    source is deleted only after the archive is verified and on stable storage.

    \b
    Example: session-archive sweep /data/runs --execute --older-than-days 1 --quiet
    """


def run() -> None:
    """The command line: parse, run one command, exit with its code."""
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
