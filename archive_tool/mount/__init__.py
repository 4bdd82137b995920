"""``session-archive mount``: ROOT as it looked before the sweeps, read-only, over FUSE.

view.py holds the filesystem logic (no FUSE import), session.py one archived session's
index and decoded tar, fusefs.py the mfusepy operations and :func:`mount` (the binding
imported lazily: an optional extra).
"""

from __future__ import annotations

from archive_tool.mount.fusefs import mount
from archive_tool.mount.view import View

__all__ = ["View", "mount"]
