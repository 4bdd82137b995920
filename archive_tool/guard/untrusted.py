"""The one rule for what the tree's owner wrote: the state dir, catalog rows, manifest
lines and CONFIG files are untrusted input.

When root runs a command on ``/runs/alice``, alice owns ``/runs/alice/.session-archive/``
— its catalog, run manifests and lock — and every byte in it is hers to forge; the CONFIG
files inside her sessions too. Everything here treats them as such, in one place:

- a path taken from them (a manifest's ``archive``/``session``, a catalog row's
  ``archive``) must be a plain path below the root (:func:`rel_below`, :func:`check_rel`:
  no ``..``, ``.``, empty or NUL component, never absolute where relative is meant) and
  is then *resolved by dir fds below the root*, one component at a time without following
  a symlink (fs.open_beneath), never by a string prefix;
- an archive named by them is opened ``O_NOFOLLOW|O_NONBLOCK``, must be a regular file,
  on the root's device (a FUSE mount the user made is another device), below the root
  (:func:`open_file_below`);
- state files (manifests, the catalog) are read from regular files only, opened
  ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO never blocks us), owned by the tree's owner, root or
  us, with a size cap; state dirs are entered without following a symlink and only when
  owned by the tree's owner, root or us (:func:`open_state_sub`); an error names the file,
  never its content nor a name listed from a dir that is not the user's;
- the catalog is opened read-only where only read, with ``trusted_schema=OFF``, its
  ``sqlite_master`` compared with the schema we create (no view, trigger or unknown
  object is ever run), and a time limit on every query (:func:`guard_catalog`);
- CONFIG files are parsed with a size cap, a nesting-depth limit and YAML aliases refused
  (:func:`load_config`; the "billion laughs" file is 342 bytes), and a parse failure is
  that session's alone: ``None``, never an exception.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from typing import TYPE_CHECKING, Any

from archive_tool import fs
from archive_tool.errors import UntrustedInput

if TYPE_CHECKING:
    import sqlite3

# Caps. A manifest line is ~300 bytes: 256 MiB is ~900k sessions in one run. A CONFIG of a
# session is a few KiB; 1 MiB keeps a deep block-style YAML (depth ~ sqrt(2 x size)) within
# what libyaml's composer recurses through safely, before our own depth check.
MANIFEST_CAP = 256 * 1024 * 1024
MANIFEST_LINE_CAP = 64 * 1024
CONFIG_CAP = 1024 * 1024
CONFIG_DEPTH = 64
CONFIG_KEYS = 10_000
CONFIG_VALUE_CAP = 64 * 1024  # one flattened value as stored (a list as JSON text)
QUERY_SECONDS = 60.0


# ------------------------------------------------------------------------ path rules


def check_rel(rel: object, what: str = "path") -> str:
    """*rel* if it is a plain relative path ("a/b/c"): a str, not absolute, no ``..``,
    ``.``, empty or NUL component. UntrustedInput otherwise (the value is not echoed
    beyond its first 200 characters: it is someone else's text)."""
    if (not isinstance(rel, str) or not rel or "\0" in rel or rel.startswith("/")
            or any(p in ("", ".", "..") for p in rel.split("/"))):
        raise UntrustedInput(_short(rel), f"{what} is not a plain path below the root; refused")
    return rel


def rel_below(root: str, path: object, what: str = "path") -> str:
    """The relative path of the absolute *path* below *root*, by the same rule as
    :func:`check_rel` (``ROOT/../../x`` is refused, not normalised)."""
    if not isinstance(path, str) or not path.startswith(root.rstrip("/") + "/"):
        raise UntrustedInput(_short(path), f"{what} is not below {root}; refused")
    return check_rel(path[len(root.rstrip("/")) + 1:], what)


def _short(v: object) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= 200 else s[:200] + "..."


def owners(root_fd: int) -> set[int]:
    """Who may own the state and archives of the tree at *root_fd*: its owner, root, us."""
    return {os.fstat(root_fd).st_uid, 0, os.geteuid()}


# ------------------------------------------------------------------ opening below root


def open_dir_below(root_fd: int, rel_dir: str) -> int:
    """Directory *rel_dir* ("" = the root) below *root_fd*, component by component, never
    through a symlink, on the root's device."""
    fd = fs.open_beneath(root_fd, rel_dir) if rel_dir else os.dup(root_fd)
    if os.fstat(fd).st_dev != os.fstat(root_fd).st_dev:
        os.close(fd)
        raise OSError(errno.EXDEV, "on another filesystem than the root", rel_dir)
    return fd


def open_file_below(root_fd: int, rel: str) -> int:
    """The regular file *rel* (checked by :func:`check_rel`) below *root_fd*, opened
    O_NOFOLLOW|O_NONBLOCK for reading, on the root's device. OSError otherwise (ELOOP for
    a symlink, EINVAL for a FIFO/device/dir, EXDEV for another filesystem)."""
    d, name = os.path.split(check_rel(rel))
    dfd = open_dir_below(root_fd, d)
    try:
        fd = fs.open_file(name, dfd)
    finally:
        os.close(dfd)
    if os.fstat(fd).st_dev != os.fstat(root_fd).st_dev:
        os.close(fd)
        raise OSError(errno.EXDEV, "on another filesystem than the root", rel)
    return fd


def refusal(label: str, e: OSError) -> UntrustedInput:
    """One line for an OSError met while opening something the user named."""
    why = {errno.ELOOP: "is a symlink", errno.EINVAL: "is not a regular file",
           errno.ENOTDIR: "a component is not a directory (or a symlink)",
           errno.EXDEV: "is on another filesystem than the root",
           errno.EPERM: "is owned by another user"}.get(e.errno or 0)
    return UntrustedInput(label, f"{why}; refused" if why else
                          f"cannot open: {e.strerror or e}")


def open_state_sub(root: str, sub: str | None = None) -> int | None:
    """fd of ``<root>/.session-archive[/<sub>]`` for reading, or None if it does not exist.
    Never created, never through a symlink; each level a directory owned by the tree's
    owner, root or us (UntrustedInput otherwise, naming only the path)."""
    top = fs.open_trusted_dir(root)
    fd = top
    try:
        allowed = owners(top)
        where = root
        for name in (fs.STATE_DIR, sub) if sub else (fs.STATE_DIR,):
            where = os.path.join(where, name)
            try:
                nxt = os.open(name, fs.O_DIR, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise refusal(where, e) from None
            if fd != top:
                os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if st.st_uid not in allowed or st.st_dev != os.fstat(top).st_dev:
                raise UntrustedInput(where, "is owned by another user or on another "
                                            "filesystem; refused")
        out, fd = fd, top
        return out
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)


def open_state_file(dir_fd: int, name: str, label: str, allowed: set[int]) -> int:
    """A state file for reading: regular, O_NOFOLLOW|O_NONBLOCK, owned by *allowed*."""
    try:
        fd = fs.open_file(name, dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise refusal(label, e) from None
    if os.fstat(fd).st_uid not in allowed:
        os.close(fd)
        raise UntrustedInput(label, "is owned by another user; refused")
    return fd


def read_capped(fd: int, cap: int, label: str, size: int | None = None) -> bytes:
    """All of the regular file *fd* if it is at most *cap* bytes (checked by size first and
    again while reading: a file that grows is cut off, not followed). *size*: the caller's
    fstat of *fd* (no second fstat: a metadata round trip on a parallel filesystem)."""
    if (os.fstat(fd).st_size if size is None else size) > cap:
        raise UntrustedInput(label, f"larger than {cap >> 20} MiB; refused")
    parts, n = [], 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(parts)
        n += len(b)
        if n > cap:
            raise UntrustedInput(label, f"larger than {cap >> 20} MiB; refused")
        parts.append(b)


# ----------------------------------------------------------------------------- CONFIG


_LOADERS: tuple[Any, Any, Any] | None = None


def _yaml_loaders() -> tuple[Any, Any, Any]:
    """(yaml.load, the no-alias loader, the fast loader), made on the first CONFIG parsed:
    PyYAML loads 17 modules (~250 metadata calls: issue 24); most commands parse none."""
    global _LOADERS
    if _LOADERS is None:
        import yaml  # late, with the classes below: see the docstring

        class NoAliasLoader(yaml.SafeLoader):
            """The pure-Python safe loader refusing anchors' aliases: a config has no use
            for them, and each alias multiplies what flattening and JSON encoding build."""

            def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401
                if self.check_event(yaml.events.AliasEvent):
                    raise yaml.YAMLError("aliases are not accepted in a CONFIG")
                return super().compose_node(parent, index)

        _LOADERS = yaml.load, NoAliasLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return _LOADERS


def _depth_ok(doc: Any, limit: int) -> bool:
    """Whether *doc* nests at most *limit* deep (iterative: a deep doc must not recurse)."""
    stack = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _flow_depth(raw: bytes) -> int:
    """Bracket nesting of *raw*, ignoring quoting: an over-estimate is safe (the file is
    then only refused, never parsed) and it stops any parser from recursing 200k deep."""
    depth = top = 0
    for c in raw.translate(None, delete=_NOT_BRACKETS):
        depth += 1 if c in b"[{" else -1
        top = max(top, depth)
    return top


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def load_config(raw: bytes, is_json: bool) -> Any:  # noqa: ANN401
    """A CONFIG file's document, or None when it is not one we accept: larger than
    CONFIG_CAP, nested deeper than CONFIG_DEPTH, a YAML alias, or not parsable. Never
    raises: one session's bad CONFIG is that session's alone."""
    if len(raw) > CONFIG_CAP or _flow_depth(raw) > 4 * CONFIG_DEPTH:
        return None
    # Outside the try: a PyYAML that does not load is no bad CONFIG of one session.
    load, no_alias, fast = (None, None, None) if is_json else _yaml_loaders()
    try:
        if is_json:
            doc = json.loads(raw)
        else:
            # No anchor, no alias: the C loader is safe and 10x faster.
            loader = no_alias if b"&" in raw or b"*" in raw else fast
            doc = load(raw, loader)  # noqa: S506 - both are safe loaders
    except (ValueError, RecursionError, MemoryError):
        return None
    except Exception:  # noqa: BLE001 - any parser failure (YAMLError too): this session's alone
        return None
    return doc if _depth_ok(doc, CONFIG_DEPTH) else None


# ---------------------------------------------------------------------------- catalog


def guard_catalog(conn: sqlite3.Connection, expected: set[tuple[Any, ...]], label: str,
                  seconds: float = QUERY_SECONDS,
                  older: tuple[set[tuple[Any, ...]], ...] = ()) -> None:
    """Make *conn* (a catalog the tree's owner could have written) safe to query:
    ``trusted_schema=OFF``, its schema exactly *expected* (rows of ``type, name,
    tbl_name, sql`` from ``sqlite_master``: no view, trigger or unknown object is ever
    run; or exactly one of the *older* schemas a reader still accepts), and every
    statement after this aborted past *seconds*. UntrustedInput if not."""
    conn.execute("PRAGMA trusted_schema=OFF")
    conn.execute("PRAGMA cell_size_check=ON")
    deadline = [time.monotonic() + seconds]

    def too_long() -> int:
        return 1 if time.monotonic() > deadline[0] else 0

    import sqlite3  # late: loaded by whoever opened *conn*; most commands open no catalog

    conn.set_progress_handler(too_long, 10_000)
    try:
        got = set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    except sqlite3.Error as e:
        raise UntrustedInput(label, f"not a catalog we can read ({e}); refused") from None
    if got != expected and got not in older:
        raise UntrustedInput(label, "schema is not the catalog's (views, triggers or other "
                                    "objects); refused: rebuild it with `catalog --rebuild`")

    # Each later query gets its own budget (a sweep's connection lives long).
    def fresh(*_a: Any) -> None:
        deadline[0] = time.monotonic() + seconds

    conn.set_trace_callback(fresh)


def query_refusal(label: str, e: sqlite3.Error) -> UntrustedInput:
    if "interrupted" in str(e):
        return UntrustedInput(label, f"a query took over {QUERY_SECONDS:.0f} s; refused")
    return UntrustedInput(label, f"cannot read the catalog: {e}")


def is_reg(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)
