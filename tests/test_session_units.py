"""Session building blocks, in-process: log cleaning, CONFIG, run-dir creation, moves."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import scitex_session as stx
from scitex_session import _close, _start
from scitex_session._config import DotDict, save_config
from scitex_session._tee import LogCleaner


def clean(*chunks: str, finish: bool = True) -> str:
    sink = io.StringIO()
    c = LogCleaner(sink)
    for ch in chunks:
        c.feed(ch)
    if finish:
        c.finish()
    return sink.getvalue()


@pytest.mark.parametrize(("chunks", "expected"), [
    (["\x1b[1;31mbold red\x1b[0m\n"], "bold red\n"),
    (["\x1b[3", "1mred\x1b[0m\n"], "red\n"),               # escape split across writes
    (["10%\r", "50%\r", "100%\n"], "100%\n"),              # progress bar repaint
    (["\r 10%", "\r 99%", "\r100%", "\n"], "100%\n"),       # tqdm writes the \r first
    (["a\r", "\n"], "a\n"),                                # "\r\n" split: a line end
    (["x\r\n", "y\n"], "x\ny\n"),
    (["partial"], "partial"),                              # unterminated last line kept
    (["one\ntwo\r2b\nthree"], "one\n2b\nthree"),
])
def test_log_cleaner_strips_ansi_and_keeps_last_state(chunks, expected):
    assert clean(*chunks) == expected


@given(st.lists(st.text(alphabet="ab\n\x1b[m0;1", max_size=12), max_size=8))
def test_log_cleaner_output_never_holds_escape_or_cr(chunks):
    out = clean(*chunks)
    assert "\r" not in out
    assert out.count("\n") == "".join(chunks).count("\n")


def test_dotdict_attribute_and_key_access_and_nesting():
    d = DotDict({"A": {"B": 1}})
    d.C = 2
    assert d.A.B == 1 and d["C"] == 2 and isinstance(d, dict)
    assert not hasattr(d, "missing")
    with pytest.raises(AttributeError):
        _ = d.missing


def test_saved_yaml_is_plain_and_safe_loadable(tmp_path):
    class Obj:
        def __init__(self):
            self.k = 1

    cfg = DotDict(P=Path("/a/b"), T=(1, 2), O=Obj(), _private=object(), N={"x": Path("y")})
    save_config(cfg, tmp_path)
    loaded = yaml.safe_load((tmp_path / "CONFIG.yaml").read_text())
    assert loaded == {"P": "/a/b", "T": [1, 2], "O": {"k": 1}, "N": {"x": "y"}}


def test_run_dir_creation_retries_with_fresh_id_on_collision(tmp_path, monkeypatch):
    ids = iter(["2026Y-11M-23D-10h00m00s_AAAA", "2026Y-11M-23D-10h00m00s_AAAA",
                "2026Y-11M-23D-10h00m00s_BBBB"])
    monkeypatch.setattr(_start, "new_session_id", lambda: next(ids))
    first = _start.make_run_dir(tmp_path, "main")
    second = _start.make_run_dir(tmp_path, "main")
    assert first[0].endswith("AAAA") and second[0].endswith("BBBB")
    assert first[1].name == "2026Y-11M-23D-10h00m00s_AAAA-main"


def test_move_copies_only_across_filesystems(tmp_path, monkeypatch):
    src = tmp_path / "RUNNING" / "s"
    (src / "logs").mkdir(parents=True)
    (src / "logs" / "f").write_text("data")
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 1:  # the direct rename crosses a mount point
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(a, b)

    monkeypatch.setattr(_close.os, "rename", rename)
    dst = tmp_path / "FINISHED_SUCCESS" / "s"
    _close.move_dir(src, dst)
    assert (dst / "logs" / "f").read_text() == "data"
    assert not src.exists()
    assert not list(dst.parent.glob(".*copying"))


def test_move_other_errors_are_not_hidden_by_a_copy(tmp_path, monkeypatch):
    src = tmp_path / "s"
    src.mkdir()

    def rename(a, b):
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(_close.os, "rename", rename)
    with pytest.raises(PermissionError):
        _close.move_dir(src, tmp_path / "d" / "s")
    assert src.exists()


@pytest.mark.parametrize(("status", "state"), [
    (0, "FINISHED_SUCCESS"), (1, "FINISHED_ERROR"), (2, "FINISHED_ERROR"), (None, "FINISHED")])
def test_exit_status_chooses_finished_state(status, state):
    assert _close.finished_state(status) == state


def test_session_manager_is_thread_safe():
    m = stx.SessionManager()
    n = 400

    def work(i):
        sid = f"s{i}"
        m.create_session(sid, {"i": i}, script_path="x.py")
        m.close_session(sid, status="success" if i % 2 else "error", exit_code=i % 2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(m.list_sessions()) == n and m.get_active_sessions() == {}
    assert m.get_session("s3")["status"] == "closed"
    assert m.get_session("s3")["final_status"] == "success"
    assert m.get_session("unknown") == {}


def test_public_api_matches_api_md():
    for name in ("start", "close", "running2finished", "session", "run", "SessionManager",
                 "INJECTED", "archive_session_dir", "restore_session_archive",
                 "archive_existing", "restore_existing"):
        assert name in stx.__all__
        assert getattr(stx, name) is not None
    import inspect

    assert str(inspect.signature(stx.close)).startswith(
        "(CONFIG: 'dict[str, Any]', message: 'str' = ':)', notify: 'bool' = False, "
        "verbose: 'bool' = True, exit_status: 'int | None' = None, archive_format:")
    assert list(inspect.signature(stx.running2finished).parameters) == [
        "CONFIG", "exit_status", "remove_src_dir", "max_wait", "archive_format"]
    assert list(inspect.signature(stx.start).parameters)[:6] == [
        "sys", "plt", "file", "sdir", "sdir_suffix", "args"]
