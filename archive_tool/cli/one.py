"""Commands on one session or archive: pack, unpack, verify, show."""

from __future__ import annotations

import os

import click

from archive_tool.cli import (
    FORMAT,
    BadInput,
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


def _not_a_dir(archive: str, session: str | None) -> None:
    if session is None and os.path.isdir(archive):
        raise BadInput(f"{archive}: is a directory, not an archive (with --session it is a "
                       "root whose catalog says where that session is)")


@cli.command()
@click.argument("archive", type=click.Path(exists=True))
@click.option("--dest", "-d", type=click.Path(), default=None,
              help="Directory to create (default: the archive path without its suffix).")
@click.option("--remove-archive", is_flag=True,
              help="Delete the archive once the restored dir is on stable storage.")
@click.option("--keep-setuid", is_flag=True,
              help="Keep setuid/setgid/sticky bits and file capabilities (root only; dropped "
                   "by default, except setgid on directories, always kept).")
@click.option("--session", "-s", default=None, metavar="NAME|ID",
              help="ARCHIVE is a pack: restore only this session (its frame alone is read; "
                   "the pack is never rewritten). Default dest: beside the pack. ARCHIVE "
                   "may be a root: its catalog says which pack or archive holds it.")
def unpack(archive: str, dest: str | None, remove_archive: bool, keep_setuid: bool,
           session: str | None) -> None:
    """Restore one ARCHIVE into a session dir (never overwrites).

    \b
    Example: session-archive unpack FINISHED_SUCCESS/2026Y-11M-23D-18h39m23s_KYwP-main.tar.zst
    From a pack: session-archive unpack 2026-11-23.pack.tar.zst -s 2026Y-11M-23D-18h39m23s_KYwP
    """
    from archive_tool.engine.restore import restore_one

    _not_a_dir(archive, session)
    if session is not None:
        from archive_tool.engine.packfile import restore_session

        if remove_archive:
            raise click.BadParameter("a pack is never rewritten; not with --session",
                                     param_hint="--remove-archive")
        if os.path.isdir(archive):
            from archive_tool.bulk.catalog import locate

            row = _call(locate, archive, session)
            if row["frame"] < 0:  # a per-session archive
                click.echo(str(_call(restore_one, row["path"], dest,
                                     keep_special=keep_setuid)))
                return
            archive, session = row["path"], row["name"]
        click.echo(_call(restore_session, archive, session, dest, keep_special=keep_setuid))
        return

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
    from archive_tool.engine.packfile import is_pack_name, verify_pack
    from archive_tool.engine.read import verify_archive

    bad = 0
    for a in archives:
        try:
            # A pack also gets its seek table, index and per-session frames checked.
            info = (verify_pack if is_pack_name(os.path.basename(a)) else verify_archive)(a)
        except ArchiveError as e:
            bad += 1
            click.echo(f"BAD {e}", err=False)
            continue
        if not quiet:
            click.echo(f"ok  {a}: {human_count(info.members)} members, {human_bytes(info.bytes)}")
    if bad:
        raise Failed(f"{bad} of {len(archives)} archives failed verification")


@cli.command()
@click.argument("archive", type=click.Path(exists=True))
@click.argument("member", required=False)
@click.option("--session", "-s", default=None, metavar="NAME|ID",
              help="ARCHIVE is a pack: show this session only (reads its frame alone). "
                   "ARCHIVE may be a root: its catalog says where the session is.")
def show(archive: str, member: str | None, session: str | None) -> None:
    """List ARCHIVE's members with sizes, or write MEMBER's bytes to stdout.

    MEMBER may be the full name or the name below the session dir
    (e.g. CONFIGS/CONFIG.yaml).

    \b
    Example: session-archive show RUN.tar.zst CONFIGS/CONFIG.yaml
    From a pack: session-archive show 2026-11-23.pack.tar.zst -s 2026Y-11M-23D-18h39m23s_KYwP CONFIGS/CONFIG.yaml
    """
    from archive_tool.engine.read import copy_member, list_members

    _not_a_dir(archive, session)

    def opened() -> tuple[str, int | None]:
        if session is None:
            return archive, None
        from archive_tool.engine import packfile

        if os.path.isdir(archive):
            from archive_tool.bulk.catalog import locate

            r = locate(archive, session)
            if r["frame"] < 0:
                return r["path"], None
            return (f"{r['path']}::{r['name']}",
                    packfile.session_fd_at(r["path"], r["name"], r["offset"], r["bytes_out"],
                                           r["tar_bytes"]))
        return f"{archive}::{session}", packfile.session_fd(archive, session)

    if member is not None:
        out = click.get_binary_stream("stdout")
        label, fd = _call(opened)
        _call(copy_member, label, member, out, fd=fd)
        out.flush()
        return

    def listing() -> None:
        label, fd = opened()
        for m in list_members(label, fd=fd):
            link = f" -> {m.linkname}" if m.linkname else ""
            click.echo(f"{m.kind} {m.size:>12} {m.name}{link}")

    _call(listing)
