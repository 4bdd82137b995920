"""Commands on one session or archive: archive (old name: pack), unpack, verify, show."""

from __future__ import annotations

import copy
import os
from typing import Any

import click

from archive_tool.cli.common import (
    FORMAT,
    BadInput,
    Failed,
    call,
    checked_level,
    level_option,
)
from archive_tool.cli.group import cli
from archive_tool.errors import ArchiveError
from archive_tool.units import human_bytes, human_count


@cli.command("archive")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "-f", "fmt", type=FORMAT, default="tar.zst", show_default=True,
              help="Archive format.")
@click.option("--keep-source", is_flag=True, help="Keep the session dir after archiving.")
@level_option
@click.option("--force", is_flag=True,
              help="Pack a dir under RUNNING/ or one not named like a session.")
def archive_cmd(directory: str, fmt: str, keep_source: bool, level: int | None,
                force: bool) -> None:
    """Archive one session DIRECTORY into DIRECTORY.<format> beside it.

    (Called `pack` before issue 26; that name still works. Packs of many sessions are
    `sweep --pack`.)

    \b
    Example: session-archive archive main_out/FINISHED_SUCCESS/2026Y-11M-23D-18h39m23s_KYwP-main
    """
    from archive_tool.engine.single import archive_one
    from archive_tool.sweep.plan import check_pack_target

    level = checked_level(fmt, level)
    call(check_pack_target, directory, force)
    path = call(archive_one, directory, format=fmt, remove_src=not keep_source, compresslevel=level)
    click.echo(str(path))


# The old name of `archive`, kept working for scripts and cron lines, hidden from --help:
# `pack` read like the multi-session packs of `sweep --pack` (issue 26).
_pack_alias = copy.copy(archive_cmd)
_pack_alias.hidden = True
cli.add_command(_pack_alias, "pack")


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
        from archive_tool.pack.restore import restore_session

        if remove_archive:
            raise click.BadParameter("a pack is never rewritten; not with --session",
                                     param_hint="--remove-archive")
        if os.path.isdir(archive):
            from archive_tool.catalog.catalog import locate, open_located

            root = os.path.abspath(archive)
            row = call(locate, root, session)
            # The row is the tree owner's to forge: the file is opened below the root by
            # dir fds, never by the path it names (untrusted.py).
            fd = call(open_located, root, row)
            if row["frame"] < 0:  # a per-session archive
                os.close(fd)
                click.echo(str(call(restore_one, row["path"], dest, follow=False, root=root,
                                     keep_special=keep_setuid)))
                return
            click.echo(call(restore_session, row["path"], row["name"], dest,
                             keep_special=keep_setuid, fd=fd, root=root))
            return
        click.echo(call(restore_session, archive, session, dest, keep_special=keep_setuid))
        return

    from archive_tool.errors import ArchiveTooLarge, CorruptArchive, UnsafeArchive
    from archive_tool.pack.packfile import is_pack_name

    def attempt() -> tuple[str, Any]:
        try:
            return str(restore_one(archive, dest, remove_archive, keep_special=keep_setuid)), None
        except CorruptArchive as e:
            if (isinstance(e, UnsafeArchive | ArchiveTooLarge) or remove_archive
                    or not is_pack_name(os.path.basename(archive))):
                raise
        # A damaged pack: every session whose frame still reads comes back, one dir each
        # below the destination; the lost ones are named (issue 26).
        from archive_tool.pack.restore import restore_readable

        return "", restore_readable(archive, dest, keep_special=keep_setuid)

    path, salvaged = call(attempt)
    if salvaged is None:
        click.echo(path)
        return
    restored, found = salvaged
    for p in restored:
        click.echo(p)
    click.echo(f"damaged pack {archive}: {found.summary()}", err=True)
    raise Failed(f"{len(found.lost):,} sessions lost, {len(restored):,} restored")


class _ArchiveOrTree(click.Path):
    """click.Path(exists=True) that also returns whether the path is a dir (a tree) and
    its size, from the one stat click takes anyway: verify's own isdir was a second stat
    of every archive, and the reader's fstat for the size a third, a metadata round trip
    each on a parallel filesystem (issue 24)."""

    def __init__(self) -> None:
        super().__init__(exists=True)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        import stat

        name = click.format_filename(value)
        try:
            st = os.stat(value)
        except OSError:
            self.fail(f"Path {name!r} does not exist.", param, ctx)
        if not os.access(value, os.R_OK):
            self.fail(f"Path {name!r} is not readable.", param, ctx)
        return value, stat.S_ISDIR(st.st_mode), st.st_size


@cli.command()
@click.argument("archives", nargs=-1, required=True, type=_ArchiveOrTree())
@click.option("--quiet", "-q", is_flag=True, help="Print only the bad archives.")
@click.option("--workers", "-j", type=click.IntRange(1, None), default=None,
              help="Processes verifying a tree at once [default: one per CPU].")
@click.option("--json", "as_json", is_flag=True,
              help="A tree: print its summary as one JSON object on stdout, nothing else.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar on stderr for a tree [default: when stderr is a terminal].")
def verify(archives: tuple[tuple[str, bool, int], ...], quiet: bool, workers: int | None, as_json: bool,
           progress: bool | None) -> None:
    """Read each ARCHIVE completely: headers, data, checksums, restore safety.

    An ARCHIVE that is a directory is a tree: every session archive and pack in its
    FINISHED_* dirs is verified on the worker pool, with a summary line. A damaged pack
    also gets a salvage line: which of its sessions are lost, how many still read.

    Prints one line per bad archive; exits 1 if any is bad, naming them.

    \b
    Example: session-archive verify -q main_out/FINISHED_SUCCESS/*.tar.zst
    A tree:  session-archive verify /data/runs -j 4
    """
    from archive_tool.engine.read import verify_archive
    from archive_tool.pack.packfile import is_pack_name, verify_pack

    trees = [a for a, is_dir, _ in archives if is_dir]
    paths = [a for a, _, _ in archives]
    if trees:
        if len(trees) != len(paths):
            raise BadInput("give either directories (trees) or archives, not both")
        _verify_trees(trees, quiet, workers, as_json, progress)
        return
    bad = 0
    for a, _, size in archives:
        is_pack = is_pack_name(os.path.basename(a))
        try:
            # A pack also gets its seek table, index and per-session frames checked.
            # An archive's size is click's stat's: no fstat after the open (open_tar).
            info = verify_pack(a) if is_pack else verify_archive(a, size=size)
        except ArchiveError as e:
            bad += 1
            click.echo(f"BAD {e}", err=False)
            if is_pack:
                click.echo(f"    salvage: {_salvage_line(a)}")
            continue
        if not quiet:
            click.echo(f"ok  {a}: {human_count(info.members)} members, {human_bytes(info.bytes)}")
    if bad:
        raise Failed(f"{bad} of {len(paths)} archives failed verification")


def _verify_trees(trees: list[str], quiet: bool, workers: int | None, as_json: bool,
                  progress: bool | None) -> None:
    import json

    from archive_tool.progress import progress_bar, want_progress
    from archive_tool.restore.verifytree import verify_tree

    bad: list[str] = []
    for root in trees:
        with progress_bar(want_progress(quiet or as_json, progress), "verify") as bar:
            def on_result(r: Any) -> None:
                if bar is not None:
                    bar.tick()
                if r.error is not None and not as_json:
                    click.echo(f"BAD {r.path}: {r.error}")

            s = call(verify_tree, root, workers=workers, on_result=on_result,
                      on_total=bar.set_total if bar is not None else None)
        bad += [f["path"] for f in s["failures"]]
        if as_json:
            click.echo(json.dumps(s, sort_keys=True))
        elif not quiet or s["bad"]:
            click.echo(f"verified {human_count(s['checked'])} archives under {s['root']} "
                       f"({human_count(s['packs'])} packs): {human_count(s['ok'])} ok, "
                       f"{human_count(s['bad'])} bad; {human_count(s['members'])} members, "
                       f"{human_bytes(s['bytes'])} in {s['elapsed']:.1f} s")
        if s["signal"]:
            click.echo(f"Error: {s['stopped']}", err=True)
            click.get_current_context().exit(128 + s["signal"])
        if s["stopped"]:
            raise Failed(s["stopped"])
    if bad:
        names = ", ".join(bad[:10]) + (f" and {len(bad) - 10:,} more" if len(bad) > 10 else "")
        raise Failed(f"{len(bad):,} archives failed verification: {names}")


def _salvage_line(pack: str) -> str:
    """Which sessions of a damaged pack are lost, read frame by frame (packsalvage)."""
    from archive_tool.pack.packsalvage import salvage

    try:
        return salvage(pack).summary()
    except ArchiveError as e:
        return f"cannot read it: {e.reason}"


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
    from archive_tool.engine.extract import copy_member
    from archive_tool.engine.read import list_members

    _not_a_dir(archive, session)

    def opened() -> tuple[str, int | None]:
        if session is None:
            return archive, None
        from archive_tool.pack import packfile

        if os.path.isdir(archive):
            from archive_tool.catalog.catalog import locate, open_located

            root = os.path.abspath(archive)
            r = locate(root, session)
            # Opened below the root by dir fds, not by the path a forged row names.
            fd = open_located(root, r)
            if r["frame"] < 0:
                return r["path"], fd
            try:
                return (f"{r['path']}::{r['name']}",
                        packfile.session_fd_at(r["path"], r["name"], r["offset"],
                                               r["bytes_out"], r["tar_bytes"], fd=fd))
            finally:
                os.close(fd)
        return f"{archive}::{session}", packfile.session_fd(archive, session)

    if member is not None:
        out = click.get_binary_stream("stdout")
        label, fd = call(opened)
        call(copy_member, label, member, out, fd=fd)
        out.flush()
        return

    def listing() -> None:
        label, fd = opened()
        for m in list_members(label, fd=fd):
            link = f" -> {m.linkname}" if m.linkname else ""
            click.echo(f"{m.kind} {m.size:>12} {m.name}{link}")

    call(listing)
