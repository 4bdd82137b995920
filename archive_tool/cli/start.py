"""``session-archive`` and ``python -m archive_tool``: the signal handlers first, then click
and the one command the line names.

A SIGTERM that arrives while the command is being imported must still end in exit 128+N
with temp files removed, so the import of cli/group.py is the one late import here, inside
the handler's reach (interrupt.py and errors.py import nothing heavy). group.py loads the
command's own module only (not cli/app.py, which loads them all: issue 24).
"""

from __future__ import annotations

import sys

from archive_tool.errors import Interrupted
from archive_tool.guard import interrupt


def main() -> None:
    interrupt.install()
    try:
        # Late on purpose: the handlers above must be in place while click loads.
        from archive_tool.cli.group import run
    except Interrupted as e:
        sys.stderr.write(f"Error: {e}; temp files removed\n")
        sys.exit(e.exit_code)
    run()
