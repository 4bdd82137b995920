"""close() and running2finished(): record the end, save CONFIG, move the run dir to its
FINISHED_* state with one rename, optionally collapse it into one archive."""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from archive_tool.levels import resolve_level
from archive_tool.names import (
    ERROR_STATE,
    PLAIN_STATE,
    RUNNING_STATE,
    SUCCESS_STATE,
    archive_name,
    normalize_format,
)

from . import _heartbeat, _hooks, _plt, _seed
from ._config import save_config
from ._manager import get_global_session_manager
from ._start import get_logger, pop_runtime


def finished_state(exit_status: int | None) -> str:
    """0 -> FINISHED_SUCCESS, None -> FINISHED, any other status -> FINISHED_ERROR.

    (The published package files statuses other than 0 and 1 under FINISHED; a non-zero
    exit is a failure, so we file it with the errors.)"""
    if exit_status is None:
        return PLAIN_STATE
    return SUCCESS_STATE if exit_status == 0 else ERROR_STATE


def _status_word(exit_status: int | None) -> str:
    return {SUCCESS_STATE: "success", ERROR_STATE: "error"}.get(
        finished_state(exit_status), "finished")


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _configured_format(config: dict[str, Any], archive_format: str | None) -> str | None:
    if archive_format is None:
        sess = config.get("SESSION")
        if isinstance(sess, dict):
            archive_format = sess.get("ARCHIVE_FORMAT")
    return normalize_format(archive_format) if archive_format else None


def _configured_level(config: dict[str, Any], fmt: str) -> int:
    """``SESSION.ARCHIVE_LEVEL`` (the format's own level, as ``--level``) or the format's
    default. Passed explicitly: archive_session_dir's documented default (1) would be
    zstd 1 for tar.zst, and a decorated run has always been archived at zstd 3."""
    sess = config.get("SESSION")
    level = sess.get("ARCHIVE_LEVEL") if isinstance(sess, dict) else None
    return resolve_level(fmt, level, "SESSION.ARCHIVE_LEVEL")


def move_dir(src: Path, dst: Path, remove_src: bool = True) -> None:
    """Rename *src* to *dst* (atomic, O(1)); copy only when they are on different
    filesystems (EXDEV) or when the source must be kept."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    if not remove_src:
        shutil.copytree(src, dst, symlinks=True)
        return
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # Copy beside the destination, then rename it in: a crash mid-copy never leaves a
        # half-filled dir under a session's name.
        tmp = dst.parent / f".{dst.name}.copying"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, symlinks=True)
        os.rename(tmp, dst)
        shutil.rmtree(src)


def _sdir_out(config: dict[str, Any], src: Path) -> Path:
    """SDIR_OUT, or (a CONFIG built by hand with only SDIR_RUN) the dir above RUNNING/."""
    out = config.get("SDIR_OUT")
    if out:
        return Path(out)
    if src.parent.name == RUNNING_STATE:
        return src.parent.parent
    raise ValueError(f"CONFIG has no SDIR_OUT and SDIR_RUN {src} is not inside a "
                     f"{RUNNING_STATE}/ dir: cannot tell where the run finishes")


def _drop_empty_running(src: Path) -> None:
    # The last run to finish leaves no empty <stem>_out/RUNNING/ behind. rmdir is atomic
    # and fails on a non-empty dir, so a run that started meanwhile keeps its parent
    # (and one that races to mkdir inside it after the rmdir gets ENOENT from the mkdir
    # and retries: make_run_dir creates RUNNING/ again).
    running = src.parent
    if running.name != RUNNING_STATE:
        return
    try:
        os.rmdir(running)
    except OSError:
        pass


def _finish(config: dict[str, Any], exit_status: int | None, remove_src_dir: bool,
            archive_format: str | None, save: bool, before_move: Any = None) -> dict[str, Any]:
    # Locked against a stale-run finalizer (archive_tool.stale.finalize), following the dir if one
    # moved it first; released before archiving, which takes the same lock itself.
    run_dir = Path(config["SDIR_RUN"])
    claim = _heartbeat.claim_run_dir(run_dir, _sdir_out(config, run_dir))
    if claim.fd is None and not claim.path.is_dir():
        # Saving CONFIG would recreate an empty run dir beside the real one's archive.
        raise FileNotFoundError(errno.ENOENT, "run dir not found (finalized as stale and "
                                "archived meanwhile?)", str(claim.path))
    try:
        return _finish_claimed(claim.path, config, exit_status, remove_src_dir,
                               archive_format, save, before_move, claim.release)
    finally:
        claim.release()


def _finish_claimed(src: Path, config: dict[str, Any], exit_status: int | None,
                    remove_src_dir: bool, archive_format: str | None, save: bool,
                    before_move: Any, release: Any) -> dict[str, Any]:
    # Every step before the move may fail (a format only a typo away, a full disk under
    # CONFIG.yaml, a log that will not close): none of them may keep the run in RUNNING/,
    # where it would look like a live or a dead-without-heartbeat run forever (issue 22).
    # Each failure is said in one line and files the run under FINISHED_ERROR/.
    errors: list[str] = []
    try:
        fmt = _configured_format(config, archive_format)
    except ValueError as e:
        errors.append(f"archive format: {e}")
        fmt = None

    def target() -> Path:
        state = ERROR_STATE if errors else finished_state(exit_status)
        return _sdir_out(config, src) / state / src.name

    def record() -> None:
        # The saved config records where the run ends up, not where it ran.
        config["SDIR_RUN"] = target()
        if fmt:
            config["ARCHIVE"] = target().parent / archive_name(src.name, fmt)
        if errors:
            config["CLOSE_ERRORS"] = list(errors)
        if save:
            try:
                save_config(config, src / "CONFIGS")
            except Exception as e:  # noqa: BLE001 - the move below must still happen
                if not any(x.startswith("saving CONFIG") for x in errors):
                    errors.append(f"saving CONFIG: {_one_line(e)}")

    n = len(errors)
    record()
    if before_move is not None:
        try:
            before_move()
        except Exception as e:  # noqa: BLE001
            errors.append(f"flushing the logs: {_one_line(e)}")
    if len(errors) != n:
        record()  # again, now naming FINISHED_ERROR/ and what failed
    dst = target()
    try:
        move_dir(src, dst, remove_src=remove_src_dir)
    except OSError:
        config["SDIR_RUN"] = src
        config.pop("ARCHIVE", None)
        if save:
            save_config(config, src / "CONFIGS")
        raise
    finally:
        for msg in errors:
            print(f"scitex_session: close of {src.name}: {msg}", file=sys.stderr)
    release()
    if remove_src_dir:
        _drop_empty_running(src)
    if fmt and not errors:
        from .archive import archive_session_dir  # lazy: the engine is only needed here

        try:
            config["ARCHIVE"] = archive_session_dir(
                dst, format=fmt, compresslevel=_configured_level(config, fmt))
            # The dir is gone; SDIR_RUN names what exists (the published package left
            # it naming the deleted dir). ARCHIVE stays for callers that read it.
            config["SDIR_RUN"] = config["ARCHIVE"]
        except Exception as e:  # noqa: BLE001
            # The run finished as it did; only its packing failed, and the dir is intact
            # in its FINISHED_* state, where the next sweep archives it. Say so in one
            # line and record the truth in the dir.
            config.pop("ARCHIVE", None)
            config["CLOSE_ERRORS"] = [f"archiving as {fmt}: {_one_line(e)}"]
            if save and dst.is_dir():
                try:
                    save_config(config, dst / "CONFIGS")
                except Exception:  # noqa: BLE001 - already reporting a failure
                    pass
            print(f"scitex_session: archiving {dst} as {fmt} failed, the dir is kept: "
                  f"{_one_line(e)}", file=sys.stderr)
    elif errors:
        config.pop("ARCHIVE", None)
    return config


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def running2finished(
    CONFIG: dict[str, Any],  # noqa: N803 - API.md's parameter name
    exit_status: int | None = None,
    remove_src_dir: bool = True,
    max_wait: int = 60,
    archive_format: str | None = None,
) -> dict[str, Any]:
    """Move the session from RUNNING/ to FINISHED_SUCCESS/, FINISHED_ERROR/ or FINISHED/.

    A rename, so *max_wait* never applies (kept for API compatibility). With
    *remove_src_dir* False the run dir is copied and the RUNNING one kept. When the run dir
    holds a saved ``CONFIGS/CONFIG.yaml`` it is rewritten to record the final location.
    Returns *CONFIG* with ``SDIR_RUN`` pointing at the final location."""
    src = Path(CONFIG["SDIR_RUN"])
    if not src.is_dir():
        raise FileNotFoundError(errno.ENOENT, "run dir not found", str(src))
    save = (src / "CONFIGS" / "CONFIG.yaml").exists()
    if exit_status is not None:
        CONFIG["EXIT_STATUS"] = exit_status
    return _finish(CONFIG, exit_status, remove_src_dir, archive_format, save)


def close(
    CONFIG: dict[str, Any],  # noqa: N803 - API.md's parameter name
    message: str = ":)",
    notify: bool = False,
    verbose: bool = True,
    exit_status: int | None = None,
    archive_format: str | None = None,
) -> dict[str, Any]:
    """Close the session: END_DATETIME, RUN_DURATION, EXIT_STATUS; save
    ``CONFIGS/CONFIG.yaml`` and ``CONFIG.pkl``; stop the tee; move the run dir to its
    FINISHED_* state; archive it when *archive_format* (or ``CONFIG.SESSION.ARCHIVE_FORMAT``)
    is set; call the close hooks. Returns CONFIG (which records the final location)."""
    _heartbeat.end(CONFIG["ID"])
    rt = pop_runtime(CONFIG["ID"]) or {}
    tee = rt.get("tee")
    logger = rt.get("logger") or get_logger()
    end = _dt.datetime.now()
    CONFIG["EXIT_STATUS"] = exit_status
    CONFIG["END_DATETIME"] = end
    if "t0" in rt:
        seconds = time.monotonic() - rt["t0"]
    else:
        seconds = (end - CONFIG["START_DATETIME"]).total_seconds()
    CONFIG["RUN_DURATION"] = _fmt_duration(seconds)

    if verbose:
        logger.info(f"START: {CONFIG['START_DATETIME']} | END: {end} | "
                    f"DURATION: {CONFIG['RUN_DURATION']} | EXIT_STATUS: {exit_status}")
        if message:
            logger.info(message)
    if notify and not _hooks.has_close_hooks():
        logger.info("notify=True: no close hook registered (register_session_close_hook); "
                    "nothing sent")

    _plt.cleanup()
    _seed.unseed()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass

    try:
        # The tee stops after CONFIG is saved (its write is logged) and before the move
        # (no file is open inside the dir when it is renamed).
        _finish(CONFIG, exit_status, True, archive_format, save=True,
                before_move=tee.uninstall if tee is not None else None)
    finally:
        if tee is not None:
            try:
                tee.uninstall()  # idempotent; covers a failure before the move
            except Exception:  # noqa: BLE001 - _finish said it and filed the run an error
                pass
        get_global_session_manager().close_session(
            CONFIG["ID"], status=_status_word(exit_status),
            exit_code=exit_status if exit_status is not None else 0)
        _hooks.fire_close(_status_word(exit_status), exit_status)

    where = CONFIG.get("ARCHIVE") or CONFIG["SDIR_RUN"]
    state = Path(where).parent.name  # FINISHED_ERROR when a step of close itself failed
    word = {SUCCESS_STATE: "Script completed", ERROR_STATE: "Script failed"}.get(
        state, "Script finished")
    logger.info(f"{word}: {where}")
    return CONFIG
