"""A command line built from a function's signature.

``def main(data_path: Path, threshold: float = 0.5, mode: Literal["a", "b"] = "a",
verbose: bool = False)`` becomes ``-d/--data-path PATH (required) -t/--threshold FLOAT
-m/--mode {a,b} -v/--verbose``; the docstring is the description, its ``Args:`` entries
are the options' help, and defaults show in help. Abbreviated options are refused.
"""

from __future__ import annotations

import argparse
import inspect
import re
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


def short_flags(names: list[str]) -> dict[str, str]:
    """``-x`` for each name whose first letter starts no other name (and is not ``h``).

    Only unambiguous single letters: the published package also made ``-ca``-style
    multi-letter short options and gave ``-c`` to whichever of count/cache came first, so
    ``-c`` meant different things as a signature grew."""
    firsts: dict[str, list[str]] = {}
    for n in names:
        if n and n[0].isalpha():
            firsts.setdefault(n[0], []).append(n)
    return {group[0]: f"-{letter}" for letter, group in firsts.items()
            if len(group) == 1 and letter != "h"}


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments)\s*:?\s*$")
_NUMPY_RULE = re.compile(r"^-{3,}\s*$")
# "name: text", "name (type): text", numpy's "name : type"
_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


def split_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description without the Args section, {parameter: help}) from a Google-style
    (``Args:``) or numpy-style (``Parameters`` + dashes) docstring."""
    if not doc:
        return "", {}
    lines = doc.splitlines()
    out: list[str] = []
    helps: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        numpy = (i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1].strip())
                 and line.strip() in ("Parameters", "Arguments", "Args"))
        if not (_SECTION.match(line.strip()) or numpy):
            out.append(line)
            i += 1
            continue
        base = len(line) - len(line.lstrip())
        i += 2 if numpy else 1
        current: str | None = None
        item_indent = None
        while i < len(lines):
            raw = lines[i]
            if not raw.strip():
                i += 1
                # a blank line ends the section unless the next line is still indented in it
                if i < len(lines) and lines[i].strip() and \
                        len(lines[i]) - len(lines[i].lstrip()) > base:
                    continue
                break
            indent = len(raw) - len(raw.lstrip())
            if indent <= base and not numpy:
                break
            if numpy and indent <= base and not _ITEM.match(raw.strip()):
                break
            m = _ITEM.match(raw.strip())
            if m and (item_indent is None or indent <= item_indent):
                item_indent = indent
                current = m.group(1)
                text = m.group(3).strip()
                # numpy puts the type after the colon and the text below it
                helps[current] = "" if numpy else text
            elif current is not None:
                helps[current] = (helps[current] + " " + raw.strip()).strip()
            i += 1
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out), helps


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
                  short: str | None = None, doc: str = "") -> None:
    name = param.name
    long_flag = "--" + name.replace("_", "-")
    has_default = param.default is not inspect.Parameter.empty
    default = param.default if has_default else None
    if isinstance(tp, str):  # an annotation get_type_hints could not resolve
        tp = _NAMED.get(tp, inspect.Parameter.empty)
    tp = _unwrap_optional(tp)
    flags = [f for f in (short, long_flag) if f]
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
    kw["help"] = " ".join([doc, *help_bits] if doc else help_bits)
    parser.add_argument(*flags, **kw)


def build_parser(func: Callable[..., Any], sentinel: object = None,
                 prog: str | None = None, epilog: str | None = None,
                 skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An ArgumentParser for *func*: one option per parameter except those defaulting to
    *sentinel* (injected) and ``*args``/``**kwargs``."""
    description, helps = split_docstring(inspect.getdoc(func))
    # allow_abbrev=False: "--coun" must not silently mean "--count" (and stop working the
    # day a "--country" parameter is added).
    parser = argparse.ArgumentParser(
        prog=prog, description=description or None, epilog=epilog,
        formatter_class=_Formatter, allow_abbrev=False,
    )
    hints = _hints(func)
    params = [p for p in inspect.signature(func).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
              and not (sentinel is not None and p.default is sentinel) and p.name not in skip]
    shorts = short_flags([p.name for p in params])
    for param in params:
        add_parameter(parser, param, hints.get(param.name, param.annotation),
                      shorts.get(param.name), helps.get(param.name, ""))
    return parser
