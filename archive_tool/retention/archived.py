"""What retention selects among: an archived session (its own archive, or a frame inside a
pack) with its age, and the age rule (the session ID's start time, not the mtime). Shared by
prune.py and prunepacks.py."""

from __future__ import annotations

import time
from dataclasses import dataclass


def started_at(session_name: str) -> float | None:
    """Epoch seconds of the ID's timestamp (local time, as ``names.new_session_id``)."""
    try:
        return time.mktime(time.strptime(session_name[:23], "%YY-%mM-%dD-%Hh%Mm%Ss"))
    except (ValueError, OverflowError):
        return None


@dataclass
class Archived:
    path: str
    script: str  # the <script>_out dir, relative to the root
    state: str
    started: float
    age_days: float
    bytes: int
    keep: str = ""  # why it is kept, or "" when selected
    dev: int = 0
    ino: int = 0
    pack: str = ""  # a session inside a pack: the pack's path (``path`` is PACK::SESSION)
