"""The command line the decorator builds from a function's signature."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import pytest

import scitex_session as stx
from scitex_session._cli import build_parser
from tests.session_scripts.helpers import run_script, write_script


def _every_type(
    count: int,
    data_path: Path,
    rate: float = 0.5,
    name: str = "run",
    out: Path = Path("out"),
    dry_run: bool = False,
    cache: bool = True,
    mode: Literal["fast", "slow"] = "fast",
    level: Literal[1, 2, 3] = 1,
    limit: Optional[int] = None,  # noqa: UP045 - the spelling users write
    size: int | None = None,
    ids: list[int] = [1, 2],  # noqa: B006 - default shown in help, never mutated
    tags: list[str] | None = None,
    CONFIG=stx.INJECTED,  # noqa: N803
    logger=stx.INJECTED,
):
    """Process things.

    Second paragraph kept as written."""


def parse(*argv: str):
    return vars(build_parser(_every_type, stx.INJECTED).parse_args(list(argv)))


def test_required_parameters_and_defaults():
    ns = parse("--count", "3", "--data-path", "d.csv")
    assert ns == {"count": 3, "data_path": Path("d.csv"), "rate": 0.5, "name": "run",
                  "out": Path("out"), "dry_run": False, "cache": True, "mode": "fast",
                  "level": 1, "limit": None, "size": None, "ids": [1, 2], "tags": None}


def test_types_follow_hints():
    ns = parse("--count", "3", "--data-path", "x", "--rate", "1e-3", "--name", "n", "--out", "o",
               "--dry-run", "--no-cache", "--mode", "slow", "--level", "3", "--limit", "7",
               "--size", "9", "--ids", "4", "5", "6", "--tags", "a", "b")
    assert ns["count"] == 3 and isinstance(ns["count"], int)
    assert ns["rate"] == 1e-3 and ns["out"] == Path("o") and ns["data_path"] == Path("x")
    assert ns["dry_run"] is True and ns["cache"] is False
    assert ns["mode"] == "slow" and ns["level"] == 3
    assert ns["limit"] == 7 and ns["size"] == 9
    assert ns["ids"] == [4, 5, 6] and ns["tags"] == ["a", "b"]


def test_injected_parameters_are_not_options():
    ns = parse("--count", "1", "--data-path", "x")
    assert "CONFIG" not in ns and "logger" not in ns


@pytest.mark.parametrize("argv", [
    ["--data-path", "x"],                                   # --count missing
    ["--count", "x1", "--data-path", "x"],                  # not an int
    ["--count", "1", "--data-path", "x", "--mode", "medium"],  # not a choice
    ["--count", "1", "--data-path", "x", "--level", "4"],
])
def test_bad_command_lines_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_shows_docstring_kebab_options_short_forms_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "Process things.\n\n    Second paragraph" not in text  # dedented by getdoc
    assert "Process things." in text and "Second paragraph kept as written." in text
    for opt in ("--data-path", "--dry-run", "--no-cache", "--count INT", "-r FLOAT, --rate FLOAT"):
        assert opt in text, opt
    assert "(default: 0.5)" in text and "(required)" in text
    assert "{fast,slow}" in text


def test_decorated_script_help_exits_zero_without_creating_a_run_dir(tmp_path):
    script = write_script(tmp_path, """
        import scitex_session as stx

        @stx.session
        def main(input_file: str, threshold: float = 0.5, CONFIG=stx.INJECTED):
            '''Analyze data file.'''
            return 0

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script, "--help")
    assert r.returncode == 0
    assert "Analyze data file." in r.stdout and "--input-file" in r.stdout
    assert not (tmp_path / "exp_out").exists()
    r = run_script(script)  # missing required option
    assert r.returncode == 2 and "--input-file" in r.stderr
    assert not (tmp_path / "exp_out").exists()


def test_called_with_arguments_just_calls_the_function(tmp_path):
    @stx.session
    def add(a: int, b: int = 2):
        return a + b

    assert add(1, b=5) == 6
    assert add.__name__ == "add"


def test_run_passes_parsed_namespace_and_returns_exit_status(tmp_path):
    script = write_script(tmp_path, """
        import argparse, sys
        import scitex_session as stx

        def main(args):
            print("K", args.k)
            return 4

        def parse_args():
            p = argparse.ArgumentParser()
            p.add_argument("--k", type=int, default=1)
            return p.parse_args()

        if __name__ == "__main__":
            sys.exit(stx.run(main, parse_args=parse_args))
    """)
    r = run_script(script, "--k", "9")
    assert r.returncode == 4
    assert "K 9" in r.stdout
    assert len(list((tmp_path / "exp_out" / "FINISHED_ERROR").iterdir())) == 1
