"""scitex_session: the ``@session`` decorator and run lifecycle, plus session archiving.

Importing this package is cheap: numpy, matplotlib and PyYAML load only when a session
needs them, and the archive API (backed by :mod:`archive_tool`) loads on first use.
"""

from __future__ import annotations

from typing import Any

from ._close import close, running2finished
from ._config import DotDict
from ._decorator import INJECTED, run, session
from ._hooks import (
    register_session_close_hook,
    register_session_start_hook,
    unregister_session_close_hook,
    unregister_session_start_hook,
)
from ._manager import SessionManager
from ._start import start

__all__ = [
    "INJECTED",
    "DotDict",
    "SessionManager",
    "archive_existing",
    "archive_session_dir",
    "close",
    "register_session_close_hook",
    "register_session_start_hook",
    "restore_existing",
    "restore_session_archive",
    "run",
    "running2finished",
    "session",
    "start",
    "unregister_session_close_hook",
    "unregister_session_start_hook",
]

_ARCHIVE_NAMES = ("archive_session_dir", "restore_session_archive", "archive_existing",
                  "restore_existing")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # The installed distribution's version (one source: pyproject.toml), looked up on
        # first use so importing the package stays cheap.
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("scitex-session-tools")
        except PackageNotFoundError:  # a bare checkout on sys.path
            from archive_tool import __version__ as value
        globals()["__version__"] = value
        return value
    # The archive API pulls in the engine (tar, zstandard); a script that only runs a
    # session should not pay for it at import.
    if name in _ARCHIVE_NAMES:
        from . import archive

        value = getattr(archive, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ARCHIVE_NAMES))
