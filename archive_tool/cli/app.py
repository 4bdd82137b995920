"""The assembled command: the group with every command module registered on it (for
callers that list or invoke ``cli.commands``: tests, docs), and :func:`main`. The
``session-archive`` console script and ``python -m archive_tool`` run cli/start.py, which
loads only the command it runs (group.py's COMMANDS). A new command goes in a module of
its own here (cli/group.py's ``cli``, helpers from cli/common.py), in the import below
and in group.py's COMMANDS."""

from __future__ import annotations

# Imported for their effect: each module registers its commands on the group.
from archive_tool.cli import catalog, many, mount, one, ops  # noqa: F401
from archive_tool.cli.group import cli, run

__all__ = ["cli", "main"]

main = run  # `archive_tool.cli.app:main`: the console script's target in earlier wheels
