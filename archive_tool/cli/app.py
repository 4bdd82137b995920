"""The assembled command: the group with every command module registered on it, and
:func:`main`, what the ``session-archive`` console script and ``python -m archive_tool``
run. A new command goes in a module of its own here (cli/group.py's ``cli``, helpers from
cli/common.py) and in the import below."""

from __future__ import annotations

import sys

import click

# Imported for their effect: each module registers its commands on the group.
from archive_tool.cli import catalog, many, mount, one, ops  # noqa: F401
from archive_tool.cli.group import cli
from archive_tool.errors import Interrupted
from archive_tool.guard import interrupt


def main() -> None:
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
