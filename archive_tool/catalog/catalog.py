"""The catalog: one SQLite row per archived session under a root, so ``find`` answers
without opening any archive.

``<root>/.session-archive/catalog.sqlite``. Rows are derived from a session's tar bytes
only (rows.py's :func:`session_row`): a sweep fills them from the bytes it already holds in memory,
``rebuild`` from the packs and archives on disk; the two give the same rows.
Config keys are flattened (``ARGS.lr``) into a key/value table with an index, so a
``--where`` filter is an index lookup, not a JSON parse per row.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sqlite3
from collections.abc import Iterable
from typing import Any

from archive_tool import fs
from archive_tool.errors import ArchiveError, BadArgument, UntrustedInput
from archive_tool.guard import untrusted
from archive_tool.names import is_session_name

CATALOG_NAME = "catalog.sqlite"
CATALOG = os.path.join(fs.STATE_DIR, CATALOG_NAME)
COLUMNS = ("id", "name", "script", "state", "started", "exit_status", "bytes_in", "tar_bytes",
           "bytes_out", "inodes", "archive", "frame", "offset")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
  sid INTEGER PRIMARY KEY, id TEXT, name TEXT, script TEXT, state TEXT, started TEXT,
  exit_status INTEGER, bytes_in INTEGER, tar_bytes INTEGER, bytes_out INTEGER,
  inodes INTEGER, archive TEXT, frame INTEGER, offset INTEGER, config TEXT,
  UNIQUE (archive, frame));
CREATE TABLE IF NOT EXISTS kv (sid INTEGER, key TEXT, value TEXT, num REAL);
CREATE INDEX IF NOT EXISTS kv_key ON kv (key, value);
CREATE INDEX IF NOT EXISTS kv_num ON kv (key, num);
CREATE INDEX IF NOT EXISTS kv_sid ON kv (sid);
CREATE INDEX IF NOT EXISTS s_started ON sessions (started);
CREATE INDEX IF NOT EXISTS s_id ON sessions (id);
CREATE INDEX IF NOT EXISTS s_name ON sessions (name);
"""
# Added for `mount` (issue 25): each session's member list (catalog/listing.py), so a
# mount lists an archived session without decompressing it. Writers add the table to an
# older catalog (CREATE IF NOT EXISTS); a reader accepts a catalog without it
# (legacy_schema), and the mount then decodes to list.
_LISTING_SCHEMA = """
CREATE TABLE IF NOT EXISTS listing (sid INTEGER PRIMARY KEY, data BLOB);
"""
_SCHEMA_V1 = _SCHEMA
_SCHEMA = _SCHEMA_V1 + _LISTING_SCHEMA


def catalog_path(root: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(root), CATALOG)


def _expected_schema(script: str = _SCHEMA) -> set[tuple[Any, ...]]:
    """sqlite_master of a catalog as we create it: what a catalog file must hold."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(script)
        return set(mem.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        mem.close()


_EXPECTED: set[tuple[Any, ...]] | None = None
_LEGACY: set[tuple[Any, ...]] | None = None


def expected_schema() -> set[tuple[Any, ...]]:
    global _EXPECTED
    if _EXPECTED is None:
        _EXPECTED = _expected_schema()
    return _EXPECTED


def legacy_schema() -> set[tuple[Any, ...]]:
    """A catalog written before the listing table: still read (find, locate, mount)."""
    global _LEGACY
    if _LEGACY is None:
        _LEGACY = _expected_schema(_SCHEMA_V1)
    return _LEGACY


def connect(root: str | os.PathLike[str], name: str = CATALOG_NAME) -> sqlite3.Connection:
    """The catalog database *name* in ``<root>/.session-archive``, opened the safe way for
    root in a user's tree (fs.open_state_dir / open_state_file: no symlink followed, a file
    of ours). SQLite is handed ``/proc/self/fd/N`` of the file we checked, so it opens that
    inode, not whatever the name points to by then; its journal stays in memory (a journal
    file beside a /proc path cannot exist), which costs nothing that matters: the catalog
    is rebuildable from the archives (``catalog --rebuild``). The file is the tree owner's
    to forge: untrusted.guard_catalog checks its schema and bounds every query."""
    d = fs.open_state_dir(os.fspath(root))
    try:
        fd = fs.open_state_file(d, name)
    finally:
        os.close(d)
    label = os.path.join(os.fspath(root), fs.STATE_DIR, name)
    try:
        conn = sqlite3.connect(f"/proc/self/fd/{fd}", timeout=60)
        try:
            conn.execute("PRAGMA trusted_schema=OFF")
            conn.execute("PRAGMA journal_mode=MEMORY")
            # Opens the file now, while our fd pins it. One transaction: each CREATE on its
            # own was a commit (journal and WAL probes, an fstat, an fdatasync) of its own.
            conn.executescript(f"BEGIN;\n{_SCHEMA}\nCOMMIT;")
            untrusted.guard_catalog(conn, expected_schema(), label)
        except sqlite3.Error as e:
            conn.close()
            raise untrusted.query_refusal(label, e) from None
        except BaseException:
            conn.close()
            raise
    finally:
        os.close(fd)
    return conn


def connect_ro(root: str | os.PathLike[str]) -> sqlite3.Connection:
    """The catalog of *root* for reading only: the file must be a regular file (no
    symlink, no FIFO) owned by the tree's owner, root or us, in a state dir of theirs; a
    read-only connection on that inode, guarded (untrusted.guard_catalog). BadArgument
    when there is none."""
    root = os.fspath(root)
    path = catalog_path(root)
    missing = BadArgument(f"no catalog at {path}; run `session-archive catalog "
                          f"{root} --rebuild` or sweep with --pack")
    d = untrusted.open_state_sub(root)
    if d is None:
        raise missing
    try:
        rfd = fs.open_trusted_dir(root)
        try:
            allowed = untrusted.owners(rfd)
        finally:
            os.close(rfd)
        try:
            fd = untrusted.open_state_file(d, CATALOG_NAME, path, allowed)
        except FileNotFoundError:
            raise missing from None
    finally:
        os.close(d)
    try:
        conn = sqlite3.connect(f"file:/proc/self/fd/{fd}?mode=ro", uri=True)
        try:
            untrusted.guard_catalog(conn, expected_schema(), path, older=(legacy_schema(),))
        except BaseException:
            conn.close()
            raise
    finally:
        os.close(fd)
    return conn


def add_rows(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Insert (or replace: same archive and frame) rows; one transaction."""
    with conn:
        return _insert(conn, rows)


def replace_archives(root: str | os.PathLike[str], old: Iterable[str],
                     rows: list[dict[str, Any]]) -> None:
    """Forget every row of the archives *old* (paths relative to the root) and insert
    *rows*, in ONE transaction: a reader sees the sessions in the old packs or in the
    new one, never in neither (repack)."""
    conn = connect(root)
    try:
        with conn:
            for a in old:
                conn.execute("DELETE FROM kv WHERE sid IN (SELECT sid FROM sessions WHERE "
                             "archive=?)", (a,))
                conn.execute("DELETE FROM listing WHERE sid IN (SELECT sid FROM sessions "
                             "WHERE archive=?)", (a,))
                conn.execute("DELETE FROM sessions WHERE archive=?", (a,))
            _insert(conn, rows)
    finally:
        conn.close()


def _insert(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    for r in rows:
        old = conn.execute("SELECT sid FROM sessions WHERE archive=? AND frame=?",
                           (r["archive"], r["frame"])).fetchone()
        if old:
            conn.execute("DELETE FROM kv WHERE sid=?", old)
            conn.execute("DELETE FROM listing WHERE sid=?", old)
            conn.execute("DELETE FROM sessions WHERE sid=?", old)
        cur = conn.execute(
            "INSERT INTO sessions (id, name, script, state, started, exit_status, bytes_in,"
            " tar_bytes, bytes_out, inodes, archive, frame, offset, config)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r["id"], r["name"], r["script"], r["state"], r["started"], r["exit_status"],
             r["bytes_in"], r["tar_bytes"], r["bytes_out"], r["inodes"], r["archive"],
             r["frame"], r["offset"], json.dumps(r["config"], sort_keys=True)))
        sid = cur.lastrowid
        # A sid SQLite hands out again (the highest row was deleted) may still have a
        # listing of the row that had it: replaced or removed, never inherited.
        if r.get("listing"):
            conn.execute("INSERT OR REPLACE INTO listing (sid, data) VALUES (?,?)",
                         (sid, r["listing"]))
        else:
            conn.execute("DELETE FROM listing WHERE sid=?", (sid,))
        conn.executemany(
            "INSERT INTO kv (sid, key, value, num) VALUES (?,?,?,?)",
            [(sid, k, _text(v), _num(v)) for k, v in r["config"].items()])
        n += 1
    return n


def _text(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def add_sessions(root: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn = connect(root)
        try:
            add_rows(conn, rows)
        finally:
            conn.close()


# --------------------------------------------------------------------------------- find

_WHERE = re.compile(r"^\s*([^=!<>\s]+)\s*(=|==|!=|<=|>=|<|>)\s*(.*?)\s*$")


def parse_where(expr: str) -> tuple[str, str, str]:
    m = _WHERE.match(expr)
    if not m:
        raise BadArgument(f"--where wants KEY=VALUE (or !=, <, <=, >, >=), got {expr!r}")
    key, op, value = m.groups()
    return key, "=" if op == "==" else op, value


def _day(s: str, what: str) -> str:
    try:
        return _dt.datetime.fromisoformat(s).isoformat(timespec="seconds")
    except ValueError:
        raise BadArgument(f"{what} wants a date like 2026-10-01, got {s!r}") from None


def find(root: str | os.PathLike[str], where: Iterable[str] = (), state: str | None = None,
         since: str | None = None, until: str | None = None, script: str | None = None,
         limit: int | None = None, config: bool = True) -> list[dict[str, Any]]:
    """Sessions in the catalog matching every filter (no archive is read). Without
    *config* the rows leave out the flattened CONFIG (decoding it is most of the cost of a
    large answer)."""
    path = catalog_path(root)
    filters = [parse_where(w) for w in where]  # bad input is reported before a missing file
    since = _day(since, "--since") if since else None
    until = _day(until, "--until") if until else None
    cols = ", ".join(f"s.{c}" for c in COLUMNS) + (", s.config" if config else "")
    sql = [f"SELECT {cols} FROM sessions s WHERE 1"]  # noqa: S608 - column names are ours
    args: list[Any] = []
    for key, op, value in filters:
        num = _num(value)
        # "sid IN (one index range of kv)": SQLite evaluates the subquery once, where a
        # correlated EXISTS probed kv once per session row (~1 s on 100k rows).
        if op in ("=", "!="):
            cond = ("s.sid IN (SELECT sid FROM kv WHERE key=? AND value=? UNION "
                    "SELECT sid FROM kv WHERE key=? AND num=?)")
            sql.append(("AND " if op == "=" else "AND NOT ") + cond)
            args += [key, value, key, num]
        else:
            if num is None:
                raise BadArgument(f"{op} compares numbers; {value!r} is not one")
            sql.append(f"AND s.sid IN (SELECT sid FROM kv WHERE key=? AND num {op} ?)")
            args += [key, num]
    for value, clause in ((state, "s.state=?"), (script, "s.script=?"),
                          (since, "s.started>=?"), (until, "s.started<?")):
        if value:
            sql.append(f"AND {clause}")
            args.append(value)
    sql.append("ORDER BY s.started, s.name, s.archive, s.frame")
    if limit:
        sql.append("LIMIT ?")
        args.append(limit)
    conn = connect_ro(root)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(" ".join(sql), args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            if config:
                d["config"] = json.loads(d["config"])
            out.append(d)
    except sqlite3.Error as e:
        raise untrusted.query_refusal(path, e) from None
    except (ValueError, RecursionError):
        raise UntrustedInput(path, "a row's config is not JSON we wrote; refused") from None
    finally:
        conn.close()
    return out


def locate(root: str | os.PathLike[str], session: str) -> dict[str, Any]:
    """The catalog row of *session* (its dir name or ID) under *root*: where to read it.
    The newest row when the session was archived more than once. The row is the tree
    owner's to forge: its ``archive`` must be a plain relative path (untrusted.check_rel),
    to be opened only by :func:`open_located` (dir fds below the root)."""
    path = catalog_path(root)
    conn = connect_ro(root)
    conn.row_factory = sqlite3.Row
    try:
        r = conn.execute("SELECT * FROM sessions WHERE name=? OR id=? ORDER BY sid DESC "
                         "LIMIT 1", (session, session)).fetchone()
    except sqlite3.Error as e:
        raise untrusted.query_refusal(path, e) from None
    finally:
        conn.close()
    if r is None:
        raise ArchiveError(os.fspath(root), f"no session {session!r} in the catalog")
    d = dict(r)
    untrusted.check_rel(d["archive"], f"catalog row of {session!r}: archive")
    name = d["name"]
    if not (isinstance(name, str) and is_session_name(name)
            and all(isinstance(d[k], int) for k in ("frame", "offset", "bytes_out",
                                                     "tar_bytes"))):
        raise UntrustedInput(path, f"catalog row of {session!r} is not one we write; refused")
    d["path"] = os.path.join(os.fspath(root), d["archive"])
    return d


def open_located(root: str | os.PathLike[str], row: dict[str, Any]) -> int:
    """The archive or pack of a :func:`locate` row, opened below *root* by dir fds
    (O_NOFOLLOW, regular, the root's device): never wherever a forged row points."""
    rfd = fs.open_trusted_dir(root)
    try:
        return untrusted.open_file_below(rfd, row["archive"])
    except OSError as e:
        raise untrusted.refusal(row["path"], e) from None
    finally:
        os.close(rfd)


def all_rows(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row, in a stable order (what a test compares)."""
    return find(root)
