"""start(): make the run dir, tee the streams, seed, configure matplotlib, build CONFIG."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import sys as _sys
import threading
import time
from pathlib import Path
from typing import Any

from archive_tool.errors import BadArgument
from archive_tool.levels import resolve_level
from archive_tool.names import (
    ID_REGEX,
    RUNNING_STATE,
    new_session_id,
    normalize_format,
    session_dir_name,
)

from . import _heartbeat, _hooks, _plt, _seed
from ._config import DotDict, load_yaml_configs
from ._manager import get_global_session_manager
from ._tee import TeeSession

OUT_DIR_ENV = "SCITEX_SESSION_OUT_DIR"
_MAX_ID_TRIES = 1000
_ID_PREFIX = re.compile(ID_REGEX, re.ASCII)

# Per-session state close() needs but CONFIG should not show (or save): keyed by ID.
_runtime: dict[str, dict[str, Any]] = {}
_runtime_lock = threading.Lock()


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at emit time, so records reach the tee during a
    session and the terminal after it, without re-pointing the handler."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = _sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the script
            self.handleError(record)


def get_logger(name: str = "scitex_session") -> logging.Logger:
    """The session logger: ``LEVEL: message`` on stderr (so in logs/stderr.log)."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(h)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        # Our handler already prints; propagating would print twice under basicConfig.
        logger.propagate = False
    return logger


def _caller_file(depth: int) -> Path:
    frame = _sys._getframe(depth + 1)
    name = frame.f_code.co_filename
    if name and not name.startswith("<") and Path(name).exists():
        return Path(name)
    main_file = getattr(_sys.modules.get("__main__"), "__file__", None)
    if main_file:
        return Path(main_file)
    return Path.cwd() / "interactive.py"


def output_root(script: Path, sdir: str | os.PathLike[str] | None = None) -> Path:
    """``<script dir>/<stem>_out``, or ``$SCITEX_SESSION_OUT_DIR/<stem>_out``, or *sdir*."""
    if sdir is not None:
        return Path(sdir).absolute()
    base = os.environ.get(OUT_DIR_ENV)
    parent = Path(base).expanduser().absolute() if base else script.parent
    return parent / f"{script.stem}_out"


def make_run_dir(sdir_out: Path, suffix: str | None) -> tuple[str, Path]:
    """Create ``sdir_out/RUNNING/<ID>[-suffix]`` exclusively; a new ID on collision.

    Exclusive mkdir, not exist_ok: two SLURM array tasks started in the same second must
    never share a dir (Hydra #2925)."""
    running = sdir_out / RUNNING_STATE
    for _ in range(_MAX_ID_TRIES):
        running.mkdir(parents=True, exist_ok=True)
        sid = new_session_id()
        path = running / session_dir_name(sid, suffix)
        try:
            os.mkdir(path)
        except (FileExistsError, FileNotFoundError):
            # FileNotFoundError: the last other run just finished and removed the empty
            # RUNNING/ between our two mkdirs; make it again.
            continue
        return sid, path
    raise RuntimeError(f"could not create a unique run dir under {running}")


def given_run_dir(sdir: str | os.PathLike[str] | None) -> Path | None:
    """*sdir* itself when it names a run dir (``.../RUNNING/<name>``), else None.

    The published package treats such an sdir as the run dir; making it an output root
    instead would nest RUNNING/ inside RUNNING/ and the run would finish where no sweep
    looks."""
    if sdir is None:
        return None
    p = Path(sdir).absolute()
    return p if p.parent.name == RUNNING_STATE and p.name != RUNNING_STATE else None


def _claim_run_dir(path: Path) -> str:
    """Create the given run dir (exclusively: two runs must not share it) and return the
    session ID: the session-ID part of its name when it has one, else a fresh one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(path)
    m = _ID_PREFIX.match(path.name)
    return m.group(0) if m else new_session_id()


def check_options(sdir_suffix: str | None = None, archive_format: str | None = None,
                  yaml_configs: dict[str, Any] | None = None) -> str | None:
    """Refuse, before a run dir exists, every option that would otherwise only fail in
    close(): an unknown archive format (the argument, or ``SESSION.ARCHIVE_FORMAT`` of
    ``./config/*.yaml``), a ``SESSION.ARCHIVE_LEVEL`` outside that format's own range
    (levels.py; the argument's format first, else the YAML's; with neither, only its
    type), and a suffix
    that is not one path component. Returns the canonical format. A ``BadArgument`` (a
    ValueError) names what is accepted.

    Checked in close() only, a typo such as ``archive_format="zip"`` ran the whole script
    and then left the run in RUNNING/ (issue 22)."""
    if sdir_suffix is not None and (not isinstance(sdir_suffix, str) or not sdir_suffix
                                    or "/" in sdir_suffix or "\0" in sdir_suffix
                                    or sdir_suffix in (".", "..")):
        raise BadArgument(f"sdir_suffix must be one non-empty path component without '/', "
                          f"got {sdir_suffix!r}")
    fmt = normalize_format(archive_format) if archive_format is not None else None
    sess = (yaml_configs or {}).get("SESSION")
    level_fmt = fmt
    if isinstance(sess, dict) and sess.get("ARCHIVE_FORMAT") is not None:
        level_fmt = level_fmt or normalize_format(sess["ARCHIVE_FORMAT"])
    if isinstance(sess, dict) and sess.get("ARCHIVE_LEVEL") is not None:
        # tar ignores an int level; with the format not known yet, tar's rule is the
        # type check alone and close() checks the range.
        resolve_level(level_fmt or "tar", sess["ARCHIVE_LEVEL"], "SESSION.ARCHIVE_LEVEL")
    return fmt


def _args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, dict):
        return dict(args)
    if hasattr(args, "__dict__"):
        return dict(vars(args))
    return {"args": args}


def start(
    sys: Any = None,  # noqa: A002 - API.md's parameter name
    plt: Any = None,
    file: str | None = None,
    sdir: str | os.PathLike[str] | None = None,
    sdir_suffix: str | None = None,
    args: Any = None,
    os: Any = None,  # noqa: A002
    random: Any = None,
    np: Any = None,
    torch: Any = None,
    seed: int = 42,
    agg: bool = False,
    fig_size_mm: tuple[float, float] = (160, 100),
    fig_scale: float = 1.0,
    dpi_display: int = 100,
    dpi_save: int = 300,
    fontsize: str | float = "small",
    autolayout: bool = False,
    show_execution_flow: bool = False,
    hide_top_right_spines: bool = True,
    alpha: float = 0.9,
    line_width: float = 1.0,
    clear_logs: bool = False,
    verbose: bool = True,
    *,
    heartbeat_interval: float | None = None,
    _caller_depth: int = 1,
) -> tuple[DotDict, Any, Any, Any, DotDict, _seed.RandomStateManager]:
    """Initialize an experiment session with reproducibility settings.

    Creates ``<stem>_out/RUNNING/<ID>[-<sdir_suffix>]/`` beside the script (or under
    ``$SCITEX_SESSION_OUT_DIR``; *sdir*, when given, replaces ``<stem>_out``), tees stdout and
    stderr into its ``logs/``, seeds ``random`` and (when imported, now or later) numpy and
    torch, and configures matplotlib when the script uses it.

    The *sys*, *os*, *random*, *np*, *torch* modules are accepted for compatibility; the
    session uses the real ones. *clear_logs* and *show_execution_flow* are accepted and
    have no effect (every run has fresh logs).

    ``CONFIG["LIVENESS"]`` records host, PID, process start time and SLURM job; a daemon
    thread touches ``<run>/.heartbeat`` every *heartbeat_interval* seconds (default
    ``$SCITEX_SESSION_HEARTBEAT`` or 60; 0 disables) so a sweep can finalize dead runs.

    Returns ``(CONFIG, stdout, stderr, plt, COLORS, rngg)``.
    """
    t0 = time.monotonic()
    start_dt = _dt.datetime.now()
    script = Path(file).absolute() if file else _caller_file(_caller_depth).absolute()
    yaml_configs = load_yaml_configs(Path.cwd() / "config")
    check_options(sdir_suffix, None, yaml_configs)
    run_dir = given_run_dir(sdir)
    if run_dir is not None:
        sdir_out = run_dir.parent.parent
        sid, sdir_run = _claim_run_dir(run_dir), run_dir
    else:
        sdir_out = output_root(script, sdir)
        sid, sdir_run = make_run_dir(sdir_out, sdir_suffix)

    # sys=None (API.md's default): the caller did not hand over its streams, so they are
    # left alone and no logs are teed (as the published package does).
    tee = TeeSession(sdir_run / "logs") if sys is not None else None

    config = DotDict()
    config["ID"] = sid
    config["PID"] = _os_getpid()
    config["START_DATETIME"] = start_dt
    config["FILE"] = script
    config["SDIR_OUT"] = sdir_out
    config["SDIR_RUN"] = sdir_run
    config["ARGS"] = _args_dict(args)
    config["LIVENESS"] = _heartbeat.begin(sid, sdir_run, heartbeat_interval)
    for key, value in yaml_configs.items():
        if key not in config:  # the session's own keys are authoritative
            config[key] = value

    seeded = _seed.seed_all(seed)
    rngg = _seed.RandomStateManager(seed)

    _plt.configure(
        agg,
        _plt.rc_params(fig_size_mm, fig_scale, dpi_display, dpi_save, fontsize, autolayout,
                       hide_top_right_spines, alpha, line_width),
    )
    plt_out = _plt.session_plt(plt)
    colors = _plt.make_colors()
    logger = get_logger(script.stem)

    with _runtime_lock:
        _runtime[sid] = {"tee": tee, "t0": t0, "logger": logger, "verbose": verbose}

    _print_banner(config, verbose, seeded, seed, tee)
    get_global_session_manager().create_session(sid, config, str(script))
    _hooks.fire_start(sid, str(script), {"SDIR_RUN": str(sdir_run), "PID": config["PID"]})
    if tee is None:
        return config, None, None, plt_out, colors, rngg
    return config, tee.stdout, tee.stderr, plt_out, colors, rngg


def _os_getpid() -> int:
    import os as real_os  # the parameter named `os` shadows the module inside start()

    return real_os.getpid()


def _print_banner(config: DotDict, verbose: bool, seeded: list[str], seed: int,
                  tee: TeeSession | None) -> None:
    line = "=" * 40
    args = config["ARGS"]
    arg_lines = "".join(f"\n    {k}: {v}" for k, v in args.items()) if args else " None"
    print(f"{line}\nscitex-session | {config['ID']} (PID: {config['PID']})\n\n"
          f"{config['FILE']}\n\nArguments:{arg_lines}\n{line}",
          file=tee.stdout if tee is not None else _sys.stdout)
    if verbose:
        logs = f"{tee.stdout.log_path} | {tee.stderr.log_path}" if tee is not None else "none"
        print(f"INFO: Logs: {logs}\n"
              f"INFO: Seed {seed} for: {', '.join(seeded)} (numpy/torch when imported)",
              file=tee.stderr if tee is not None else _sys.stderr)


def pop_runtime(session_id: str) -> dict[str, Any] | None:
    with _runtime_lock:
        return _runtime.pop(session_id, None)
