"""What a dry run prints (issue 26: prune printed 9,563 lines, repack 1,474): a summary by
default — per-project counts and bytes, then the first few items — every item with
``--list`` (or ``-v``), JSON with ``--json`` (the command's own)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from archive_tool.units import human_bytes, human_count

T = TypeVar("T")
FIRST = 5  # items shown before "... and N more"

LIST_HELP = "List every item (default: a summary per project and the first few)."


def project_of(root: str, path: str) -> str:
    """The top-level dir of *path* below *root* (the project), "." for the root itself."""
    rel = os.path.relpath(path, root)
    return "." if rel.startswith("..") else rel.split(os.sep, 1)[0]


def echo_items(items: Sequence[T], root: str, *, full: bool, path: Callable[[T], str],
               size: Callable[[T], int] | None, line: Callable[[T], str], noun: str) -> None:
    """Every line when *full*; else one line per project (count, bytes, share) and the
    first FIRST items, then how many more there are and how to see them."""
    if full or len(items) <= FIRST:
        for it in items:
            click.echo(line(it))
        return
    per: dict[str, list[int]] = {}
    for it in items:
        c = per.setdefault(project_of(root, path(it)), [0, 0])
        c[0] += 1
        c[1] += size(it) if size is not None else 0
    total = sum(b for _, b in per.values()) or 1
    for proj, (n, b) in sorted(per.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0])):
        what = f", {human_bytes(b)} ({100 * b / total:.0f} %)" if size is not None else \
            f" ({100 * n / len(items):.0f} %)"
        click.echo(f"  {proj}: {human_count(n)} {noun}{what}")
    for it in items[:FIRST]:
        click.echo(line(it))
    click.echo(f"  ... and {human_count(len(items) - FIRST)} more {noun} (--list shows all)")


def summary_dict(items: Sequence[Any], root: str, path: Callable[[Any], str],
                 size: Callable[[Any], int]) -> dict[str, dict[str, int]]:
    """Per-project {count, bytes} (for --json)."""
    out: dict[str, dict[str, int]] = {}
    for it in items:
        d = out.setdefault(project_of(root, path(it)), {"count": 0, "bytes": 0})
        d["count"] += 1
        d["bytes"] += size(it)
    return out
