"""Tee stdout/stderr into ``logs/stdout.log`` / ``logs/stderr.log``.

The terminal receives every byte unchanged (colours, progress bars). The stored log is what
a person wants to read later: ANSI escape codes stripped, and a line rewritten in place with
``\\r`` (tqdm, pip, rsync) stored once, in its last state, rather than once per refresh
(Sacred #440, wandb #1265). "Last state" is the text after the last ``\\r`` of the line:
progress bars repaint the whole line, which is the case that matters.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from pathlib import Path
from typing import IO, Any

# CSI (colours, cursor moves), OSC (titles, hyperlinks) and two-character escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text) if "\x1b" in text else text


class LogCleaner:
    """Turns a terminal byte stream into clean log lines written to *sink*.

    Text is held until its line is complete, because a ``\\r`` may still rewrite it and an
    escape sequence may be split across two writes."""

    def __init__(self, sink: IO[str]) -> None:
        self._sink = sink
        self._line: list[str] = []
        self._pending_cr = False  # the last write ended in "\r": rewind unless "\n" follows

    def feed(self, text: str) -> None:
        if not text:
            return
        if self._pending_cr:
            self._pending_cr = False
            if not text.startswith("\n"):  # "\r\n" is a plain line end, not a rewind
                self._line = []
        parts = text.split("\n")
        for part in parts[:-1]:
            self._take(part, at_line_end=True)
            self._sink.write(strip_ansi("".join(self._line)) + "\n")
            self._line = []
        self._take(parts[-1], at_line_end=False)

    def _take(self, part: str, at_line_end: bool) -> None:
        if "\r" not in part:
            if part:
                self._line.append(part)
            return
        segments = part.split("\r")
        if segments[0]:
            self._line.append(segments[0])
        for seg in segments[1:]:
            if seg:
                self._line = [seg]
        if part.endswith("\r") and not at_line_end:
            self._pending_cr = True

    def finish(self) -> None:
        """Write the unterminated last line, if any, in its last state."""
        if self._line:
            self._sink.write(strip_ansi("".join(self._line)))
            self._line = []
        self._pending_cr = False


class Tee:
    """A text stream that writes to the terminal stream and a cleaned log file.

    Everything not defined here (``encoding``, ``isatty``, ``fileno``, ``buffer`` ...) is the
    terminal stream's, so libraries that probe the stream (tqdm, colour detection) see the
    real terminal."""

    def __init__(self, stream: IO[str], log_path: str | Path) -> None:
        self._stream = stream
        self._log: IO[str] | None = open(  # noqa: SIM115 - closed by close_log()
            log_path, "w", encoding="utf-8", errors="backslashreplace"
        )
        self._cleaner = LogCleaner(self._log)
        self._lock = threading.RLock()
        self.log_path = Path(log_path)

    @property
    def stream(self) -> IO[str]:
        return self._stream

    def write(self, text: str) -> int:
        # Log first: if the terminal is gone (closed pipe) the record of the run survives.
        with self._lock:
            if self._log is not None:
                self._cleaner.feed(text)
        self._stream.write(text)
        return len(text)

    def log_only(self, text: str) -> None:
        """Record *text* in the log without showing it on the terminal."""
        with self._lock:
            if self._log is not None:
                self._cleaner.feed(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.flush()
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def close_log(self) -> None:
        """Finish and close the log file; later writes reach only the terminal."""
        with self._lock:
            if self._log is None:
                return
            self._cleaner.finish()
            self._log.close()
            self._log = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers: list[logging.Logger | logging.PlaceHolder] = [logging.getLogger()]
    loggers.extend(logging.Logger.manager.loggerDict.values())
    out = []
    for lg in loggers:
        for h in getattr(lg, "handlers", ()):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                out.append(h)
    return out


def _retarget_handlers(mapping: dict[int, Any]) -> None:
    # A handler made before start() (logging.basicConfig at import time) holds the original
    # sys.stderr; point it at the tee so its records reach the log, and back at close.
    for h in _stream_handlers():
        new = mapping.get(id(h.stream))
        if new is not None:
            h.setStream(new)


class TeeSession:
    """Installs the two tees on ``sys`` and removes them again."""

    def __init__(self, logs_dir: str | Path) -> None:
        logs = Path(logs_dir)
        logs.mkdir(parents=True, exist_ok=True)
        self.orig_stdout = sys.stdout
        self.orig_stderr = sys.stderr
        self.stdout = Tee(sys.stdout, logs / "stdout.log")
        self.stderr = Tee(sys.stderr, logs / "stderr.log")
        sys.stdout = self.stdout  # type: ignore[assignment]
        sys.stderr = self.stderr  # type: ignore[assignment]
        _retarget_handlers({id(self.orig_stdout): self.stdout, id(self.orig_stderr): self.stderr})

    def uninstall(self) -> None:
        for tee in (self.stdout, self.stderr):
            tee.flush()
        _retarget_handlers({id(self.stdout): self.orig_stdout, id(self.stderr): self.orig_stderr})
        if sys.stdout is self.stdout:
            sys.stdout = self.orig_stdout
        if sys.stderr is self.stderr:
            sys.stderr = self.orig_stderr
        self.stdout.close_log()
        self.stderr.close_log()
