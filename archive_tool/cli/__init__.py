"""``session-archive``: parse -> call one library function -> print -> exit code.

Layout: group.py (the click group), common.py (error mapping, shared options), one module
per family of commands (one, many, ops, catalog), app.py (registers them all; ``main``).

Exit codes (every command): 0 done; 1 some item failed (or the sweep was stopped by a full
disk); 2 bad usage or input (missing/dangerous root, unknown format, bad numbers);
3 an explicit cap (--max-dirs / --max-files) left work undone ("stopped at N of M" on
stderr); 75 another sweep holds the lock (``flock -E 75`` convention); 128+N stopped by
signal N.
Expected failures print one ``Error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["cli", "main"]


def __getattr__(name: str) -> Any:
    # `cli` and `main` load cli/app.py on first use, not with the package: `python -m
    # archive_tool` imports cli/start.py (a submodule starts this package first) and must
    # install its signal handlers before click and the commands load.
    if name in __all__:
        return getattr(importlib.import_module("archive_tool.cli.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
