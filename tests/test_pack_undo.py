"""``extract --undo`` of a ``sweep --pack`` run: the manifest names each session's pack,
undo restores the sessions from their frames, the packs are never rewritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archive_tool.pack import packfile
from archive_tool.sweep.runlog import list_runs, read_run
from tests.conftest import crash_at, run_cli, snapshot
from tests.test_pack import DAY, _packs, _tree

SUCCESS = "train_out/FINISHED_SUCCESS"
ERROR = "train_out/FINISHED_ERROR"


def _state(name: str) -> str:
    # _tree puts every 4th session (S003, S007) into FINISHED_ERROR.
    return ERROR if name[-8:-5] in ("003", "007") else SUCCESS


def _sessions(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*-main") if p.is_dir())


def _pack_files(root: Path) -> dict[Path, tuple]:
    """Each pack's bytes and the stat fields a rewrite would change."""
    out = {}
    for p in _packs(root):
        st = p.lstat()
        out[p] = (p.read_bytes(), st.st_ino, st.st_mtime_ns, st.st_mode)
    return out


def _manifest(root: Path, run: str) -> list[dict]:
    return read_run(str(root / ".session-archive" / "runs" / f"{run}.jsonl"))


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert b"Traceback" not in r.stderr and b"Traceback" not in r.stdout


def test_pack_sweep_then_undo_gives_back_every_session_and_repack_then_drops_them(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 8)
    r = run_cli("sweep", root, "--pack", "daily", "--execute", "--json", "-j", "1")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["archived"] == 8 and s["packs"] == 2 and _sessions(root) == []
    [run] = list_runs(str(root))
    assert s["run"] == run
    # One line per packed session, naming its pack relative to the root, which holds it.
    recs = _manifest(root, run)
    assert sorted(os.path.basename(x["session"]) for x in recs) == sorted(before)
    for x in recs:
        name = os.path.basename(x["session"])
        assert x["pack"] == f"{_state(name)}/2026-11-23.pack.tar.zst"
        assert x["archive"] == str(root / x["pack"]) and x["status"] == "archived"
        with packfile.Pack(x["archive"]) as p:
            assert name in p.names
            assert x["bytes"] == p.frames[p.names.index(name)].csize
    packs = _pack_files(root)

    r = run_cli("extract", root, "--undo", "last")  # dry run: nothing changes
    assert r.returncode == 0 and b"would restore 8 archives" in r.stdout, r.stderr
    assert _sessions(root) == []
    r = run_cli("extract", root, "--undo", "last", "--execute", "--json")
    assert r.returncode == 0, r.stderr
    u = json.loads(r.stdout)
    assert (u["restored"], u["failed"], u["run"]) == (8, 0, run)
    assert _sessions(root) == sorted(f"{_state(n)}/{n}" for n in before)
    for name, snap in before.items():
        assert snapshot(root / _state(name) / name) == snap
    assert _pack_files(root) == packs  # the packs are only read

    # Undone again: every session is there, skipped, never overwritten.
    r = run_cli("extract", root, "--undo", run, "--execute", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["skipped"] == 8
    r = run_cli("repack", root, "--execute")  # every frame is now an identical dir
    assert r.returncode == 0, r.stderr
    assert _packs(root) == []
    for name, snap in before.items():
        assert snapshot(root / _state(name) / name) == snap


def test_undo_of_a_mixed_history_undoes_exactly_the_named_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    plain = _tree(root, 4, day="2026Y-11M-25D", script="plain")
    r = run_cli("sweep", root, "--execute", "-q", "-j", "1")  # per-session archives
    assert r.returncode == 0, r.stderr
    packed = _tree(root, 4)
    r = run_cli("sweep", root, "--pack", "daily", "--execute", "-q", "-j", "1")
    assert r.returncode == 0, r.stderr
    first, second = list_runs(str(root))
    assert not any("pack" in x for x in _manifest(root, first))
    assert all("pack" in x for x in _manifest(root, second))
    archives = sorted(root.glob("plain_out/*/*.tar.zst"))
    assert len(archives) == 4

    r = run_cli("extract", root, "--undo", "last", "--execute", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["restored"] == 4, r.stderr
    assert _sessions(root) == sorted(f"train_out/{_state(n).split('/')[1]}/{n}" for n in packed)
    assert sorted(root.glob("plain_out/*/*.tar.zst")) == archives  # the other run: untouched

    r = run_cli("extract", root, "--undo", first, "--execute", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["restored"] == 4, r.stderr
    assert not list(root.glob("plain_out/*/*.tar.zst"))
    for name, snap in plain.items():
        state = "FINISHED_ERROR" if name[-8:-5] == "003" else "FINISHED_SUCCESS"
        assert snapshot(root / "plain_out" / state / name) == snap
    for name, snap in packed.items():
        assert snapshot(root / _state(name) / name) == snap


def test_hostile_pack_lines_are_refused_and_nothing_outside_is_touched(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _tree(outside, 4, script="theirs")
    assert run_cli("sweep", outside, "--pack", "daily", "--execute", "-q").returncode == 0
    theirs = outside / "theirs_out" / "FINISHED_SUCCESS"
    their_pack = theirs / "2026-11-23.pack.tar.zst"
    _tree(root, 4)
    assert run_cli("sweep", root, "--pack", "daily", "--execute", "-q").returncode == 0
    ours = f"{SUCCESS}/2026-11-23.pack.tar.zst"
    name = f"{DAY}-10h00m00s_S000-main"  # in both packs
    # A symlinked pack and a symlinked dir, each below the root, leading to their pack.
    evil = root / "evil_out" / "FINISHED_SUCCESS"
    evil.mkdir(parents=True)
    os.symlink(their_pack, evil / "2026-11-23.pack.tar.zst")
    os.symlink(outside / "theirs_out", root / "link_out")
    before_outside = snapshot(outside)
    their_bytes = their_pack.read_bytes()

    def line(pack: str, session: Path, archive: str | None = None) -> str:
        return json.dumps({"session": str(session), "pack": pack, "status": "archived",
                           "archive": archive or os.path.join(root, pack), "bytes": 1})

    lines = [
        # Consistent with itself, but climbing out of the root.
        line(f"../outside/theirs_out/FINISHED_SUCCESS/{their_pack.name}",
             Path(f"{root}/../outside/theirs_out/FINISHED_SUCCESS/{name}")),
        line(f"{SUCCESS}/../../../outside/theirs_out/FINISHED_SUCCESS/{their_pack.name}",
             root / SUCCESS / name),
        line(str(their_pack), theirs / name, str(their_pack)),  # absolute, outside
        line(ours, theirs / name),  # our pack, their dir
        line(ours, root / SUCCESS / name, str(their_pack)),  # archive disagrees with pack
        line(f"evil_out/FINISHED_SUCCESS/{their_pack.name}", evil / name),
        line(f"link_out/FINISHED_SUCCESS/{their_pack.name}",
             root / "link_out" / "FINISHED_SUCCESS" / name),
    ]
    runs = root / ".session-archive" / "runs"
    (runs / "20990101T000000Z.jsonl").write_text("\n".join(lines) + "\n")
    r = run_cli("extract", root, "--undo", "20990101T000000Z", "--execute", "--json")
    _no_traceback(r)
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert (s["failed"], s["restored"]) == (7, 0)
    reasons = [f["reason"] for f in s["failures"]]
    # The symlinks are never followed: the symlinked dir is refused when the line is
    # planned (looked at by dir fds, untrusted.py), the symlinked pack when it is opened.
    assert sum("refused" in x for x in reasons) == 6
    assert sum("cannot open" in x for x in reasons) == 1
    assert len(r.stderr.splitlines()) == 8  # one line per failure + the total
    assert snapshot(outside) == before_outside
    assert their_pack.read_bytes() == their_bytes
    assert _sessions(root) == [] and [p.name for p in evil.iterdir()] == [their_pack.name]


def test_undo_of_a_run_whose_pack_is_gone_or_unreadable_fails_those_sessions_only(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 8)
    assert run_cli("sweep", root, "--pack", "daily", "--execute", "-q").returncode == 0
    gone = root / ERROR / "2026-11-23.pack.tar.zst"
    gone.unlink()
    r = run_cli("extract", root, "--undo", "last", "--execute")
    _no_traceback(r)
    assert r.returncode == 1
    err = r.stderr.decode().splitlines()
    assert len([x for x in err if x.startswith("failed: ") and "pack is gone" in x]) == 2
    assert err[-1] == "Error: 2 failed"
    for name, snap in before.items():
        if _state(name) == SUCCESS:
            assert snapshot(root / SUCCESS / name) == snap
        else:
            assert not (root / ERROR / name).exists()


def test_undo_of_a_run_whose_pack_is_damaged_fails_only_the_damaged_frames_session(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 8)
    assert run_cli("sweep", root, "--pack", "daily", "--execute", "-q").returncode == 0
    bad = root / ERROR / "2026-11-23.pack.tar.zst"
    os.truncate(bad, bad.stat().st_size - 4)  # the seek table's footer cut
    data = bytearray(bad.read_bytes())
    data[40] ^= 0xFF  # inside the first session's frame (issue 26: only it is lost)
    bad.write_bytes(bytes(data))
    r = run_cli("extract", root, "--undo", "last", "--execute", "--json")
    _no_traceback(r)
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert (s["restored"], s["failed"]) == (7, 1)
    assert all(f["path"].startswith(f"{bad}::") for f in s["failures"])
    assert "damaged" in s["failures"][0]["reason"]
    assert sum(x.startswith(b"failed: ") for x in r.stderr.splitlines()) == 1
    for name, snap in before.items():
        if _state(name) == SUCCESS or name != s["failures"][0]["path"].split("::")[1]:
            assert snapshot(root / (SUCCESS if _state(name) == SUCCESS else ERROR) / name) \
                == snap


_CRASH = crash_at("from archive_tool.sweep.packsweep import pack_sweep\n"
                  'pack_sweep(sys.argv[1], "daily", dry_run=False, workers=1)')


def test_a_session_a_crashed_run_left_packed_is_undone_by_the_run_that_resumed_it(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = _tree(root, 4)
    p = subprocess.run([sys.executable, "-c", _CRASH, str(root), "pack-published", "1"],
                       capture_output=True, timeout=120)
    assert p.returncode == 9, p.stderr  # the pack is published, its sources not deleted
    r = run_cli("sweep", root, "--pack", "daily", "--execute", "--json", "-j", "1")
    assert r.returncode == 0, r.stderr
    recs = _manifest(root, json.loads(r.stdout)["run"])
    assert {x["status"] for x in recs} >= {"resumed"}
    assert all(x["pack"].endswith(".pack.tar.zst") for x in recs)
    assert len(recs) == 4
    r = run_cli("extract", root, "--undo", "last", "--execute", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["restored"] == 4, r.stderr
    for name, snap in before.items():
        assert snapshot(root / _state(name) / name) == snap


def test_a_session_too_big_for_a_pack_gets_an_archive_line_and_undo_removes_that_archive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from archive_tool.engine import single
    from archive_tool.restore.undo import undo_run
    from archive_tool.sweep.runlog import pack_sweep_logged

    root = tmp_path / "root"
    before = _tree(root, 4)
    # Sessions made with extra=True hold 5 KB of random bytes: above this, their own archive.
    monkeypatch.setattr(single, "IN_MEMORY_LIMIT", 4000)
    s = pack_sweep_logged(root, "daily", workers=1)
    assert s["archived"] == 4 and s["failed"] == 0
    recs = {os.path.basename(x["session"]): x for x in _manifest(root, s["run"])}
    big = {n for n in before if int(n[-8:-5]) % 2 == 0}
    assert {n for n, x in recs.items() if "pack" not in x} == big
    for n in big:
        assert recs[n]["archive"] == str(root / _state(n) / f"{n}.tar.zst")
    u = undo_run(root, "last", dry_run=False, workers=1)
    assert (u["restored"], u["failed"]) == (4, 0)
    assert not [p for p in root.rglob("*.tar.zst") if not p.name.endswith(".pack.tar.zst")]
    for name, snap in before.items():
        assert snapshot(root / _state(name) / name) == snap
