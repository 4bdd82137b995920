"""Commands on the catalog and packs of a root: catalog (--rebuild), find, repack."""

from __future__ import annotations

import json
import os

import click

from archive_tool.cli.common import (
    BadInput,
    Failed,
    call,
    reconcile_catalog,
)
from archive_tool.cli.dryrun import LIST_HELP, echo_items
from archive_tool.cli.group import cli
from archive_tool.units import human_bytes, human_count


@cli.command("catalog")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--rebuild", is_flag=True,
              help="Rebuild ROOT/.session-archive/catalog.sqlite from the packs and session "
                   "archives under ROOT alone (replaces the old one atomically).")
@click.option("--check", is_flag=True,
              help="Compare the catalog with the archives and packs under ROOT; exit 1 "
                   "naming each difference (a rebuild makes it clean).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def catalog_cmd(root: str, rebuild: bool, check: bool, as_json: bool) -> None:
    """Print what the catalog of ROOT holds, or rebuild it (one row per archived session).

    \b
    Example: session-archive catalog /data/runs
             session-archive catalog /data/runs --rebuild
    """
    from archive_tool.catalog.rebuild import rebuild as do_rebuild

    if rebuild and check:
        raise BadInput("--rebuild or --check, not both")
    if check:
        _check(root, as_json)
        return
    if not rebuild:
        _print_state(root, as_json)
        return
    res = call(do_rebuild, root)
    if as_json:
        click.echo(json.dumps(res, sort_keys=True))
    else:
        click.echo(f"catalog {res['catalog']}: {human_count(res['sessions'])} sessions from "
                   f"{human_count(res['files'])} files in {res['elapsed']:.1f} s")
    for e in res["errors"]:
        click.echo(f"failed: {e}", err=True)
    if res["errors"]:
        raise Failed(f"{len(res['errors'])} files could not be read")


def _check(root: str, as_json: bool) -> None:
    from archive_tool.catalog.catalogstate import check_catalog

    r = call(check_catalog, root)
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
    else:
        for m in r["missing"]:
            click.echo(f"missing {m} (on disk, no catalog row)")
        for m in r["stale"]:
            click.echo(f"stale   {m} (a row, not on disk)")
        for m in r["unreadable"]:
            click.echo(f"unreadable {m}")
        click.echo(f"catalog {r['catalog']}: {human_count(r['rows'])} rows, "
                   f"{human_count(r['on_disk'])} sessions on disk; "
                   f"{human_count(r['n_missing'])} missing, {human_count(r['n_stale'])} stale"
                   + ("" if r["exists"] else " (no catalog)"))
    if not r["clean"]:
        raise Failed(f"the catalog differs from the tree ({r['n_missing']:,} missing, "
                     f"{r['n_stale']:,} stale); `catalog --rebuild` makes it true")


def _print_state(root: str, as_json: bool) -> None:
    from archive_tool.catalog.catalogstate import catalog_state

    st = call(catalog_state, root)
    if as_json:
        click.echo(json.dumps(st, sort_keys=True))
    elif not st["exists"]:
        click.echo(f"no catalog at {st['catalog']}; `catalog --rebuild` makes one from the "
                   "archives and packs (and `sweep --catalog`/`--pack` fill it)")
    else:
        click.echo(f"catalog {st['catalog']}: {human_count(st['sessions'])} sessions in "
                   f"{human_count(st['packs'])} packs and {human_count(st['archives'])} "
                   f"archives, {human_bytes(st['bytes_out'])} archived; file "
                   f"{human_bytes(st['file_bytes'])}, updated {st['modified']}")


@cli.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Config key (flattened: ARGS.lr) =, !=, <, <=, >, >= a value; repeatable.")
@click.option("--state", default=None, help="FINISHED_SUCCESS, FINISHED_ERROR or FINISHED.")
@click.option("--script", default=None, help="The <script>_out dir name.")
@click.option("--since", default=None, metavar="DATE", help="Started on or after DATE.")
@click.option("--until", default=None, metavar="DATE", help="Started before DATE.")
@click.option("--limit", type=click.IntRange(1, None), default=None,
              help="Print at most N rows [default: all].")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of rows.")
def find(root: str, where: tuple[str, ...], state: str | None, script: str | None,
         since: str | None, until: str | None, limit: int | None, as_json: bool) -> None:
    """Archived sessions under ROOT matching filters, from the catalog alone.

    \b
    Example: session-archive find /data/runs --where ARGS.lr=0.01 --state FINISHED_SUCCESS --since 2026-10-01
    """
    from archive_tool.catalog.catalog import find as do_find

    rows = call(do_find, root, where, state, since, until, script, limit, config=as_json)
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    for r in rows:
        where_ = r["archive"] + (f"::{r['name']}" if r["frame"] >= 0 else "")
        click.echo(f"{r['started'] or '-':19} {r['state'] or '-':16} {r['script'] or '-':20} "
                   f"{human_bytes(r['bytes_in']):>9} {where_}")


@cli.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--merge", default=None, type=click.Choice(["auto", "weekly", "monthly", "all"]),
              help="Also merge the packs of each dir whose first session falls in the "
                   "same week or month (or all of a dir's packs) into one pack; 'auto': "
                   "consecutive packs of a dir until one holds --pack auto's targets "
                   "(1,000 sessions or 256 MiB): what nightly auto sweeps leave.")
@click.option("--drop", "drop", multiple=True, metavar="NAME|ID",
              help="Delete this session from its pack (repeatable). Its frame is gone "
                   "for good: this is retention, not restore.")
@click.option("--salvage", is_flag=True,
              help="Instead: read every pack frame by frame and replace each damaged one "
                   "by a clean pack of the sessions that still read; the damaged file is "
                   "kept as .<name>.damaged.")
@click.option("--execute", is_flag=True, help="Really repack (default: dry run, nothing changes).")
@click.option("--dry-run", "-n", "dry_run", is_flag=True,
              help="Only say what would be done (the default without --execute).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as one JSON object on stdout, nothing else.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing unless something failed.")
@click.option("--list", "-v", "--verbose", "as_list", is_flag=True, help=LIST_HELP)
def repack(root: str, merge: str | None, drop: tuple[str, ...], salvage: bool, execute: bool,
           dry_run: bool, as_json: bool, quiet: bool, as_list: bool) -> None:
    """Rewrite packs under ROOT without the sessions restored from them, merge small packs.

    A session whose dir exists again beside its pack holding the same bytes (restored
    with `unpack --session`) is dropped from the pack; so is a session named by --drop.
    Frames are copied still compressed; the new pack is verified like `verify`, made
    durable and linked under a new name, the catalog updated, and only then the old pack
    unlinked. Dry run unless --execute.

    \b
    Example: session-archive repack /data/runs --merge monthly --execute
    Merging: --merge monthly turns a month's daily packs of a dir into 2026-11.pack.tar.zst.
    """
    from archive_tool.retention.repack import repack as do_repack

    if dry_run and execute:
        raise BadInput("--dry-run and --execute contradict each other; give one")
    if execute:
        reconcile_catalog(root)
    planned: list[dict] = []

    def text(g: dict) -> str:
        verb = "repacked" if execute else "would repack"
        into = (f" into {g['new']}" if g["new"] else f" (kept: {g['reuse']})" if g["reuse"]
                else " into a new pack" if g["kept"] else " (nothing kept: removed)")
        return "\n".join([f"{verb} {', '.join(os.path.basename(p) for p in g['packs'])} in "
                          f"{g['dir']}{into}: {human_count(g['kept'])} kept, "
                          f"{human_count(len(g['dropped']))} dropped"]
                         + [f"  drop {d['session']} ({d['pack']}): {d['reason']}"
                            for d in g["dropped"]])

    def show(g: dict) -> None:
        if quiet or as_json:
            return
        if execute:
            click.echo(text(g))
        else:  # a dry run: summed up at the end (--list: every group)
            planned.append(g)

    s = call(do_repack, root, merge=merge, drop=drop, dry_run=not execute, on_group=show,
              salvage=salvage)
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
    elif not quiet:
        echo_items(planned, s["root"], full=as_list, path=lambda g: g["dir"],
                   size=lambda g: g["bytes_kept"], line=text, noun="groups")
        c, g = human_count, len(s["groups"])
        click.echo(f"{'' if execute else 'dry run: '}{c(g)} group{'' if g == 1 else 's'}; "
                   f"packs {c(s['packs_read'])} read, {c(s['packs_written'])} written, "
                   f"{c(s['packs_removed'])} removed; sessions {c(s['kept'])} kept, "
                   f"{c(s['dropped'])} dropped; {human_bytes(s['bytes_before'])} -> "
                   f"{human_bytes(s['bytes_after'])} in {s['elapsed']:.1f} s")
        if not execute:
            click.echo("Nothing was changed; add --execute to repack.")
    for w in s["warnings"]:
        click.echo(f"warning: {w}", err=True)
    for f in s["failures"][:20]:
        click.echo(f"failed: {f['path']}: {f['reason']}", err=True)
    if s["failed"]:
        raise Failed(f"{s['failed']} failed")
