"""Commands on the catalog of a root: catalog (--rebuild), find."""

from __future__ import annotations

import json

import click

from archive_tool.cli import Failed, _call, cli
from archive_tool.units import human_bytes


@cli.command("catalog")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--rebuild", is_flag=True, required=True,
              help="Rebuild ROOT/.session-archive/catalog.sqlite from the packs and session "
                   "archives under ROOT alone (replaces the old one atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def catalog_cmd(root: str, rebuild: bool, as_json: bool) -> None:
    """Rebuild the catalog of ROOT (one row per archived session).

    \b
    Example: session-archive catalog /data/runs --rebuild
    """
    from archive_tool.bulk.catalog import rebuild as do_rebuild

    res = _call(do_rebuild, root)
    if as_json:
        click.echo(json.dumps(res, sort_keys=True))
    else:
        click.echo(f"catalog {res['catalog']}: {res['sessions']} sessions from {res['files']} "
                   f"files in {res['elapsed']:.1f} s")
    for e in res["errors"]:
        click.echo(f"failed: {e}", err=True)
    if res["errors"]:
        raise Failed(f"{len(res['errors'])} files could not be read")


@cli.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Config key (flattened: ARGS.lr) =, !=, <, <=, >, >= a value; repeatable.")
@click.option("--state", default=None, help="FINISHED_SUCCESS, FINISHED_ERROR or FINISHED.")
@click.option("--script", default=None, help="The <script>_out dir name.")
@click.option("--since", default=None, metavar="DATE", help="Started on or after DATE.")
@click.option("--until", default=None, metavar="DATE", help="Started before DATE.")
@click.option("--limit", type=click.IntRange(1, None), default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of rows.")
def find(root: str, where: tuple[str, ...], state: str | None, script: str | None,
         since: str | None, until: str | None, limit: int | None, as_json: bool) -> None:
    """Archived sessions under ROOT matching filters, from the catalog alone.

    \b
    Example: session-archive find /data/runs --where ARGS.lr=0.01 --state FINISHED_SUCCESS --since 2026-10-01
    """
    from archive_tool.bulk.catalog import find as do_find

    rows = _call(do_find, root, where, state, since, until, script, limit, config=as_json)
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    for r in rows:
        where_ = r["archive"] + (f"::{r['name']}" if r["frame"] >= 0 else "")
        click.echo(f"{r['started'] or '-':19} {r['state'] or '-':16} {r['script'] or '-':20} "
                   f"{human_bytes(r['bytes_in']):>9} {where_}")
