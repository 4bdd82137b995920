"""One flag vocabulary across the commands (issue 26): help on every option, --dry-run/-n
beside --execute, --older-than AGE everywhere, `archive` (with `pack` kept hidden),
`catalog` alone prints its state."""

from __future__ import annotations

import click
import pytest

from archive_tool.cli import cli


def _commands() -> list[tuple[str, click.Command]]:
    return sorted(cli.commands.items())


@pytest.mark.parametrize("name,cmd", _commands(), ids=[n for n, _ in _commands()])
def test_every_option_of_every_command_has_help_text(name: str, cmd: click.Command) -> None:
    ctx = click.Context(cmd, info_name=name)
    missing = [p.opts[0] for p in cmd.get_params(ctx)
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert missing == [], f"{name}: options without help: {missing}"
    assert (cmd.help or "").strip(), f"{name} has no help"


CHANGING = ["sweep", "compress", "extract", "prune", "repack"]


@pytest.mark.parametrize("name", CHANGING)
def test_every_command_that_changes_the_tree_takes_dry_run_n_and_execute(name: str) -> None:
    cmd = cli.commands[name]
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    assert {"--dry-run", "-n", "--execute"} <= opts


@pytest.mark.parametrize("name", ["sweep", "compress", "report", "prune"])
def test_every_age_filter_is_older_than_with_units(name: str) -> None:
    cmd = cli.commands[name]
    opt = next(p for p in cmd.params if "--older-than" in p.opts)
    assert "30m" in opt.help and not opt.hidden
    hidden = [p for p in cmd.params if "--older-than-days" in p.opts]
    assert all(p.hidden for p in hidden)  # the old spelling: still accepted, not shown


def test_sweep_older_than_filters_like_older_than_days(tmp_path) -> None:
    import os
    import time

    from tests.conftest import make_session, run_cli

    parent = tmp_path / "root" / "train_out" / "FINISHED_SUCCESS"
    old = make_session(parent, "2026Y-11M-23D-10h00m00s_AAAA-main")
    make_session(parent, "2026Y-11M-23D-11h00m00s_BBBB-main")
    past = time.time() - 3 * 3600
    for dirpath, dirnames, filenames in os.walk(old, topdown=False):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (past, past), follow_symlinks=False)
    os.utime(old, (past, past))
    for age, n in (("2h", 1), ("30m", 1), ("4h", 0), ("0.1", 1)):
        r = run_cli("sweep", tmp_path / "root", "-n", "--older-than", age, "--json")
        assert r.returncode == 0, r.stderr
        assert f'"candidates": {n}'.encode() in r.stdout, (age, r.stdout)
    r = run_cli("sweep", tmp_path / "root", "--older-than-days", "0.1", "--json")
    assert r.returncode == 0 and b'"candidates": 1' in r.stdout
    r = run_cli("report", tmp_path / "root", "--older-than", "2h", "--sample", "0")
    assert r.returncode == 0, r.stderr
    for bad in (["--older-than", "soon"], ["--older-than", "1d", "--older-than-days", "1"],
                ["-n", "--execute"]):
        r = run_cli("sweep", tmp_path / "root", *bad)
        assert r.returncode == 2 and b"Traceback" not in r.stderr, (bad, r.stderr)
    assert old.is_dir()


def test_archive_is_the_one_session_command_and_pack_still_works_hidden(tmp_path) -> None:
    from tests.conftest import make_session, run_cli

    parent = tmp_path / "FINISHED_SUCCESS"
    a = make_session(parent, "2026Y-11M-23D-10h00m00s_AAAA-main")
    b = make_session(parent, "2026Y-11M-23D-11h00m00s_BBBB-main")
    assert run_cli("archive", a).returncode == 0
    assert run_cli("pack", b).returncode == 0  # the old name, for existing cron lines
    assert sorted(p.name for p in parent.iterdir()) == [a.name + ".tar.zst",
                                                        b.name + ".tar.zst"]
    listing = run_cli("--help").stdout.decode()
    assert "  archive " in listing and "  pack " not in listing


def test_catalog_alone_prints_its_state(tmp_path) -> None:
    from tests.conftest import run_cli
    from tests.test_pack import _tree

    root = tmp_path / "root"
    _tree(root, 6)
    r = run_cli("catalog", root)
    assert r.returncode == 0 and b"no catalog at" in r.stdout
    assert run_cli("sweep", root, "--pack", "daily", "--execute", "-q").returncode == 0
    r = run_cli("catalog", root)
    assert r.returncode == 0 and b"6 sessions in 2 packs and 0 archives" in r.stdout, r.stdout
    import json

    st = json.loads(run_cli("catalog", root, "--json").stdout)
    assert (st["sessions"], st["packs"], st["exists"]) == (6, 2, True)


def test_level_is_one_option_in_each_codecs_own_range_on_every_command() -> None:
    # Each codec's range and real default, from the one table (levels.py); no command
    # hard-codes a default, which would be a level of the wrong codec for some --format.
    from archive_tool.cli.common import LEVEL_HELP

    assert "tar.zst 1..19 (zstd's; default 3)" in LEVEL_HELP
    assert "tar.gz 1..9 (gzip's; default 1)" in LEVEL_HELP
    assert "tar.xz 0..9 (xz's; default 1)" in LEVEL_HELP
    for name in ("sweep", "compress", "archive", "report"):
        opt = next(p for p in cli.commands[name].params if "--level" in p.opts)
        assert opt.help == LEVEL_HELP and opt.default is None
