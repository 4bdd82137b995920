"""Session lifecycle, end to end: real scripts run in subprocesses."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import yaml

from tests.session_scripts.helpers import (
    assert_session_tree,
    load_config,
    only_session,
    run_script,
    states,
    write_script,
)

DECORATED = """
import scitex_session as stx

@stx.session
def main(x: int = 1):
    '''Example.'''
    print("hello from main", x)
    return {ret}

if __name__ == "__main__":
    main()
"""


def test_success_run_lands_in_finished_success_named_id_dash_function(tmp_path):
    script = write_script(tmp_path, DECORATED.format(ret="0"))
    r = run_script(script, "--x", "7")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "exp_out"
    assert set(states(out)) == {"FINISHED_SUCCESS"}  # RUNNING is left empty
    sess = only_session(out / "FINISHED_SUCCESS")
    assert sess.name.endswith("-main")
    assert_session_tree(sess)
    assert "hello from main 7" in (sess / "logs" / "stdout.log").read_text()


def test_exception_lands_in_finished_error_with_traceback_and_nonzero_exit(tmp_path):
    script = write_script(tmp_path, """
        import scitex_session as stx

        @stx.session
        def main():
            print("before")
            raise ValueError("boom-123")

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script)
    assert r.returncode == 1
    assert "ValueError: boom-123" in r.stderr  # re-raised: the interpreter shows it
    sess = only_session(tmp_path / "exp_out" / "FINISHED_ERROR")
    assert_session_tree(sess)
    log = (sess / "logs" / "stderr.log").read_text()
    assert "Traceback" in log and "ValueError: boom-123" in log
    assert log.count("ValueError: boom-123") == 1
    assert load_config(sess)["EXIT_STATUS"] == 1


def test_keyboard_interrupt_is_recorded_as_error_and_reraised(tmp_path):
    script = write_script(tmp_path, """
        import scitex_session as stx

        @stx.session
        def main():
            raise KeyboardInterrupt

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script)
    assert r.returncode != 0
    sess = only_session(tmp_path / "exp_out" / "FINISHED_ERROR")
    assert "KeyboardInterrupt" in (sess / "logs" / "stderr.log").read_text()


@pytest.mark.parametrize(("ret", "state", "status"), [
    ("0", "FINISHED_SUCCESS", 0),
    ("None", "FINISHED_SUCCESS", 0),  # returning nothing is success, as published
    ("3", "FINISHED_ERROR", 3),       # any non-zero int status is a failure
])
def test_int_return_is_the_exit_status(tmp_path, ret, state, status):
    script = write_script(tmp_path, DECORATED.format(ret=ret))
    r = run_script(script)
    assert r.returncode == 0, r.stderr  # the decorator returns; the script decides the exit
    sess = only_session(tmp_path / "exp_out" / state)
    assert load_config(sess)["EXIT_STATUS"] == status


FUNCTIONAL = """
import sys
import scitex_session as stx

CONFIG, sys.stdout, sys.stderr, plt, COLORS, rngg = stx.start(sys, None, sdir_suffix="fn",
                                                              verbose=False)
print("functional run")
stx.close(CONFIG, exit_status={status}, verbose=False)
print("FINAL", CONFIG.SDIR_RUN)
"""


@pytest.mark.parametrize(("status", "state"), [
    ("None", "FINISHED"), ("0", "FINISHED_SUCCESS"), ("1", "FINISHED_ERROR")])
def test_start_close_files_run_by_exit_status(tmp_path, status, state):
    script = write_script(tmp_path, FUNCTIONAL.format(status=status))
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    sess = only_session(tmp_path / "exp_out" / state)
    assert sess.name.endswith("-fn")
    assert_session_tree(sess)
    assert f"FINAL {sess}" in r.stdout
    # Output after close() reaches the terminal only.
    assert "FINAL" not in (sess / "logs" / "stdout.log").read_text()


def test_saved_config_safe_loads_and_records_final_location(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "model.yaml").write_text("layers: 3\nname: mlp\n")
    script = write_script(tmp_path, """
        from pathlib import Path
        import scitex_session as stx

        @stx.session
        def main(lr: float = 0.1, data: Path = Path("d.csv"), CONFIG=stx.INJECTED):
            assert CONFIG.MODEL.layers == 3 and CONFIG["MODEL"]["name"] == "mlp"
            assert CONFIG.SDIR_RUN.parent.name == "RUNNING"
            return 0

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script, "--lr", "0.5")
    assert r.returncode == 0, r.stderr
    sess = only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS")
    cfg = load_config(sess)
    assert {"ID", "PID", "FILE", "SDIR_OUT", "SDIR_RUN", "START_DATETIME", "END_DATETIME",
            "RUN_DURATION", "EXIT_STATUS", "ARGS", "MODEL"} <= set(cfg)
    assert cfg["SDIR_RUN"] == str(sess)
    assert sess.name.startswith(cfg["ID"])
    assert cfg["ARGS"] == {"lr": 0.5, "data": "d.csv"}
    assert cfg["MODEL"] == {"layers": 3, "name": "mlp"}
    assert cfg["FILE"] == str(script)
    with open(sess / "CONFIGS" / "CONFIG.pkl", "rb") as fh:
        pkl = pickle.load(fh)
    assert pkl["ID"] == cfg["ID"] and str(pkl["SDIR_RUN"]) == str(sess)


def test_logs_strip_ansi_and_keep_last_state_of_progress_lines(tmp_path):
    script = write_script(tmp_path, """
        import logging, sys
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")  # before start
        from tqdm import tqdm
        import scitex_session as stx

        @stx.session
        def main():
            print("\\x1b[31mred text\\x1b[0m plain")
            for _ in tqdm(range(50), mininterval=0, ascii=True, file=sys.stderr):
                pass
            sys.stdout.write("step 1\\rstep 2\\rstep 3\\n")
            sys.stdout.write("half ")
            sys.stdout.write("line\\r\\n")
            logging.getLogger("user").info("from a pre-existing handler")
            return 0

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    assert "\x1b[31m" in r.stdout  # the terminal keeps its colours
    sess = only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS")
    out = (sess / "logs" / "stdout.log").read_text()
    err = (sess / "logs" / "stderr.log").read_text()
    assert "\x1b" not in out and "\x1b" not in err
    assert "red text plain\n" in out
    assert "step 3\n" in out and "step 1" not in out and "step 2" not in out
    assert "half line\n" in out
    bars = [ln for ln in err.splitlines() if "it/s" in ln or "50/50" in ln or "/50" in ln]
    assert len(bars) == 1 and "50/50" in bars[0], err  # one line, its final state
    assert "\r" not in err
    assert "LOG from a pre-existing handler" in err


def test_same_seed_gives_same_rngg_draws_and_names_are_independent(tmp_path):
    script = write_script(tmp_path, """
        import json, random
        import scitex_session as stx

        @stx.session
        def main(rngg=stx.INJECTED):
            import numpy as np  # imported after start: still seeded
            a = rngg("a").random(3).tolist()
            b = rngg("b").random(3).tolist()
            print("DRAWS", json.dumps([a, b, np.random.rand(), np.random.default_rng().random(),
                                       random.random(), rngg("a") is rngg("a")]))
            return 0

        if __name__ == "__main__":
            main()
    """)
    lines = []
    for _ in range(2):
        r = run_script(script)
        assert r.returncode == 0, r.stderr
        lines.append([ln for ln in r.stdout.splitlines() if ln.startswith("DRAWS")][0])
    assert lines[0] == lines[1]
    a, b, _np_global, _np_default_rng, _random, same_object = json.loads(lines[0].split(" ", 1)[1])
    assert same_object is True
    assert a != b


def test_trivial_session_imports_no_numpy_matplotlib_yaml_at_start(tmp_path):
    script = write_script(tmp_path, """
        import sys
        import scitex_session as stx

        @stx.session
        def main(plt=stx.INJECTED, rngg=stx.INJECTED):
            print("LOADED", sorted(m for m in ("numpy", "matplotlib", "torch", "yaml")
                                   if m in sys.modules))
            return 0

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout


def test_matplotlib_configured_when_imported_after_start(tmp_path):
    script = write_script(tmp_path, """
        import scitex_session as stx

        @stx.session(fig_size_mm=(254, 127), dpi_save=150, line_width=2.0)
        def main(plt=stx.INJECTED, COLORS=stx.INJECTED):
            import matplotlib
            rc = matplotlib.rcParams
            print("MPL", matplotlib.get_backend(), list(rc["figure.figsize"]),
                  rc["savefig.dpi"], rc["lines.linewidth"], rc["axes.spines.top"])
            assert COLORS.blue == COLORS["blue"]
            fig, ax = plt.subplots()
            ax.plot([0, 1], color=COLORS.red)
            fig.savefig(CONFIG.SDIR_RUN / "fig.png")
            return 0

        if __name__ == "__main__":
            main()
    """)
    r = run_script(script, env={"MPLBACKEND": ""})
    assert r.returncode == 0, r.stderr
    assert "mpl agg [10.0, 5.0] 150.0 2.0 false" in r.stdout.lower()
    sess = only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS")
    assert (sess / "fig.png").stat().st_size > 0


def test_env_var_redirects_output_root(tmp_path):
    script = write_script(tmp_path, DECORATED.format(ret="0"))
    elsewhere = tmp_path / "elsewhere"
    r = run_script(script, env={"SCITEX_SESSION_OUT_DIR": str(elsewhere)})
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "exp_out").exists()
    assert_session_tree(only_session(elsewhere / "exp_out" / "FINISHED_SUCCESS"))


def test_many_processes_started_at_once_get_distinct_dirs(tmp_path):
    script = write_script(tmp_path, DECORATED.format(ret="0"))
    n = 12
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(n)]
    for p in procs:
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    names = list((tmp_path / "exp_out" / "FINISHED_SUCCESS").iterdir())
    assert len(names) == n
    pids = {load_config(d)["PID"] for d in names}
    assert len(pids) == n


def test_close_moves_run_dir_with_rename_not_copy(tmp_path):
    script = write_script(tmp_path, """
        import os, sys
        import scitex_session as stx

        CONFIG, sys.stdout, sys.stderr, _plt, _c, _r = stx.start(sys, None, verbose=False)
        (CONFIG.SDIR_RUN / "data.bin").write_bytes(b"x" * 1000)
        before = (os.stat(CONFIG.SDIR_RUN).st_ino, os.stat(CONFIG.SDIR_RUN / "data.bin").st_ino)
        stx.close(CONFIG, exit_status=0, verbose=False)
        after = (os.stat(CONFIG.SDIR_RUN).st_ino, os.stat(CONFIG.SDIR_RUN / "data.bin").st_ino)
        print("SAME_INODES", before == after)
    """)
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    assert "SAME_INODES True" in r.stdout


def test_hooks_fire_once_each_and_notify_without_hook_is_logged_noop(tmp_path):
    script = write_script(tmp_path, """
        import scitex_session as stx

        calls = []
        stx.register_session_start_hook(lambda sid, path, meta: calls.append(("start", sid)))
        stx.register_session_close_hook(lambda status, code: calls.append(("close", status, code)))

        @stx.session(notify=True)
        def main():
            return 0

        if __name__ == "__main__":
            main()
            print("CALLS", [c[0] for c in calls], calls[-1][1:])
    """)
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    assert "CALLS ['start', 'close'] ('success', 0)" in r.stdout

    script2 = write_script(tmp_path, DECORATED.format(ret="0").replace(
        "@stx.session", "@stx.session(notify=True)"), name="nohook.py")
    r2 = run_script(script2)
    assert r2.returncode == 0, r2.stderr
    sess = only_session(tmp_path / "nohook_out" / "FINISHED_SUCCESS")
    assert "no close hook registered" in (sess / "logs" / "stderr.log").read_text()


def test_running2finished_moves_and_rewrites_saved_config(tmp_path):
    script = write_script(tmp_path, """
        import sys
        import scitex_session as stx
        from scitex_session._config import save_config

        CONFIG, sys.stdout, sys.stderr, _p, _c, _r = stx.start(sys, None, verbose=False)
        save_config(CONFIG, CONFIG.SDIR_RUN / "CONFIGS")
        running = CONFIG.SDIR_RUN
        # close() is the normal path; running2finished alone must also leave a true record.
        out = stx.running2finished(CONFIG, exit_status=0)
        print("MOVED", not running.exists(), out.SDIR_RUN.parent.name)
    """)
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    assert "MOVED True FINISHED_SUCCESS" in r.stdout
    sess = only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS")
    assert load_config(sess)["SDIR_RUN"] == str(sess)


@pytest.mark.parametrize("fmt", ["tar.gz", "tar.zst"])
def test_archive_format_collapses_finished_dir_into_one_archive(tmp_path, fmt):
    script = write_script(tmp_path, DECORATED.format(ret="0").replace(
        "@stx.session", f"@stx.session(archive_format={fmt!r})"))
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    archive = only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS")
    assert archive.name.endswith("." + fmt) and archive.is_file()
    import scitex_session as stx

    restored = stx.restore_session_archive(archive, dest_dir=tmp_path / "restored")
    cfg = load_config(restored)
    assert cfg["ARCHIVE"] == str(archive)
    assert "hello from main" in (restored / "logs" / "stdout.log").read_text()


def test_archive_format_from_config_session_yaml(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "session.yaml").write_text(
        yaml.safe_dump({"ARCHIVE_FORMAT": "tar.zst"}))
    script = write_script(tmp_path, DECORATED.format(ret="0"))
    r = run_script(script)
    assert r.returncode == 0, r.stderr
    assert only_session(tmp_path / "exp_out" / "FINISHED_SUCCESS").name.endswith(".tar.zst")
