"""The ``@session`` decorator and ``run()``: parse the CLI, start, inject, call, close."""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archive_tool.names import ERROR_STATE

from ._cli import build_parser


class _InjectedSentinel:
    """Default value marking a parameter the session fills in (CONFIG, plt, COLORS, rngg,
    logger)."""

    _instance: _InjectedSentinel | None = None

    def __new__(cls) -> _InjectedSentinel:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<INJECTED>"

    def __reduce__(self) -> str:
        return "INJECTED"


INJECTED = _InjectedSentinel()

INJECTABLE = ("CONFIG", "plt", "COLORS", "rngg", "logger")
_CLOSE_KEYS = {"message"}


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from ._start import start

    start_keys = set(inspect.signature(start).parameters) - {"_caller_depth"}
    start_kw, close_kw = {}, {}
    for k, v in kwargs.items():
        if k in _CLOSE_KEYS:
            close_kw[k] = v
        elif k in start_keys:
            start_kw[k] = v
        else:
            raise TypeError(f"unexpected session keyword argument {k!r}")
    return start_kw, close_kw


def _exit_status_of(result: Any) -> int:
    # An int is the status (bool is not a status); anything else means the run succeeded.
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return 0


def _log_traceback(stderr: Any) -> None:
    """The traceback goes into stderr.log only: the interpreter prints it on the terminal
    when the exception propagates, and once is enough there."""
    text = traceback.format_exc()
    log_only = getattr(stderr, "log_only", None)
    if log_only is not None:
        log_only(text)
    else:
        stderr.write(text)


def _script_file(func: Callable[..., Any]) -> str:
    f = func.__globals__.get("__file__") if hasattr(func, "__globals__") else None
    return str(Path(f or sys.argv[0] or "interactive.py").absolute())


def _run_session(
    func: Callable[..., Any],
    parse_args: Callable[[], Any] | None,
    *,
    verbose: bool,
    agg: bool,
    notify: bool,
    sdir_suffix: str | None,
    archive_format: str | None,
    session_kwargs: dict[str, Any],
) -> tuple[Any, int]:
    from ._close import close
    from ._config import load_yaml_configs
    from ._start import check_options, start

    start_kw, close_kw = _split_kwargs(session_kwargs)
    try:
        # With archive_format given here, ./config's SESSION.ARCHIVE_LEVEL is checked
        # against that format now (start() sees only the YAML's format).
        check_options(sdir_suffix, archive_format,
                      load_yaml_configs(Path.cwd() / "config") if archive_format else None)
    except ValueError as e:
        # Before any run dir exists and before the function runs: one line, usage exit.
        print(f"scitex_session: {func.__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    # `def main(args)`: the documented run() style gets the parsed namespace positionally.
    pass_namespace = parse_args is not None or (
        len(params) == 1 and params[0].name == "args" and params[0].default is sig.empty)
    if parse_args is not None:
        namespace = parse_args()
    elif pass_namespace:
        namespace = build_parser(func, INJECTED, skip=("args",)).parse_args()  # for --help
    else:
        namespace = build_parser(func, INJECTED).parse_args()

    try:
        config, _out, err, plt, colors, rngg = start(
            sys, None, file=_script_file(func), sdir_suffix=sdir_suffix or func.__name__,
            args=namespace, agg=agg, verbose=verbose, **start_kw)
    except ValueError as e:  # ./config/*.yaml names an unknown SESSION.ARCHIVE_FORMAT
        print(f"scitex_session: {func.__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    from ._start import get_logger

    injected = {"CONFIG": config, "plt": plt, "COLORS": colors, "rngg": rngg,
                "logger": get_logger(Path(config["FILE"]).stem)}
    g = getattr(func, "__globals__", None)
    if isinstance(g, dict):
        existing = g.get("plt")
        if inspect.ismodule(existing):
            injected["plt"] = existing  # the script's own pyplot, configured by the session
        g.update(injected)

    if pass_namespace:
        call = functools.partial(func, namespace)
    else:
        kwargs = {k: v for k, v in vars(namespace).items() if k in sig.parameters}
        for p in params:
            if p.default is INJECTED:
                if p.name not in injected:
                    raise TypeError(f"{func.__name__}(): cannot inject {p.name!r}; "
                                    f"injectable: {', '.join(INJECTABLE)}")
                kwargs[p.name] = injected[p.name]
        call = functools.partial(func, **kwargs)

    def finish(code: int) -> None:
        close(config, verbose=verbose, notify=notify, exit_status=code,
              archive_format=archive_format, **close_kw)
        if code == 0 and Path(config["SDIR_RUN"]).parent.name == ERROR_STATE:
            # close() itself failed a step (said on stderr) and filed the run as an
            # error: a scheduler must not see success.
            raise SystemExit(1)

    status: int = 1
    term = _TermToExit()
    try:
        try:
            result = call()
            status = _exit_status_of(result)
            term.shield()  # inside the try: a TERM before this line is handled above
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            term.shield()
            if status:
                _log_traceback(err)
            finish(status)
            raise
        except BaseException:  # KeyboardInterrupt too: the run is recorded as failed
            term.shield()
            _log_traceback(err)
            finish(1)
            raise
        finish(status)
    finally:
        term.restore()
    return result, status


SIGTERM_EXIT = 128 + 15


class _TermToExit:
    """Make SIGTERM end the run like Ctrl-C does: recorded as FINISHED_ERROR, exit 143.

    SLURM sends SIGTERM at the time limit and on scancel; by default it killed the process
    before close() and the run stayed in RUNNING/ forever. Installed only from the main
    thread and only over the default disposition (a script's own handler wins)."""

    def __init__(self) -> None:
        import signal
        import threading

        self._signal = signal
        self.active = (threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        if self.active:
            signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, _signum: int, _frame: Any) -> None:
        self.shield()
        raise SystemExit(SIGTERM_EXIT)

    def shield(self) -> None:
        # While close() moves the run dir a TERM (SLURM repeats it) must not cut it
        # short; SIGKILL still can, and leaves a RUNNING/ dir the stale-run tools find.
        if self.active:
            self._signal.signal(self._signal.SIGTERM, self._signal.SIG_IGN)

    def restore(self) -> None:
        if self.active:
            self._signal.signal(self._signal.SIGTERM, self._signal.SIG_DFL)
            self.active = False


# The decorator's documented defaults (API.md), which run() shares.
SESSION_DEFAULTS: dict[str, Any] = {"verbose": False, "agg": True, "notify": False,
                                    "sdir_suffix": None, "archive_format": None}


def session(
    func: Callable[..., Any] | None = None,
    *,
    verbose: bool = False,
    agg: bool = True,
    notify: bool = False,
    sdir_suffix: str | None = None,
    archive_format: str | None = None,
    **session_kwargs: Any,
) -> Any:
    """Decorator to wrap a script's entry point in a session.

    Called with no arguments the wrapped function parses the command line built from its
    signature, starts a session (run dir ``<ID>-<sdir_suffix or function name>``), injects
    CONFIG, plt, COLORS, rngg and logger into its module globals and into parameters that
    default to ``INJECTED``, runs, and closes the session by outcome. Called with arguments
    it just calls the function. Returns the function's result; an exception is recorded as
    FINISHED_ERROR and re-raised."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if args or kwargs:
                return f(*args, **kwargs)
            result, _status = _run_session(
                f, None, verbose=verbose, agg=agg, notify=notify, sdir_suffix=sdir_suffix,
                archive_format=archive_format, session_kwargs=session_kwargs)
            return result

        wrapper._is_session_wrapped = True  # type: ignore[attr-defined]
        wrapper._func = f  # type: ignore[attr-defined]
        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


def run(func: Callable[..., Any], parse_args: Callable[[], Any] | None = None,
        **session_kwargs: Any) -> int:
    """Run *func* with session management — the explicit alternative to ``@session``.

    With *parse_args* (a callable returning a namespace), or when *func* takes a single
    parameter named ``args``, *func* receives the namespace; otherwise the CLI is built from
    its signature. Returns the exit status (an exception is recorded and re-raised)."""
    opts = {k: session_kwargs.pop(k, d) for k, d in SESSION_DEFAULTS.items()}
    _result, status = _run_session(func, parse_args, **opts, session_kwargs=session_kwargs)
    return status
