"""`--level` is the chosen codec's own level (issue 26): zstd 1..19 (default 3), gzip 1..9
(default 1), xz 0..9 (default 1), tar none. One rule for archive, sweep, sweep --pack,
compress, report, the API's compresslevel and the decorator's SESSION.ARCHIVE_LEVEL."""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from archive_tool.cli import cli
from archive_tool.errors import BadArgument
from archive_tool.levels import LEVELS
from tests.conftest import SID, make_session, needs_gnu_tar, needs_zstd, snapshot

CODECS = ["tar.zst", "tar.gz", "tar.xz"]
TAR_FLAG = {"tar.zst": ["-I", "zstd"], "tar.gz": ["-z"], "tar.xz": ["-J"]}
NAME = f"{SID}-main"


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _range_text(fmt: str) -> str:
    lv = LEVELS[fmt]
    assert lv is not None
    return f"{lv.tool} levels {lv.low}..{lv.high} (default {lv.default})"


def _session(tmp_path: Path) -> Path:
    d = make_session(tmp_path / "FINISHED_SUCCESS")
    # Compressible text large enough for the levels to differ, small enough for the
    # in-memory path.
    words = [f"loss={i * 0.001:.4f} step={i} lr=3e-4" for i in range(6000)]
    (d / "logs" / "train.log").write_text("\n".join(words))
    return d


def _archive(src: Path, fmt: str, *level: object) -> bytes:
    """`archive --keep-source` of *src*; returns the archive's bytes and removes it, so
    the next call can write the same name."""
    r = invoke("archive", src, "-f", fmt, "--keep-source", *level)
    assert r.exit_code == 0, r.output
    out = src.parent / f"{src.name}.{fmt}"
    data = out.read_bytes()
    out.unlink()
    return data


def _levels(fmt: str) -> list[int]:
    lv = LEVELS[fmt]
    assert lv is not None
    return [lv.low, lv.default, lv.high]


@needs_gnu_tar
@needs_zstd
@pytest.mark.parametrize("fmt,level", [(f, n) for f in CODECS for n in _levels(f)])
def test_each_codecs_min_default_and_max_level_write_archives_gnu_tar_opens(
        tmp_path: Path, fmt: str, level: int) -> None:
    src = _session(tmp_path)
    before = snapshot(src)
    data = _archive(src, fmt, "--level", level)
    arch = tmp_path / f"a.{fmt}"
    arch.write_bytes(data)
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", *TAR_FLAG[fmt], "-xf", arch, "-C", dest], check=True)
    assert snapshot(dest / NAME) == before
    if fmt == "tar.zst":
        subprocess.run(["zstd", "-tq", arch], check=True)


@pytest.mark.parametrize("fmt", CODECS)
def test_no_level_is_the_default_help_states_and_min_and_max_differ(
        tmp_path: Path, fmt: str) -> None:
    src = _session(tmp_path)
    low, default, high = _levels(fmt)
    by_default = _archive(src, fmt)
    assert by_default == _archive(src, fmt, "--level", default)
    # The level reaches the codec (sizes need not be monotone: xz 0 beat xz 9 here once).
    assert _archive(src, fmt, "--level", low) != _archive(src, fmt, "--level", high)


def _tar_of(data: bytes, fmt: str) -> bytes:
    if fmt == "tar.zst":
        return zstandard.ZstdDecompressor().decompress(data)
    return lzma.decompress(data) if fmt == "tar.xz" else gzip.decompress(data)


@pytest.mark.parametrize("fmt,level", [("tar.zst", 1), ("tar.zst", 9), ("tar.zst", 19),
                                       ("tar.xz", 0), ("tar.xz", 9)])
def test_level_n_is_the_codecs_own_level_n_not_the_old_mapped_scale(
        tmp_path: Path, fmt: str, level: int) -> None:
    # Before issue 26 `--level 9` with tar.zst wrote zstd 19 and `--level 1` zstd 3. Now the
    # archive is byte for byte what the codec's own level N writes for the same tar.
    src = _session(tmp_path)
    data = _archive(src, fmt, "--level", level)
    tar = _tar_of(data, fmt)
    if fmt == "tar.zst":
        ref = zstandard.ZstdCompressor(level=level, write_checksum=True,
                                       write_content_size=True).compress(tar)
    else:
        ref = lzma.compress(tar, preset=level)
    assert data == ref


# ------------------------------------------------------------------- refused levels

def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for i in range(2):
        make_session(root / "exp_out" / "FINISHED_SUCCESS", f"{SID[:-4]}AAA{i}-main")
    return root


def _bad_levels(fmt: str) -> list[int]:
    lv = LEVELS[fmt]
    assert lv is not None
    return [lv.low - 1, lv.high + 1]


def _commands(root: Path, fmt: str) -> list[list[object]]:
    session = root / "exp_out" / "FINISHED_SUCCESS" / f"{SID[:-4]}AAA0-main"
    return [
        ["archive", session, "-f", fmt],
        ["sweep", root, "--execute", "-f", fmt],
        ["sweep", root, "-n", "-f", fmt],
        ["compress", root / "exp_out" / "FINISHED_SUCCESS", "--execute", "-f", fmt],
        ["report", root, "-f", fmt, "--sample", "1"],
    ] + ([["sweep", root, "--execute", "--pack", "daily"]] if fmt == "tar.zst" else [])


@pytest.mark.parametrize("fmt", CODECS)
def test_out_of_range_level_is_one_line_exit_2_naming_the_range_and_writes_nothing(
        tmp_path: Path, fmt: str) -> None:
    root = _tree(tmp_path)
    before = snapshot(tmp_path)
    for cmd in _commands(root, fmt):
        for bad in _bad_levels(fmt):
            r = invoke(*cmd, "--level", bad)
            lines = r.stderr.strip().splitlines()
            assert r.exit_code == 2, (cmd, bad, r.output)
            assert lines == [f"Error: --level {bad} is out of range for {fmt}: "
                             f"{_range_text(fmt)}"], (cmd, r.stderr)
            assert snapshot(tmp_path) == before, cmd


def test_level_with_uncompressed_tar_is_refused_not_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = snapshot(tmp_path)
    for cmd in _commands(root, "tar")[:5]:
        r = invoke(*cmd, "--level", 1)
        assert r.exit_code == 2 and "--level does not apply to tar" in r.stderr, r.output
    assert snapshot(tmp_path) == before
    assert invoke("sweep", root, "--execute", "-f", "tar", "-q").exit_code == 0


def test_level_in_range_for_one_codec_is_refused_for_another(tmp_path: Path) -> None:
    # zstd 19 is valid, gzip 19 is not: the range follows --format.
    src = _session(tmp_path)
    r = invoke("archive", src, "-f", "tar.gz", "--keep-source", "--level", 19)
    assert r.exit_code == 2 and "gzip levels 1..9 (default 1)" in r.stderr
    assert not list(src.parent.glob("*.tar.*"))
    assert len(_archive(src, "tar.zst", "--level", 19)) > 0


@needs_gnu_tar
@needs_zstd
@pytest.mark.parametrize("level", [1, 19])
def test_pack_sweep_takes_zstd_levels_and_tar_reads_the_pack(tmp_path: Path, level: int) -> None:
    root = _tree(tmp_path)
    r = invoke("sweep", root, "--execute", "--pack", "daily", "--level", level, "-q")
    assert r.exit_code == 0, r.output
    packs = list(root.rglob("*.pack.tar.zst"))
    assert len(packs) == 1
    subprocess.run(["zstd", "-tq", packs[0]], check=True)
    names = subprocess.run(["tar", "-I", "zstd", "-tf", packs[0]], check=True,
                           capture_output=True, text=True).stdout
    assert f"{SID[:-4]}AAA0-main/logs/stdout.log" in names


# --------------------------------------------------------------------------- help

def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_command_with_level_shows_each_codecs_range_and_real_default() -> None:
    with_level = sorted(name for name, cmd in cli.commands.items()
                        if any("--level" in p.opts for p in cmd.params))
    assert {"archive", "compress", "report", "sweep"} <= set(with_level)
    for name in with_level:
        text = _flat(invoke(name, "--help").output)
        for fmt in CODECS:
            lv = LEVELS[fmt]
            assert lv is not None
            assert f"{fmt} {lv.low}..{lv.high} ({lv.tool}'s; default {lv.default})" in text, name
        assert "1..9 scale" not in text  # the old mapped scale is gone


def test_readme_states_the_same_ranges_and_defaults() -> None:
    readme = _flat((Path(__file__).parent.parent / "README.md").read_text())
    for fmt in CODECS:
        lv = LEVELS[fmt]
        assert lv is not None
        assert f"`{fmt}` {lv.low}..{lv.high}, default {lv.default}" in readme, fmt


# ---------------------------------------------------------------------------- API

@pytest.mark.parametrize("fmt", [*CODECS, "tar"])
def test_api_documented_default_compresslevel_1_stays_valid_for_every_format(
        tmp_path: Path, fmt: str) -> None:
    import scitex_session as stx

    src = make_session(tmp_path / "FINISHED_SUCCESS")
    out = stx.archive_session_dir(src, format=fmt, remove_src=False)  # compresslevel=1
    assert out.is_file() and out.name.endswith("." + fmt)


@pytest.mark.parametrize("fmt,bad", [("tar.zst", 20), ("tar.zst", 0), ("tar.gz", 10),
                                     ("tar.xz", -1), ("tar.gz", True), ("tar.zst", "3")])
def test_api_refuses_a_level_outside_the_codecs_range_before_writing(
        tmp_path: Path, fmt: str, bad: object) -> None:
    import scitex_session as stx

    src = make_session(tmp_path / "FINISHED_SUCCESS")
    before = snapshot(tmp_path)
    with pytest.raises(BadArgument, match="compresslevel"):
        stx.archive_session_dir(src, format=fmt, compresslevel=bad)
    with pytest.raises(ValueError):  # BadArgument is a ValueError, as API users catch
        stx.archive_existing(src.parent, format=fmt, dry_run=True, compresslevel=bad)
    assert snapshot(tmp_path) == before


def test_api_bulk_default_is_the_codecs_default(tmp_path: Path) -> None:
    import scitex_session as stx

    src = _session(tmp_path)
    ref = _archive(src, "tar.zst", "--level", 3)
    s = stx.archive_existing(src.parent, format="tar.zst", dry_run=False, workers=1)
    assert s["archived"] == 1
    assert (src.parent / f"{NAME}.tar.zst").read_bytes() == ref


# ------------------------------------------------------------------ the decorator

def test_decorator_archives_at_the_formats_default_unless_session_archive_level() -> None:
    from scitex_session._close import _configured_level

    assert _configured_level({}, "tar.zst") == 3  # not archive_session_dir's 1 (zstd 1)
    assert _configured_level({"SESSION": {"ARCHIVE_LEVEL": 19}}, "tar.zst") == 19
    assert _configured_level({"SESSION": {"ARCHIVE_FORMAT": "tar.gz"}}, "tar.gz") == 1
    with pytest.raises(BadArgument, match=r"SESSION.ARCHIVE_LEVEL 12 .* gzip levels 1..9"):
        _configured_level({"SESSION": {"ARCHIVE_LEVEL": 12}}, "tar.gz")


def _decorated(tmp_path: Path, yaml_text: str, deco: str = "") -> subprocess.CompletedProcess[str]:
    from tests.session_scripts.helpers import run_script, write_script

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "SESSION.yaml").write_text(yaml_text)
    script = write_script(tmp_path, "from scitex_session import session\n\n"
                                    f"@session{deco}\ndef main():\n    print('payload')\n"
                                    "    return 0\n\nif __name__ == '__main__':\n    main()\n")
    return run_script(script, cwd=tmp_path)


@pytest.mark.parametrize("yaml_text,deco", [
    ("ARCHIVE_FORMAT: tar.gz\nARCHIVE_LEVEL: 12\n", ""),
    ("ARCHIVE_LEVEL: 12\n", '(archive_format="tar.gz")'),  # the format from the decorator
])
def test_session_archive_level_out_of_range_fails_at_start_in_one_line(
        tmp_path: Path, yaml_text: str, deco: str) -> None:
    r = _decorated(tmp_path, yaml_text, deco)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "SESSION.ARCHIVE_LEVEL 12 is out of range for tar.gz: gzip levels 1..9" in r.stderr
    assert "payload" not in r.stdout and not (tmp_path / "exp_out").exists()


@needs_zstd
def test_session_archive_level_in_range_is_used_for_the_runs_archive(tmp_path: Path) -> None:
    from tests.session_scripts.helpers import only_session

    r = _decorated(tmp_path, "ARCHIVE_FORMAT: tar.zst\nARCHIVE_LEVEL: 19\n")
    assert r.returncode == 0, r.stderr
    arch = only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS")
    data = arch.read_bytes()
    tar = zstandard.ZstdDecompressor().decompress(data)
    assert data == zstandard.ZstdCompressor(level=19, write_checksum=True,
                                            write_content_size=True).compress(tar)
    subprocess.run(["zstd", "-tq", arch], check=True)
