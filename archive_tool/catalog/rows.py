"""One catalog row from one session's tar bytes, and nothing else: the same function for a
sweep (the bytes it holds in memory) and for ``catalog --rebuild`` (the bytes read back
from packs and archives), so the two give the same rows. The CONFIG (yaml or json) is
flattened into ``ARGS.lr``-style keys."""

from __future__ import annotations

import json
import re
import tarfile
from typing import Any

from archive_tool.catalog.listing import listing_of
from archive_tool.engine.tarwrite import iter_tar
from archive_tool.guard import untrusted
from archive_tool.names import FINISHED_STATES, ID_REGEX

CONFIG_NAMES = ("CONFIGS/CONFIG.yaml", "CONFIGS/CONFIG.json")
_ID = re.compile(rf"^({ID_REGEX})")
_ID_TIME = re.compile(r"^(\d{4})Y-(\d{2})M-(\d{2})D-(\d{2})h(\d{2})m(\d{2})s_")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"ARGS": {"lr": 0.01}}`` -> ``{"ARGS.lr": 0.01}``; lists stay JSON values."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def _scalar(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v, default=str, sort_keys=True)


def read_config(members: bytes, top: str,
                walked: list[tuple[str, int, int, bytes]] | None = None) -> dict[str, Any]:
    """The flattened CONFIG of one session from its tar bytes ({} if absent, unparsable or
    refused by untrusted.load_config: too big, too deep, YAML aliases). Never raises: a
    hostile CONFIG costs its own session its parsed config, nothing else. *walked*:
    iter_tar(members), when the caller has it."""
    wanted = {f"{top}/{c}": c for c in CONFIG_NAMES}
    for name, off, size, typ in walked if walked is not None else iter_tar(members):
        if name in wanted and typ in (tarfile.REGTYPE, tarfile.AREGTYPE):
            return config_of(members[off:off + size], name.endswith(".json"))
    return {}


def config_of(raw: bytes, is_json: bool) -> dict[str, Any]:
    """A CONFIG file's bytes as the catalog's flat key/value dict ({} if refused)."""
    doc = untrusted.load_config(raw, is_json)
    if doc is None:
        return {}
    try:
        flat = flatten(doc)
        if len(flat) > untrusted.CONFIG_KEYS:
            return {}
        out = {}
        for k, v in flat.items():
            v = _scalar(v)
            if isinstance(v, str) and len(v) > untrusted.CONFIG_VALUE_CAP:
                continue  # one huge value is left out, not stored
            out[k] = v
        return out
    except (RecursionError, MemoryError, ValueError, TypeError):
        return {}


def started_of(name: str) -> str | None:
    m = _ID_TIME.match(name)
    if not m:
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


def session_row(members: bytes, name: str, rel_dir: str, archive: str, frame: int,
                offset: int, bytes_out: int, top: str | None = None) -> dict[str, Any]:
    """One catalog row from a session's tar members. *rel_dir*: the session's directory
    below the root (``<script>_out/<STATE>``); *archive*: the file, relative to the root;
    *frame* -1 for a per-session archive; *top*: the members' top dir when it is not
    *name* (a spanning pack's entry path, pack/entrypath.py)."""
    walked = iter_tar(members)  # once, for the CONFIG and the counts
    files = [(s, t) for _, _, s, t in walked]
    return make_row(name, rel_dir, archive, frame, offset, bytes_out,
                    read_config(members, top or name, walked),
                    sum(s for s, t in files if t in (tarfile.REGTYPE, tarfile.AREGTYPE)),
                    len(members), len(files), listing_of(members, top or name))


def entry_row(members: bytes, entry: str, pack_dir: str, archive: str, frame: int,
              offset: int, bytes_out: int) -> dict[str, Any]:
    """:func:`session_row` of a pack's frame named *entry*: the session's name, or in a
    spanning pack (--pack auto) its path below the pack's dir *pack_dir* (relative to the
    root), whose dirs become the row's dir."""
    d, _, name = entry.rpartition("/")
    return session_row(members, name, f"{pack_dir}/{d}" if d and pack_dir else d or pack_dir,
                       archive, frame, offset, bytes_out, top=entry)


def make_row(name: str, rel_dir: str, archive: str, frame: int, offset: int, bytes_out: int,
             cfg: dict[str, Any], bytes_in: int, tar_bytes: int, inodes: int,
             listing: bytes | None = None) -> dict[str, Any]:
    """A row from counts already taken (the streamed path of a big archive: no *listing*,
    the mount decodes such a session to list it). *listing*: listing.py's member list."""
    parts = rel_dir.split("/") if rel_dir else []
    state = parts[-1] if parts and parts[-1] in FINISHED_STATES else None
    script = parts[-2] if len(parts) >= 2 else None
    m = _ID.match(name)
    ex = cfg.get("EXIT_STATUS")
    return {
        "id": m.group(1) if m else name, "name": name, "script": script, "state": state,
        "started": started_of(name), "exit_status": ex if isinstance(ex, int) else None,
        "bytes_in": bytes_in, "tar_bytes": tar_bytes, "bytes_out": bytes_out,
        "inodes": inodes, "archive": archive, "frame": frame, "offset": offset,
        "config": cfg, "listing": listing,
    }
