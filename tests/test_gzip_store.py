"""tar.gz archives store what deflate cannot shrink (PNG figures, compressed blobs) in
stored blocks instead of deflating them: the stream must stay one plain gzip member that
every reader opens, and the choice must never change a byte of what is restored."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archive_tool.engine import single
from archive_tool.engine.formats import compress_bytes, open_compressed_writer
from archive_tool.engine.restore import restore_one
from tests.conftest import SID, make_session, needs_gnu_tar, snapshot

PNG = b"\x89PNG\r\n\x1a\n"


def _text(n: int) -> bytes:
    line = b"epoch 12: loss=0.374438 acc=0.065122 lr=0.001\n"
    return (line * (n // len(line) + 1))[:n]


def _stored_verbatim(archive: bytes, data: bytes) -> bool:
    """*data* sits in *archive* as our stored blocks: each 65,535-byte piece right after
    its own block header, the first starting at the part's first byte. (zlib stores random
    data too, but in blocks of its own sizes that start wherever its buffer filled.)"""
    pos = -1
    for i in range(0, len(data), 0xFFFF):
        piece = data[i:i + 0xFFFF]
        block = struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF) + piece
        pos = archive.find(block, pos + 1)
        if pos < 0:
            return False
    return True


def test_gzip_stores_a_png_and_deflates_the_logs(tmp_path: Path) -> None:
    png = PNG + os.urandom(30_000)
    log = _text(50_000)
    out = compress_bytes([b"h" * 512, log, b"h" * 512, png, b"\0" * 1024], "tar.gz")
    assert _stored_verbatim(out, png)
    assert not _stored_verbatim(out, log)
    assert gzip.decompress(out) == b"h" * 512 + log + b"h" * 512 + png + b"\0" * 1024
    # Nothing is lost by storing: smaller than deflating the PNG would have made it.
    plain = zlib.compressobj(1, zlib.DEFLATED, 31)
    whole = plain.compress(b"h" * 512 + log + b"h" * 512 + png + b"\0" * 1024) + plain.flush()
    assert len(out) <= len(whole)


def test_gzip_samples_big_unknown_blobs_but_deflates_compressible_ones() -> None:
    noise = os.urandom(200_000)  # no magic: found by the sample
    floats = _text(200_000)
    out = compress_bytes([noise, floats], "tar.gz")
    assert _stored_verbatim(out, noise)
    assert not _stored_verbatim(out, floats)
    assert gzip.decompress(out) == noise + floats


def test_small_parts_are_never_stored() -> None:
    small = PNG + os.urandom(3000)  # below the size where a flush pays
    out = compress_bytes([small], "tar.gz")
    assert not _stored_verbatim(out, small)
    assert gzip.decompress(out) == small


_parts = st.lists(
    st.one_of(
        st.binary(max_size=600),
        st.integers(0, 150_000).map(lambda n: PNG + os.urandom(n)),
        st.integers(0, 150_000).map(os.urandom),
        st.integers(0, 150_000).map(_text),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(parts=_parts, level=st.sampled_from([1, 6, 9]))
def test_any_mix_of_stored_and_deflated_parts_decodes_exactly(parts, level) -> None:
    data = b"".join(parts)
    one_shot = compress_bytes(parts, "tar.gz", level)
    assert zlib.decompress(one_shot, 31) == data  # one member: zlib alone reads all of it
    assert gzip.decompress(one_shot) == data
    raw = io.BytesIO()
    w = open_compressed_writer(raw, "tar.gz", level)
    for p in parts:
        w.write(p)
    w.close()
    assert not raw.closed
    assert raw.getvalue() == one_shot  # the streaming writer makes the same stream


@pytest.mark.parametrize("in_memory", [True, False])
def test_session_with_figures_round_trips_and_gnu_tools_read_it(
        tmp_path: Path, in_memory: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_gnu_tar()
    if not in_memory:
        monkeypatch.setattr(single, "IN_MEMORY_LIMIT", 0)
    src = make_session(tmp_path / "runs", f"{SID}-main")
    (src / "plot.png").write_bytes(PNG + os.urandom(40_000))
    blob = os.urandom(300_000)
    (src / "weights.bin").write_bytes(blob)
    (src / "results.csv").write_bytes(_text(90_000))
    before = snapshot(src)
    archive = single.archive_one(src, "tar.gz")
    assert _stored_verbatim(archive.read_bytes(), blob)
    assert subprocess.run(["gzip", "-t", str(archive)]).returncode == 0
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(out)], check=True)
    assert snapshot(out / src.name) == before
    restore_one(archive)
    assert snapshot(src) == before


def _gzipfile_reads(data: bytes) -> bytes | None:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            return f.read()
    except (OSError, EOFError, zlib.error):
        return None


_one = gzip.compress(b"epoch 1\n" * 900 + os.urandom(700), mtime=0)


@pytest.mark.parametrize("data", [
    _one, _one + _one, _one + b"\0" * 600,  # read: two members; NUL padding as gzip allows
    _one[:-1], _one[:-8], _one[:40], _one + b"x", _one + b"\0\0x",  # refused: cut, garbage
    _one[:-6] + bytes([_one[-6] ^ 1]) + _one[-5:],  # refused: CRC32 flipped
], ids=["one", "two-members", "nul-padding", "cut-1", "cut-trailer", "cut-40", "garbage",
        "garbage-after-nul", "crc-flip"])
def test_in_memory_verify_reads_gzip_exactly_as_gzipfile_does(data: bytes) -> None:
    from archive_tool.engine.formats import decompress_bytes

    want = _gzipfile_reads(data)
    try:
        got = decompress_bytes(data, "tar.gz")
    except (OSError, EOFError, zlib.error):
        got = None
    assert got == want


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz", "tar.xz"])
@pytest.mark.parametrize("cut", [1, 2, 4, 8])
def test_in_memory_verify_refuses_an_archive_cut_in_its_trailer(fmt: str, cut: int) -> None:
    """The last bytes of a stream are its checksum/length trailer: the payload is complete
    without them, so only a reader that reaches the end notices. tar.zst cut by 1-4 bytes
    passed the in-memory verify before issue 15 (a raw read(n) stopped short of the end)."""
    from archive_tool.engine.formats import compress_bytes, decompress_bytes

    tar = _text(40_000) + os.urandom(9_000)
    packed = compress_bytes([tar], fmt)
    assert decompress_bytes(packed, fmt, max_size=len(tar)) == tar
    with pytest.raises(Exception):  # noqa: B017,PT011 - each codec has its own error type
        decompress_bytes(packed[:-cut], fmt, max_size=len(tar))


@pytest.mark.parametrize("chunk", [1, 7, 4096, 128 << 10])
@pytest.mark.parametrize("data", [
    _one, _one + _one, _one + b"\0" * 600, b"",
    _one[:-1], _one[:-8], _one[:40], _one + b"x", _one + b"\0\0x", _one + b"\x1f",
    _one[:-6] + bytes([_one[-6] ^ 1]) + _one[-5:],
], ids=["one", "two-members", "nul-padding", "empty", "cut-1", "cut-trailer", "cut-40",
        "garbage", "garbage-after-nul", "half-magic", "crc-flip"])
def test_streaming_gzip_reader_reads_exactly_as_gzipfile_does(data: bytes, chunk: int) -> None:
    from archive_tool.engine.formats import GzipMembersReader

    want = _gzipfile_reads(data)
    for size in (-1, 1, 5000):
        r = GzipMembersReader(io.BytesIO(data), chunk=chunk)
        try:
            got = (r.read(-1) if size < 0
                   else b"".join(iter(lambda r=r, size=size: r.read(size), b"")))
        except (OSError, EOFError, zlib.error):
            got = None
        assert got == want, (size, chunk)
