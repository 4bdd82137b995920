"""The assembled command: the group with every command module registered on it, and
:func:`main`, what the ``session-archive`` console script and ``python -m archive_tool``
run. A new command goes in a module of its own here (cli/group.py's ``cli``, helpers from
cli/common.py) and in the import below."""

from __future__ import annotations

# Imported for their effect: each module registers its commands on the group.
from archive_tool.cli import catalog, many, mount, one, ops  # noqa: F401
from archive_tool.cli.group import cli


def main() -> None:
    cli(prog_name="session-archive")
