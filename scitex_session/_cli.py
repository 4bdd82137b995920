"""A command line built from a function's signature.

``def main(data_path: Path, threshold: float = 0.5, mode: Literal["a", "b"] = "a",
verbose: bool = False)`` becomes ``--data-path PATH (required) -t/--threshold FLOAT
-m/--mode {a,b} -v/--verbose``; the docstring is the description and defaults show in help.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

_SCALARS = (int, float, str, Path)
_NAMED = {"int": int, "float": float, "str": str, "bool": bool, "Path": Path}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the docstring's line breaks; wide enough for kebab-case names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: use them raw
        return {k: v for k, v in getattr(func, "__annotations__", {}).items()}


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _short_flag(name: str, taken: set[str]) -> str | None:
    parts = [p for p in name.split("_") if p]
    candidates = [name[0]]
    if len(parts) > 1:
        candidates.append("".join(p[0] for p in parts))
    candidates += [name[:n] for n in range(2, min(len(name), 4) + 1)]
    for c in candidates:
        if c and c not in taken and c.isidentifier():
            taken.add(c)
            return f"-{c}"
    return None


def injectable_names(func: Callable[..., Any], sentinel: object) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.default is sentinel]


def _scalar_type(tp: Any, default: Any) -> Any:
    if tp in _SCALARS:
        return tp
    if isinstance(tp, type) and issubclass(tp, Path):
        return tp
    if tp is inspect.Parameter.empty or tp is Any:
        if default is not None and type(default) in _SCALARS:
            return type(default)
    return str


def add_parameter(parser: argparse.ArgumentParser, param: inspect.Parameter, tp: Any,
                  taken: set[str]) -> None:
    name = param.name
    long_flag = "--" + name.replace("_", "-")
    has_default = param.default is not inspect.Parameter.empty
    default = param.default if has_default else None
    if isinstance(tp, str):  # an annotation get_type_hints could not resolve
        tp = _NAMED.get(tp, inspect.Parameter.empty)
    tp = _unwrap_optional(tp)
    flags = [f for f in (_short_flag(name, taken), long_flag) if f]
    kw: dict[str, Any] = {"dest": name}
    help_bits: list[str] = []

    if tp is bool or (tp is inspect.Parameter.empty and isinstance(default, bool)):
        if has_default and default is False:
            kw["action"] = "store_true"
        else:
            # True by default (or required): the user needs a way to say no.
            kw["action"] = argparse.BooleanOptionalAction
    elif get_origin(tp) is Literal:
        choices = list(get_args(tp))
        kw["choices"] = choices
        kinds = {type(c) for c in choices}
        if len(kinds) == 1 and kinds <= set(_SCALARS):
            kw["type"] = kinds.pop()
        kw["metavar"] = "{" + ",".join(str(c) for c in choices) + "}"
    elif get_origin(tp) in (list, tuple, set, typing.Sequence) or tp in (list, tuple):
        inner = get_args(tp)
        kw["type"] = _scalar_type(inner[0] if inner else str, None)
        kw["nargs"] = "*" if has_default else "+"
    else:
        kw["type"] = _scalar_type(tp, default)

    if has_default:
        kw["default"] = default
        help_bits.append(f"(default: {default})")
    else:
        kw["required"] = True
        help_bits.append("(required)")
    if kw.get("type") is not None and "metavar" not in kw:
        kw["metavar"] = getattr(kw["type"], "__name__", "VALUE").upper()
    kw["help"] = " ".join(help_bits)
    parser.add_argument(*flags, **kw)


def build_parser(func: Callable[..., Any], sentinel: object = None,
                 prog: str | None = None, epilog: str | None = None,
                 skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An ArgumentParser for *func*: one option per parameter except those defaulting to
    *sentinel* (injected) and ``*args``/``**kwargs``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=inspect.getdoc(func), epilog=epilog, formatter_class=_Formatter
    )
    hints = _hints(func)
    taken = {"h"}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if (sentinel is not None and param.default is sentinel) or param.name in skip:
            continue
        add_parameter(parser, param, hints.get(param.name, param.annotation), taken)
    return parser
