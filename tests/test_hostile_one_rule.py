"""verify, show and unpack apply one member rule: an archive one of them refuses, all of
them refuse, naming the member (never our temp dir)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _tar(path: Path, members: list[tuple[str, bytes | None]], pax: bool = False) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name.replace("\0", ""))
            if "\0" in name:  # only a PAX record can carry a NUL into the name
                ti.pax_headers = {"path": name}
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


CASES = {
    "duplicate name": [("s", None), ("s/a.txt", b"one"), ("s/a.txt", b"two")],
    "file then dir of the same name": [("s", None), ("s/x", b"file"), ("s/x/y", b"below a file")],
    "duplicate dir": [("s", None), ("s/d", None), ("s/d", None)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_verify_show_and_unpack_refuse_alike(tmp_path: Path, case: str) -> None:
    archive = _tar(tmp_path / "bad.tar", CASES[case])
    r = run_cli("verify", archive)
    assert r.returncode == 1 and b"BAD" in r.stdout, (r.stdout, r.stderr)
    r = run_cli("show", archive)
    assert r.returncode != 0 and r.stderr.startswith(b"Error: "), (r.stdout, r.stderr)
    r = run_cli("unpack", archive, "--dest", tmp_path / "out")
    assert r.returncode != 0 and r.stderr.startswith(b"Error: "), r.stderr
    assert b".restore-" not in r.stderr and b"Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nul_in_a_pax_name_is_refused_by_all_three(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "nul.tar", [("s", None), ("s/a\0b.txt", b"x")], pax=True)
    for cmd in (["verify", archive], ["show", archive],
                ["unpack", archive, "--dest", tmp_path / "out"]):
        r = run_cli(*cmd)
        assert r.returncode != 0 and b"Traceback" not in r.stderr, (cmd, r.stderr)
    assert not (tmp_path / "out").exists()


def test_pax_header_that_stalls_tarfiles_regex_is_refused_fast(tmp_path: Path) -> None:
    """CVE-2024-6232: on Python < 3.11.10 a long digit run in a PAX header made tarfile's
    parsing regex backtrack for minutes; interpreters with the fix parse it quickly."""
    import time

    archive = tmp_path / "redos.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("s/a.txt")
        ti.pax_headers = {"comment": "1" * 200_000}  # ~70 s of regex unguarded
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    t0 = time.monotonic()
    r = run_cli("verify", archive)
    assert time.monotonic() - t0 < 20, "tarfile's PAX regex was not guarded"
    assert b"Traceback" not in r.stderr, r.stderr


def test_check_pax_records_accepts_real_headers_and_refuses_junk() -> None:
    from archive_tool.engine.read import check_pax_records

    ok = tarfile.TarInfo("x" * 300).tobuf(tarfile.PAX_FORMAT)  # a long name: a PAX record
    size = int(ok[124:136].rstrip(b"\0 "), 8)
    assert check_pax_records(ok[512:512 + size]) is None
    assert check_pax_records(b"30 mtime=1700000000.123456789\n") is None
    assert check_pax_records(b"5 a=\n") is None
    assert check_pax_records(b"99 path=x\n") is not None  # length past the end
    assert check_pax_records(b"abc path=x\n") is not None
    assert check_pax_records(b"12 pathx\n") is not None  # no "="
    assert check_pax_records(b"41 comment=" + b"1" * 29 + b"\n") is None
    assert check_pax_records(b"45 comment=" + b"1" * 33 + b"\n") is not None
