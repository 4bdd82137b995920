"""``mount``: browse ROOT as it was before the sweeps (archive_tool.mount)."""

from __future__ import annotations

import re

import click

from archive_tool.cli.common import call, exit_with
from archive_tool.cli.group import cli
from archive_tool.errors import MountUnavailable

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(_ctx: click.Context, param: click.Parameter, value: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", value, re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        raise click.BadParameter(f"a size such as 256M or 2G, got {value!r}", param=param)
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


@cli.command("mount")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("mountpoint", type=click.Path())
@click.option("--foreground", "-f", is_flag=True,
              help="Stay in the foreground (log to stderr) instead of detaching.")
@click.option("--allow-other", is_flag=True,
              help="Let other users see the mount; the kernel enforces each file's archived "
                   "owner and mode (default_permissions is always on).")
@click.option("--cache-size", default="64M", show_default=True, callback=_size,
              help="Decoded sessions kept (LRU): decoded tar + index, e.g. 64M, 2G.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), default=None,
              help="Append refusals and errors here [default: stderr with --foreground, "
                   "else syslog].")
def mount_cmd(root: str, mountpoint: str, foreground: bool, allow_other: bool,
              cache_size: int, log_file: str | None) -> None:
    """Mount ROOT read-only at MOUNTPOINT as it looked before the sweeps.

    Every archived session (per-session archive or pack) appears as its original
    <script>_out/FINISHED_*/<ID>-<name>/ directory with its files, sizes, modes and
    mtimes; live parts of ROOT show through unchanged. Needs the 'mount' extra and fuse3.
    Unmount with `fusermount3 -u MOUNTPOINT` (or SIGTERM to a --foreground mount).

    \b
    Example: session-archive mount /data/runs /mnt/runs
    """
    from archive_tool.mount import mount

    try:
        call(mount, root, mountpoint, foreground=foreground, allow_other=allow_other,
              cache_bytes=cache_size, log_file=log_file)
    except MountUnavailable as e:
        raise exit_with(str(e), e.exit_code) from None
