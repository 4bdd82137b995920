"""The one definition of a session directory's name, and of archive names.

A session ID looks like ``2026Y-11M-23D-18h39m23s_KYwP`` (the random token may have any
length >= 1: the published generator makes 8, we make 4); a session directory is named
``<ID>`` or ``<ID>-<suffix>`` (the decorator uses the function name as suffix). Both packages
and both discovery backends use the patterns below, so "what is a session" is decided here
and nowhere else.
"""

from __future__ import annotations

import os
import re
import time

from archive_tool.errors import UnsupportedFormat  # noqa: F401 - raised here, defined with the rest

# [0-9] rather than \d: fd's Rust regex treats \d as any Unicode digit, Python's re (with
# re.ASCII) does not. Spelling the class out keeps the two backends identical.
ID_REGEX = r"[0-9]{4}Y-[0-9]{2}M-[0-9]{2}D-[0-9]{2}h[0-9]{2}m[0-9]{2}s_[A-Za-z0-9]+"
# The token's class excludes "-", so "+" never eats into the "-<suffix>" that follows.
# The suffix may not contain a slash (it is one path component) and must be non-empty.
SESSION_NAME_REGEX = rf"^{ID_REGEX}(-[^/]+)?$"
_SESSION_NAME = re.compile(SESSION_NAME_REGEX, re.ASCII)

# A session dir being deleted after its archive was committed is first renamed to this
# hidden name, so a crash mid-delete leaves a name that is obviously garbage (never a
# half-empty dir that looks like a real session).
TRASH_PREFIX = "."
TRASH_SUFFIX = ".deleting"
_TRASH_NAME = re.compile(rf"^\.({ID_REGEX}(-[^/]+)?)\.deleting$", re.ASCII)

# What discovery asks fd for in one pass: session dirs and trash dirs.
DISCOVERY_REGEX = rf"^\.?{ID_REGEX}(-[^/]+)?(\.deleting)?$"

SUCCESS_STATE, ERROR_STATE, PLAIN_STATE = "FINISHED_SUCCESS", "FINISHED_ERROR", "FINISHED"
FINISHED_STATES = (SUCCESS_STATE, ERROR_STATE, PLAIN_STATE)
RUNNING_STATE = "RUNNING"
# Suffix of the named-tmp fallback archive (filesystems without O_TMPFILE); garbage after a
# crash, removed by the next run.
TMP_SUFFIX = ".tmp"

# Order matters for suffix matching: ".tar.gz" before ".tar".
FORMATS = ("tar.zst", "tar.gz", "tar.xz", "tar")
_ALIASES = {"tgz": "tar.gz", "tar.zstd": "tar.zst", "tzst": "tar.zst", "txz": "tar.xz"}

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def normalize_format(fmt: str) -> str:
    """Return the canonical name of *fmt* (``"tgz"`` -> ``"tar.gz"``) or raise."""
    if not isinstance(fmt, str):
        raise UnsupportedFormat(fmt, FORMATS)
    key = fmt.strip().lower().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise UnsupportedFormat(fmt, FORMATS)
    return key


def is_session_name(name: str) -> bool:
    return _SESSION_NAME.match(name) is not None


def trash_name(session_name: str) -> str:
    return f"{TRASH_PREFIX}{session_name}{TRASH_SUFFIX}"


def session_of_trash(name: str) -> str | None:
    """The session name a trash dir was made from, or None if *name* is not a trash dir."""
    m = _TRASH_NAME.match(name)
    return m.group(1) if m else None


def archive_name(session_name: str, fmt: str) -> str:
    return f"{session_name}.{normalize_format(fmt)}"


def split_archive_name(filename: str) -> tuple[str, str] | None:
    """``"X.tar.zst"`` -> ``("X", "tar.zst")``; None when the name has no known suffix."""
    lower = filename.lower()
    for fmt in FORMATS:
        suffix = "." + fmt
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], fmt
    for alias, fmt in _ALIASES.items():
        suffix = "." + alias
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], fmt
    return None


def new_session_id(now: float | None = None, rand: str | None = None) -> str:
    """A fresh ID: local time to the second plus 4 random alphanumerics (62**4 ~ 14.8M)."""
    t = time.localtime(now)
    if rand is None:
        rand = _random_chars(4)
    return time.strftime("%YY-%mM-%dD-%Hh%Mm%Ss", t) + "_" + rand


def _random_chars(n: int) -> str:
    # os.urandom, not secrets: that loads random, hmac, hashlib and base64 (~12 modules) at
    # every start of the CLI and of its workers (issue 24). A byte >= 248 (4 * 62) is
    # dropped, so each character stays equally likely.
    out = ""
    while len(out) < n:
        out += "".join(_ID_ALPHABET[b % len(_ID_ALPHABET)] for b in os.urandom(n) if b < 248)
    return out[:n]


def session_dir_name(session_id: str, suffix: str | None = None) -> str:
    return f"{session_id}-{suffix}" if suffix else session_id
