"""The ``session-archive`` click group: name, version, help. It imports no command module:
each command module adds itself to :data:`cli` (``@cli.command()``), and cli/app.py imports
them all."""

from __future__ import annotations

import click

from archive_tool import __version__


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
