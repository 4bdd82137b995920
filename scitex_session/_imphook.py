"""Run a callback when a module finishes importing — now or later.

Seeding torch or configuring matplotlib must not import them (Hydra #934: heavy imports make
every run slow), yet a script that imports them after start() must still get them seeded /
configured. A meta-path finder wraps the module's loader for the one import that creates
it, calls the callbacks after the module body ran, and puts the original loader back so the
module looks exactly as if we had never been there.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

Callback = Callable[[ModuleType], None]

_lock = threading.RLock()
_pending: dict[str, list[Callback]] = {}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self._inner.exec_module(module)
        finally:
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                spec.loader = self._inner
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._inner
        _run(self._name, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    _busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _pending or getattr(self._busy, "on", False):
            return None
        self._busy.on = True  # our own find_spec call below must not recurse into us
        try:
            spec = importlib.util.find_spec(fullname)
        except (ImportError, ValueError):
            return None
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, fullname)
        return spec


_finder = _Finder()


def _run(name: str, module: ModuleType) -> None:
    with _lock:
        callbacks = _pending.pop(name, [])
        if not _pending and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    for cb in callbacks:
        cb(module)


def when_imported(name: str, callback: Callback) -> None:
    """Call *callback(module)* now if *name* is imported, else right after its import."""
    with _lock:
        mod = sys.modules.get(name)
        if mod is None:
            _pending.setdefault(name, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    callback(mod)


def cancel(name: str | None = None) -> None:
    """Forget pending callbacks (for *name*, or all) — a closed session configures nothing."""
    with _lock:
        if name is None:
            _pending.clear()
        else:
            _pending.pop(name, None)
        if not _pending and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
