"""Compatibility only: the ``archive_tool.bulk.<module>`` paths of 0.1.x, before issue 27 split
``bulk/`` by job. Kept through 0.2 for scripts that import them; removed in 0.3. Nothing in
``archive_tool`` imports this package (tests/test_layout.py checks it): new code imports the
modules where they live now (ARCHITECTURE.md).

This is the one place compat aliases live: each old name is the new module object itself
(``sys.modules``), so monkeypatching through either path patches the same module.
"""

from __future__ import annotations

import importlib
import sys

# old module under archive_tool.bulk -> where it lives now
MOVED = {
    "discover": "archive_tool.sweep.discover",
    "plan": "archive_tool.sweep.plan",
    "executors": "archive_tool.sweep.executors",
    "sweep": "archive_tool.sweep.sessions",
    "runlog": "archive_tool.sweep.runlog",
    "packplan": "archive_tool.sweep.packplan",
    "packsweep": "archive_tool.sweep.packsweep",
    "packwork": "archive_tool.sweep.packwork",
    "packresume": "archive_tool.sweep.packplan",
    "restore": "archive_tool.restore.many",
    "packrestore": "archive_tool.restore.packrestore",
    "prune": "archive_tool.retention.prune",
    "prunepacks": "archive_tool.retention.prunepacks",
    "repack": "archive_tool.retention.repack",
    "repackplan": "archive_tool.retention.repackplan",
    "catalog": "archive_tool.catalog.catalog",
    "report": "archive_tool.catalog.report",
    "staleness": "archive_tool.stale.staleness",
    "stale": "archive_tool.stale.finalize",
}

for _old, _new in MOVED.items():
    _module = importlib.import_module(_new)
    sys.modules[f"{__name__}.{_old}"] = _module
    globals()[_old] = _module
