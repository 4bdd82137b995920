"""Small archives are read whole and decoded in one call before any member is read; big
ones, or small ones that decode to more than the bound, stream. Both must restore the
same bytes, and a damaged small archive must be refused before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from archive_tool.engine import formats, read, single
from archive_tool.engine.restore import restore_one
from archive_tool.errors import CorruptArchive
from tests.conftest import FORMATS, SID, make_session, snapshot


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("path", ["whole", "tar-too-big", "archive-too-big"])
def test_small_and_streamed_reads_restore_the_same_session(
        tmp_path: Path, fmt: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_session(tmp_path, f"{SID}-main")
    (src / "big.bin").write_bytes(os.urandom(20_000))
    before = snapshot(src)
    archive = single.archive_one(src, fmt)
    if path == "tar-too-big":  # decodes to more than the bound: rewound and streamed
        monkeypatch.setattr(read, "WHOLE_TAR_MAX", 4096)
    elif path == "archive-too-big":
        monkeypatch.setattr(read, "WHOLE_ARCHIVE_MAX", 100)
    restore_one(archive)
    assert snapshot(src) == before
    info = read.verify_archive(archive)  # verify takes the same path
    assert info.files == sum(1 for v in before.values() if v[0] == "f")


@pytest.mark.parametrize("fmt", ["tar.zst", "tar.gz", "tar.xz"])
def test_damaged_small_archive_is_refused_before_a_member_is_written(
        tmp_path: Path, fmt: str) -> None:
    src = make_session(tmp_path, f"{SID}-main")
    archive = single.archive_one(src, fmt)
    data = archive.read_bytes()
    archive.write_bytes(data[:-3])  # inside the checksum trailer: every member is intact
    with pytest.raises(CorruptArchive):
        restore_one(archive)
    assert not src.exists()
    assert sorted(os.listdir(tmp_path)) == [archive.name]  # no temp dir, no partial tree


def test_zstd_frame_declaring_more_than_the_bound_is_not_decoded_in_one_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # zstandard's one-call decompress allocates the size a frame header declares, whatever
    # the bound: a 10 KB frame declaring 300 MB took 300 MB of RSS.
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(8 << 20))
    calls = []
    real = formats._zstd_one()

    class Spy:
        def decompress(self, *a, **kw):
            calls.append(a)
            return real.decompress(*a, **kw)

    monkeypatch.setattr(formats, "_zstd_one", Spy)
    with pytest.raises(formats.OutputTooBig):
        formats.decompress_bytes(frame, "tar.zst", max_size=1 << 20)
    assert calls == []
    assert formats.decompress_bytes(frame, "tar.zst", max_size=8 << 20) == bytes(8 << 20)
    assert len(calls) == 1


def test_codecs_round_trip_from_many_threads_at_once() -> None:
    """A Dask worker runs tasks in threads: the reused zstd contexts are per thread
    (python-zstandard's objects must not be shared by threads in flight)."""
    from concurrent.futures import ThreadPoolExecutor

    def job(k: int) -> bool:
        data = os.urandom(3000) + bytes([k]) * (200_000 + k)
        ok = True
        for fmt in ("tar.zst", "tar.gz"):
            for _ in range(15):
                packed = formats.compress_bytes([data[:1000], data[1000:]], fmt)
                ok &= formats.decompress_bytes(packed, fmt, max_size=len(data)) == data
        return ok

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(job, range(16)))
