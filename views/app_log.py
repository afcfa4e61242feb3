"""Where the app writes what is not for the screen: TensorFlow's messages and tracebacks.

While the app runs, file descriptor 2 goes to `nntrace.log` in the state directory (TensorFlow's
C++ logging writes there directly), and the terminal keeps a descriptor of its own for drawing.
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator


def state_dir() -> Path:
    """The user's nntrace state directory (`$NNTRACE_STATE` moves it)."""
    from platformdirs import user_state_dir

    return Path(os.environ.get("NNTRACE_STATE") or user_state_dir("nntrace"))


def log_path() -> Path:
    return state_dir() / "nntrace.log"


def log_exception(error: BaseException, where: str = "") -> Path:
    """Append a traceback to the log; returns the log's path (even when it cannot be written)."""
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"\n--- {datetime.now():%Y-%m-%d %H:%M:%S} unexpected error{' in ' + where if where else ''}\n")
            f.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        pass
    return path


@contextmanager
def stderr_to_log() -> Iterator[Path | None]:
    """Send fd 2 to the log for the duration; `sys.__stderr__` (which Textual draws on) becomes a
    duplicate of the terminal. Yields the log's path (None when it could not be opened)."""
    path: Path | None = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = open(path, "a", encoding="utf-8", buffering=1)
    except OSError:
        path, sink = None, open(os.devnull, "w", encoding="utf-8")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    saved_fd = os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
    saved_streams = sys.__stderr__, sys.stderr
    os.dup2(sink.fileno(), 2)
    sys.__stderr__ = terminal
    sys.stderr = sink
    try:
        yield path
    finally:
        for stream in (terminal, sink):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.__stderr__, sys.stderr = saved_streams
        terminal.close()
        sink.close()
