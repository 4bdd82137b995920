"""No run stays in RUNNING/ because of a bad option or a failing close step (issue 22).

An option that can only fail at close is refused at start, before the function runs and
before any run dir exists; a step of close() that fails (config save, log flush) still
files the run under FINISHED_ERROR/ with its CONFIGS and says what failed in one line; a
failed archive keeps the finished dir where the next sweep finds it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.session_scripts.helpers import load_config, only_session, run_script, write_script

MARK = "FUNCTION-RAN"


def _script(tmp_path: Path, decorator_args: str, prelude: str = "") -> Path:
    body = (f"from pathlib import Path\nfrom scitex_session import session\n{prelude}\n\n"
            f"@session({decorator_args})\n"
            f"def main():\n"
            f"    Path(__file__).with_name({MARK!r}).write_text('x')\n"
            f"    print('payload')\n"
            f"    return 0\n\n"
            f"if __name__ == '__main__':\n"
            f"    main()\n")
    return write_script(tmp_path, body)


@pytest.mark.parametrize("args, words", [
    ('archive_format="zip"', ["'zip'", "tar.zst", "tar.gz", "tar.xz", "tar"]),
    ('archive_format=7', ["7", "tar.zst"]),
    ('sdir_suffix="a/b"', ["sdir_suffix", "'a/b'"]),
])
def test_bad_session_option_fails_before_the_function_runs(tmp_path: Path, args: str,
                                                             words: list[str]) -> None:
    script = _script(tmp_path, args)
    r = run_script(script)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / MARK).exists()
    assert not (tmp_path / "exp_out").exists()


def test_bad_archive_format_in_config_yaml_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "SESSION.yaml").write_text("ARCHIVE_FORMAT: zip\n")
    r = run_script(_script(tmp_path, ""), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'zip'" in r.stderr and "tar.zst" in r.stderr
    assert not (tmp_path / MARK).exists()
    assert not (tmp_path / "exp_out").exists()


def test_good_format_in_config_yaml_archives_the_run(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "SESSION.yaml").write_text("ARCHIVE_FORMAT: tgz\n")
    r = run_script(_script(tmp_path, ""), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS").name.endswith(".tar.gz")


# Each close step made to fail inside the real script process (a patch in the script
# itself), as a full disk or a dead NFS server would.
SAVE_FAILS_ONCE = """
import scitex_session._close as _c
_orig = _c.save_config
_calls = []
def _flaky(config, d):
    _calls.append(d)
    if len(_calls) == 1:
        raise OSError(28, "No space left on device")
    return _orig(config, d)
_c.save_config = _flaky
"""

SAVE_ALWAYS_FAILS = """
import scitex_session._close as _c
def _broken(config, d):
    raise OSError(28, "No space left on device")
_c.save_config = _broken
"""

FLUSH_FAILS = """
import scitex_session._tee as _t
_orig = _t.TeeSession.uninstall
def _uninstall(self):
    _orig(self)
    raise OSError(5, "Input/output error")
_t.TeeSession.uninstall = _uninstall
"""

ARCHIVE_FAILS = """
import scitex_session.archive as _a
def _fail(*a, **k):
    raise OSError(28, "No space left on device")
_a.archive_session_dir = _fail
"""


@pytest.mark.parametrize("prelude, step, configs", [
    (SAVE_FAILS_ONCE, "saving CONFIG", True),
    (SAVE_ALWAYS_FAILS, "saving CONFIG", False),
    (FLUSH_FAILS, "flushing the logs", True),
], ids=["config-save-once", "config-save-always", "log-flush"])
def test_failing_close_step_files_the_run_under_finished_error(
        tmp_path: Path, prelude: str, step: str, configs: bool) -> None:
    r = run_script(_script(tmp_path, "", prelude))
    assert r.returncode == 1, r.stderr
    assert (tmp_path / MARK).exists()
    out = tmp_path / "exp_out"
    assert not (out / "RUNNING").exists()
    run = only_session(out / "FINISHED_ERROR")
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("scitex_session: close of")]
    assert said and step in said[0] and "Traceback" not in r.stderr, r.stderr
    assert "payload" in (run / "logs" / "stdout.log").read_text()
    if configs:
        cfg = load_config(run)
        assert cfg["SDIR_RUN"] == str(run)
        assert any(step in e for e in cfg["CLOSE_ERRORS"]), cfg["CLOSE_ERRORS"]
        assert cfg["EXIT_STATUS"] == 0  # what the function returned stays recorded
    else:
        assert not (run / "CONFIGS" / "CONFIG.yaml").exists()


def test_failing_archive_keeps_the_finished_dir_for_the_next_sweep(tmp_path: Path) -> None:
    r = run_script(_script(tmp_path, 'archive_format="tar.zst"', ARCHIVE_FAILS))
    assert r.returncode == 0, r.stderr  # the run itself succeeded
    out = tmp_path / "exp_out"
    assert not (out / "RUNNING").exists()
    run = only_session(out / "FINISHED_SUCCESS")
    assert run.is_dir()
    said = [ln for ln in r.stderr.splitlines() if "archiving" in ln and "failed" in ln]
    assert len(said) == 1 and "No space left" in said[0] and "Traceback" not in r.stderr
    cfg = load_config(run)
    assert "ARCHIVE" not in cfg and "archiving as tar.zst" in cfg["CLOSE_ERRORS"][0]
