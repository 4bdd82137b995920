"""Commands on one session or archive: pack, unpack, verify, show."""

from __future__ import annotations

import click

from archive_tool.cli import (
    FORMAT,
    Failed,
    _call,
    cli,
)
from archive_tool.errors import ArchiveError
from archive_tool.units import human_bytes, human_count


@cli.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "-f", "fmt", type=FORMAT, default="tar.zst", show_default=True)
@click.option("--keep-source", is_flag=True, help="Keep the session dir after archiving.")
@click.option("--level", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Compression level on gzip's 1..9 scale.")
@click.option("--force", is_flag=True,
              help="Pack a dir under RUNNING/ or one not named like a session.")
def pack(directory: str, fmt: str, keep_source: bool, level: int, force: bool) -> None:
    """Archive one session DIRECTORY into DIRECTORY.<format> beside it.

    \b
    Example: session-archive pack main_out/FINISHED_SUCCESS/2026Y-11M-23D-18h39m23s_KYwP-main
    """
    from archive_tool.bulk.plan import check_pack_target
    from archive_tool.engine.single import archive_one

    _call(check_pack_target, directory, force)
    path = _call(archive_one, directory, format=fmt, remove_src=not keep_source, compresslevel=level)
    click.echo(str(path))


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--dest", "-d", type=click.Path(), default=None,
              help="Directory to create (default: the archive path without its suffix).")
@click.option("--remove-archive", is_flag=True,
              help="Delete the archive once the restored dir is on stable storage.")
@click.option("--keep-setuid", is_flag=True,
              help="Keep setuid/setgid/sticky bits (root only; dropped by default).")
def unpack(archive: str, dest: str | None, remove_archive: bool, keep_setuid: bool) -> None:
    """Restore one ARCHIVE into a session dir (never overwrites).

    \b
    Example: session-archive unpack FINISHED_SUCCESS/2026Y-11M-23D-18h39m23s_KYwP-main.tar.zst
    """
    from archive_tool.engine.restore import restore_one

    click.echo(str(_call(restore_one, archive, dest, remove_archive,
                         keep_special=keep_setuid)))


@cli.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print only the bad archives.")
def verify(archives: tuple[str, ...], quiet: bool) -> None:
    """Read each ARCHIVE completely: headers, data, checksums, restore safety.

    Prints one line per bad archive; exits 1 if any is bad.

    \b
    Example: session-archive verify -q main_out/FINISHED_SUCCESS/*.tar.zst
    """
    from archive_tool.engine.read import verify_archive

    bad = 0
    for a in archives:
        try:
            info = verify_archive(a)
        except ArchiveError as e:
            bad += 1
            click.echo(f"BAD {e}", err=False)
            continue
        if not quiet:
            click.echo(f"ok  {a}: {human_count(info.members)} members, {human_bytes(info.bytes)}")
    if bad:
        raise Failed(f"{bad} of {len(archives)} archives failed verification")


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.argument("member", required=False)
def show(archive: str, member: str | None) -> None:
    """List ARCHIVE's members with sizes, or write MEMBER's bytes to stdout.

    MEMBER may be the full name or the name below the session dir
    (e.g. CONFIGS/CONFIG.yaml).

    \b
    Example: session-archive show RUN.tar.zst CONFIGS/CONFIG.yaml
    """
    from archive_tool.engine.read import copy_member, list_members

    if member is not None:
        out = click.get_binary_stream("stdout")
        _call(copy_member, archive, member, out)
        out.flush()
        return

    def listing() -> None:
        for m in list_members(archive):
            link = f" -> {m.linkname}" if m.linkname else ""
            click.echo(f"{m.kind} {m.size:>12} {m.name}{link}")

    _call(listing)
