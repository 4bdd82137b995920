"""CONFIG: a dict with attribute access, ./config/*.yaml loading, and saving a run's config.

PyYAML is imported only when there is YAML to read or write, so a script that never reaches
close() (or has no ./config/) does not pay for it at start.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
from pathlib import Path, PurePath
from typing import Any


class DotDict(dict):
    """A dict whose keys are also attributes: ``CONFIG.ID`` and ``CONFIG["ID"]``.

    Nested plain dicts are converted on assignment so ``CONFIG.SESSION.ARCHIVE_FORMAT``
    works for values loaded from YAML. It stays a real ``dict`` subclass so ``yaml``,
    ``pickle`` and ``json`` callers that check ``isinstance(x, dict)`` keep working.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.update(*args, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            # AttributeError (not KeyError) so hasattr()/getattr(x, n, default) and
            # copy/pickle protocol probes behave as for any object.
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(k for k in self if isinstance(k, str))]

    def __reduce__(self) -> tuple[Any, ...]:
        return (DotDict, (dict(self),))

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, DotDict) else v for k, v in self.items()}


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, DotDict):
        return DotDict(value)
    return value


def load_yaml_configs(config_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config_dir/*.yaml`` (and ``*.yml``) keyed by upper-cased file stem."""
    d = Path(config_dir)
    if not d.is_dir():
        return {}
    files = sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        return {}
    import yaml

    out: dict[str, Any] = {}
    for p in files:
        with open(p, encoding="utf-8") as fh:
            out[p.stem.upper()] = yaml.safe_load(fh)
    return out


def to_plain(obj: Any) -> Any:
    """A copy of *obj* that ``yaml.safe_dump`` accepts and ``yaml.safe_load`` reads back:
    paths become strings, tuples lists, numpy scalars Python scalars, unknown objects repr."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, float, bool)) else k: to_plain(v)
                for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str, _dt.datetime, _dt.date)):
        return obj
    item = getattr(obj, "item", None)  # numpy scalars, without importing numpy
    if callable(item) and getattr(obj, "shape", None) == ():
        try:
            return to_plain(item())
        except Exception:  # noqa: BLE001 - fall through to repr
            pass
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        try:
            return to_plain(tolist())
        except Exception:  # noqa: BLE001
            pass
    if hasattr(obj, "__dict__") and not callable(obj):
        return to_plain({k: v for k, v in vars(obj).items() if not k.startswith("_")})
    return repr(obj)


def _picklable(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and k.startswith("_"):
                continue
            out[k] = _picklable(v)
        return out
    try:
        pickle.dumps(obj)
        return obj
    except Exception:  # noqa: BLE001 - a run's config must save even if one value won't pickle
        return to_plain(obj)


def save_config(config: dict[str, Any], configs_dir: str | os.PathLike[str]) -> None:
    """Write ``CONFIG.yaml`` (safe_load-able) and ``CONFIG.pkl`` (a plain dict) into
    *configs_dir*."""
    import yaml

    d = Path(configs_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "CONFIG.yaml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_plain(config), fh, sort_keys=False, allow_unicode=True)
    with open(d / "CONFIG.pkl", "wb") as fh:
        pickle.dump(_picklable(config), fh, protocol=pickle.HIGHEST_PROTOCOL)
