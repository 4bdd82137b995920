"""``catalog ROOT`` with no flag: what the catalog holds, without changing it (issue 26:
"Missing option '--rebuild'" was all it said)."""

from __future__ import annotations

import os
import time
from typing import Any

from archive_tool.bulk import catalog
from archive_tool.bulk.plan import check_root


def catalog_state(root: str | os.PathLike[str]) -> dict[str, Any]:
    """root, catalog (path), exists; when it exists: sessions, archives (per-session
    files), packs, bytes_out (archived bytes the rows name), file_bytes, modified (UTC)."""
    root_p = check_root(root)
    path = catalog.catalog_path(root_p)
    out: dict[str, Any] = {"root": root_p, "catalog": path, "exists": False}
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return out
    conn = catalog.connect(root_p)  # the safe open (no symlink followed, a file of ours)
    try:
        n, archives, packs, b = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT CASE WHEN frame < 0 THEN archive END), "
            "COUNT(DISTINCT CASE WHEN frame >= 0 THEN archive END), "
            "COALESCE(SUM(bytes_out), 0) FROM sessions").fetchone()
    finally:
        conn.close()
    out.update(exists=True, sessions=n, archives=archives, packs=packs, bytes_out=b,
               file_bytes=st.st_size,
               modified=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.st_mtime)))
    return out
