"""``python -m archive_tool``: the signal handlers first, then click and the commands.

A SIGTERM that arrives while the commands are being imported must still end in exit 128+N
with temp files removed, so the import of cli/app.py is the one late import here, inside
the handler's reach (interrupt.py and errors.py import nothing heavy).
"""

from __future__ import annotations

import sys

from archive_tool.errors import Interrupted
from archive_tool.guard import interrupt


def main() -> None:
    interrupt.install()
    try:
        # Late on purpose: the handlers above must be in place while click loads.
        from archive_tool.cli.app import main as run
    except Interrupted as e:
        sys.stderr.write(f"Error: {e}; temp files removed\n")
        sys.exit(e.exit_code)
    run()
