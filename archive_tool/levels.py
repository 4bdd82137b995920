"""Compression levels: each format's own range and the default we use (issue 26).

One rule for every entry point (``--level`` of sweep, sweep --pack, compress, archive,
report; ``compresslevel=`` of the API, the engine and PackWriter; ``SESSION.ARCHIVE_LEVEL``
of the decorator's config): a level is the chosen codec's own level — what ``gzip -N``,
``zstd -N`` or ``xz -N`` would mean — and None means the format's default below.
Before issue 26 one 1..9 scale was mapped to zstd 3..19; that mapping is gone
(CHANGES.md gives the old-to-new table).

This module imports nothing heavy: the CLI builds ``--help`` from it without loading the
engine (zstandard).

Why these ranges:
- zstd 1..19. Negative ("--fast") levels are left out: measured on demo-tree sessions,
  zstd -1 saves 0.007 ms per session against level 3 (noise beside ~1 ms of file-system
  calls per session) and writes 2.4 % more bytes; -5 writes 8.6 % more. Ultra levels 20..22
  are left out: 0.16 % smaller than 19 at ~5x its time, and a streamed (large) session at
  level 22 uses a 128 MiB window, which every reader (extract workers, mount) would then
  have to allocate; our readers set no window limit of their own beyond libzstd's.
- gzip 1..9 (gzip(1)'s -1..-9; zlib's 0 = stored is not a gzip level).
- xz 0..9 (xz's presets). Our default stays 1, not xz's 6: 6 needs ~94 MiB per compressor
  and is several times slower, and tar.xz is here for compatibility, not as the choice.
- tar has no level: nothing is compressed.
"""

from __future__ import annotations

from dataclasses import dataclass

from archive_tool.errors import BadArgument
from archive_tool.names import normalize_format


@dataclass(frozen=True)
class Levels:
    tool: str  # whose levels these are, as the user knows them
    low: int
    high: int
    default: int

    def __contains__(self, level: object) -> bool:
        return isinstance(level, int) and self.low <= level <= self.high

    def describe(self) -> str:
        return f"{self.tool} levels {self.low}..{self.high} (default {self.default})"


# Canonical format names (names.FORMATS). The defaults are what every version so far
# wrote: zstd 3 (zstd's own default), gzip 1, xz 1 — the same bytes as before issue 26.
LEVELS: dict[str, Levels | None] = {
    "tar.zst": Levels("zstd", 1, 19, 3),
    "tar.gz": Levels("gzip", 1, 9, 1),
    "tar.xz": Levels("xz", 0, 9, 1),
    "tar": None,
}


def resolve_level(fmt: str, level: int | None, what: str = "compresslevel") -> int:
    """The level to compress *fmt* with: *level* if it lies in the format's range, the
    format's default for None, else BadArgument (exit 2) naming the range. *what* names
    the knob in the message (``--level`` on the command line). tar ignores any int level:
    API.md's ``archive_session_dir(..., format="tar", compresslevel=1)`` stays valid (the
    CLI refuses ``--level`` with tar instead, see :func:`check_cli_level`)."""
    fmt = normalize_format(fmt)
    levels = LEVELS[fmt]
    if level is None:
        return 0 if levels is None else levels.default
    if not isinstance(level, int) or isinstance(level, bool):
        raise BadArgument(f"{what} must be an integer, got {level!r}")
    if levels is not None and level not in levels:
        raise BadArgument(f"{what} {level} is out of range for {fmt}: "
                          f"{levels.describe()}")
    return level


def check_cli_level(fmt: str, level: int | None) -> int:
    """``--level`` as given on the command line (None = not given) for *fmt*; a level
    with ``-f tar`` is refused: it would be silently ignored."""
    if level is not None and LEVELS[normalize_format(fmt)] is None:
        raise BadArgument("--level does not apply to tar (not compressed)")
    return resolve_level(fmt, level, "--level")


def level_help(formats: tuple[str, ...] = ("tar.zst", "tar.gz", "tar.xz")) -> str:
    """The ``--help`` text of ``--level``: each format's range and real default."""
    parts = []
    for fmt in formats:
        lv = LEVELS[fmt]
        assert lv is not None
        parts.append(f"{fmt} {lv.low}..{lv.high} ({lv.tool}'s; default {lv.default})")
    text = "Compression level in the format's own range: " + ", ".join(parts)
    if len(formats) > 1:
        text += "; tar has none"
    return text + "."
