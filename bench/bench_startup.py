"""Start-up time: the real command in a pseudo-terminal, until its first screen is drawn.

    python bench/bench_startup.py [--repeats 3]

Prints, per command, the seconds from process start to the first frame (the status line's text on
the terminal), best and worst of the repeats; `nntrace --help` is timed to its exit. Targets: first
frame < 1.0 s for `nntrace` (the shipped CNN) and `nntrace lstm`, `--help` < 0.3 s.
"""
from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import sys
import time

COMMANDS = {"nntrace": ["cnn"], "nntrace lstm": ["lstm"]}
MARK = b"layer 1/"  # the status line: drawn with the first frame


def first_frame(args: list[str], timeout: float = 60.0) -> float:
    """Seconds from fork to the first frame of `python -m nntrace.cli ARGS` in a 120×40 terminal."""
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
        os.execv(sys.executable, [sys.executable, "-m", "nntrace.cli", *args])
    output, seen = b"", None
    deadline = start + timeout
    while time.perf_counter() < deadline and seen is None:
        if select.select([fd], [], [], 0.01)[0]:
            try:
                output += os.read(fd, 65536)
            except OSError:
                break
            if MARK in output:
                seen = time.perf_counter() - start
    os.write(fd, b"q")
    end = time.perf_counter() + 20
    while time.perf_counter() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        if select.select([fd], [], [], 0.1)[0]:
            try:
                os.read(fd, 65536)
            except OSError:
                pass
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    if seen is None:
        raise RuntimeError(f"no first frame from {' '.join(args)}: {output[-300:]!r}")
    return seen


def help_time() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nntrace.cli", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [("nntrace --help", [help_time() for _ in range(args.repeats)], 0.3)]
    for name, argv in COMMANDS.items():
        rows.append((name + " (first frame)", [first_frame(argv) for _ in range(args.repeats)], 1.0))
    print(f"{'command':32} {'best s':>8} {'worst s':>8} {'target':>8}")
    for name, times, target in rows:
        verdict = "ok" if max(times) < target else "over"
        print(f"{name:32} {min(times):8.2f} {max(times):8.2f} {'< ' + str(target):>8}  {verdict}")


if __name__ == "__main__":
    main()
