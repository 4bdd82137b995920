"""The catalog: one SQLite row per archived session under a root, so ``find`` answers
without opening any archive.

``<root>/.session-archive/catalog.sqlite``. Rows are derived from a session's tar bytes
only (:func:`session_row`): a sweep fills them from the bytes it already holds in memory,
``rebuild`` from the packs and archives on disk; the two give the same rows.
Config keys are flattened (``ARGS.lr``) into a key/value table with an index, so a
``--where`` filter is an index lookup, not a JSON parse per row.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sqlite3
import tarfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from archive_tool import fs, interrupt
from archive_tool.engine import packfile
from archive_tool.engine.formats import decompress_bytes
from archive_tool.errors import ArchiveError, BadArgument
from archive_tool.names import FINISHED_STATES, ID_REGEX, is_session_name, split_archive_name

CATALOG_NAME = "catalog.sqlite"
CATALOG = os.path.join(fs.STATE_DIR, CATALOG_NAME)
CONFIG_NAMES = ("CONFIGS/CONFIG.yaml", "CONFIGS/CONFIG.json")
_ID = re.compile(rf"^({ID_REGEX})")
# libyaml's safe loader when PyYAML has it: the pure-Python one was most of a pack
# sweep's CPU per session (a profile: 2.9 ms of a ~5 ms session).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ID_TIME = re.compile(r"^(\d{4})Y-(\d{2})M-(\d{2})D-(\d{2})h(\d{2})m(\d{2})s_")
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


def catalog_path(root: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(root), CATALOG)


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


def read_config(members: bytes, top: str) -> dict[str, Any]:
    """The flattened CONFIG of one session from its tar bytes ({} if absent/unparsable)."""
    wanted = {f"{top}/{c}": c for c in CONFIG_NAMES}
    for name, off, size, typ in packfile.iter_tar(members):
        if name in wanted and typ in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raw = members[off:off + size]
            try:
                doc = json.loads(raw) if name.endswith(".json") else yaml.load(raw, _LOADER)  # noqa: S506 - a safe loader
            except (ValueError, yaml.YAMLError):
                return {}
            return {k: _scalar(v) for k, v in flatten(doc).items()}
    return {}


def started_of(name: str) -> str | None:
    m = _ID_TIME.match(name)
    if not m:
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}"


def session_row(members: bytes, name: str, rel_dir: str, archive: str, frame: int,
                offset: int, bytes_out: int) -> dict[str, Any]:
    """One catalog row from a session's tar members. *rel_dir*: the session's directory
    below the root (``<script>_out/<STATE>``); *archive*: the file, relative to the root;
    *frame* -1 for a per-session archive."""
    parts = rel_dir.split("/") if rel_dir else []
    state = parts[-1] if parts and parts[-1] in FINISHED_STATES else None
    script = parts[-2] if len(parts) >= 2 else None
    cfg = read_config(members, name)
    files = [(s, t) for _, _, s, t in packfile.iter_tar(members)]
    m = _ID.match(name)
    ex = cfg.get("EXIT_STATUS")
    return {
        "id": m.group(1) if m else name, "name": name, "script": script, "state": state,
        "started": started_of(name), "exit_status": ex if isinstance(ex, int) else None,
        "bytes_in": sum(s for s, t in files if t in (tarfile.REGTYPE, tarfile.AREGTYPE)),
        "tar_bytes": len(members), "bytes_out": bytes_out, "inodes": len(files),
        "archive": archive, "frame": frame, "offset": offset, "config": cfg,
    }


def connect(root: str | os.PathLike[str], name: str = CATALOG_NAME) -> sqlite3.Connection:
    """The catalog database *name* in ``<root>/.session-archive``, opened the safe way for
    root in a user's tree (fs.open_state_dir / open_state_file: no symlink followed, a file
    of ours). SQLite is handed ``/proc/self/fd/N`` of the file we checked, so it opens that
    inode, not whatever the name points to by then; its journal stays in memory (a journal
    file beside a /proc path cannot exist), which costs nothing that matters: the catalog
    is rebuildable from the archives (``catalog --rebuild``)."""
    d = fs.open_state_dir(os.fspath(root))
    try:
        fd = fs.open_state_file(d, name)
    finally:
        os.close(d)
    try:
        conn = sqlite3.connect(f"/proc/self/fd/{fd}", timeout=60)
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.executescript(_SCHEMA)  # opens the file now, while our fd pins it
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
            conn.execute("DELETE FROM sessions WHERE sid=?", old)
        cur = conn.execute(
            "INSERT INTO sessions (id, name, script, state, started, exit_status, bytes_in,"
            " tar_bytes, bytes_out, inodes, archive, frame, offset, config)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r["id"], r["name"], r["script"], r["state"], r["started"], r["exit_status"],
             r["bytes_in"], r["tar_bytes"], r["bytes_out"], r["inodes"], r["archive"],
             r["frame"], r["offset"], json.dumps(r["config"], sort_keys=True)))
        sid = cur.lastrowid
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


class Recorder:
    """An ``on_result`` for a per-session sweep (``sweep --catalog``): a row per archived
    session, read back from its archive (the worker's bytes are gone by then; a small
    archive is in the page cache), written in batches. A row that cannot be made is a
    warning, never a failed session: the archive is already safe."""

    def __init__(self, root: str | os.PathLike[str], fmt: str, batch: int = 500) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.fmt = fmt
        self.batch = batch
        self.pending: list[str] = []
        self.warnings: list[str] = []

    def __call__(self, r: Any) -> None:
        if r.status in ("archived", "resumed"):
            self.pending.append(r.path)
            if len(self.pending) >= self.batch:
                self.flush()

    def flush(self) -> None:
        rows = []
        for path in self.pending:
            rel = os.path.relpath(os.path.dirname(path), self.root)
            try:
                rows += rows_of_file(self.root, "" if rel == "." else rel,
                                     f"{os.path.basename(path)}.{self.fmt}")
            except (ArchiveError, OSError, ValueError) as e:
                self.warnings.append(f"catalog: {path}: {e}")
        self.pending.clear()
        try:
            add_sessions(self.root, rows)
        except sqlite3.Error as e:
            self.warnings.append(f"catalog not updated: {e}")


# ------------------------------------------------------------------------------ rebuild


def _archives(root: str) -> Iterator[tuple[str, str]]:
    """(dir relative to root, file name) of every pack and session archive below root."""
    for d, subdirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        rel = "" if rel == "." else rel
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        for f in sorted(files):
            if packfile.is_pack_name(f):
                yield rel, f
            else:
                named = split_archive_name(f)
                if named and is_session_name(named[0]):
                    yield rel, f


def rows_of_file(root: str, rel: str, fname: str) -> Iterator[dict[str, Any]]:
    path = os.path.join(root, rel, fname)
    arel = os.path.join(rel, fname)
    if packfile.is_pack_name(fname):
        with packfile.Pack(path) as p:
            for i, name in enumerate(p.names):
                f = p.frames[i]
                yield session_row(p.members(i), name, rel, arel, i, f.offset, f.csize)
        return
    name, fmt = split_archive_name(fname)  # type: ignore[misc]
    with open(path, "rb") as fh:
        data = fh.read()
    tar = decompress_bytes(data, fmt)
    # The members without the end-of-archive blocks: what a pack frame of it would hold.
    end = max((o + s + (-s % tarfile.BLOCKSIZE) for _, o, s, _ in packfile.iter_tar(tar)),
              default=0)
    members = tar[:end]
    yield session_row(members, name, rel, arel, -1, 0, len(data))


def rebuild(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Build the catalog from the packs and archives alone, into a new file that then
    replaces the old one (a reader never sees a half-built catalog)."""
    from archive_tool.bulk.plan import check_root

    root = check_root(root)  # it writes below root: the same refusals as a sweep
    if not os.path.isdir(root):
        raise BadArgument(f"not a directory: {root}")
    t0 = time.monotonic()
    final = catalog_path(root)
    tmp = f"{CATALOG_NAME}.rebuild-{os.getpid()}"
    d = fs.open_state_dir(root)
    try:
        fs.unlink_at(d, tmp)
    finally:
        os.close(d)
    conn = connect(root, tmp)
    files = rows = 0
    errors: list[str] = []
    try:
        for rel, fname in _archives(root):
            interrupt.check()  # SIGTERM: the half-built file is removed below
            try:
                rows += add_rows(conn, list(rows_of_file(root, rel, fname)))
                files += 1
            except (ArchiveError, OSError, ValueError) as e:
                errors.append(f"{os.path.join(rel, fname)}: {e}")
    except BaseException:
        # Interrupted (or anything else): no catalog.sqlite.rebuild-PID left behind; the
        # old catalog stays as it was (issue 23: a killed rebuild left its file).
        conn.close()
        with interrupt.shielded():
            d = fs.open_state_dir(root)
            try:
                with contextlib.suppress(OSError):
                    fs.unlink_at(d, tmp)  # journal_mode=MEMORY: no other file
            finally:
                os.close(d)
        raise
    conn.close()
    with interrupt.shielded():  # built: put it in place, then honour a late signal
        d = fs.open_state_dir(root)
        try:
            fs.rename_at(d, tmp, CATALOG_NAME)
            os.fsync(d)
        finally:
            os.close(d)
    return {"catalog": final, "files": files, "sessions": rows, "errors": errors,
            "elapsed": round(time.monotonic() - t0, 3)}


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
    if not os.path.exists(path):
        raise BadArgument(f"no catalog at {path}; run `session-archive catalog "
                          f"{os.fspath(root)} --rebuild` or sweep with --pack")
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
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(" ".join(sql), args).fetchall()
    finally:
        conn.close()
    out = []
    for r in rows:
        d = dict(r)
        if config:
            d["config"] = json.loads(d["config"])
        out.append(d)
    return out


def locate(root: str | os.PathLike[str], session: str) -> dict[str, Any]:
    """The catalog row of *session* (its dir name or ID) under *root*: where to read it.
    The newest row when the session was archived more than once."""
    path = catalog_path(root)
    if not os.path.exists(path):
        raise BadArgument(f"no catalog at {path}; run `session-archive catalog "
                          f"{os.fspath(root)} --rebuild` or sweep with --pack")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        r = conn.execute("SELECT * FROM sessions WHERE name=? OR id=? ORDER BY sid DESC "
                         "LIMIT 1", (session, session)).fetchone()
    finally:
        conn.close()
    if r is None:
        raise ArchiveError(os.fspath(root), f"no session {session!r} in the catalog")
    d = dict(r)
    d["path"] = os.path.join(os.fspath(root), d["archive"])
    return d


def all_rows(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row, in a stable order (what a test compares)."""
    return find(root)
