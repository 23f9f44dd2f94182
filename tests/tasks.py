"""Importable task functions the tests enqueue (workers in other processes import them)."""

import os
import sys
import time
from pathlib import Path


def add(a, b):
    return a + b


def fail(message="boom"):
    raise ValueError(message)


def exit_early():
    """A buggy task: it asks the whole process to exit."""
    sys.exit(3)


def append_line(path, line):
    """Appends ``line`` to a file: a record, visible across processes, that the task ran."""
    with open(path, "a") as handle:
        handle.write(f"{line}\n")
    return line


def record_then_sleep(path, seconds):
    """Records the worker's pid, then sleeps: a task that is still running when killed."""
    append_line(path, os.getpid())
    time.sleep(seconds)
    return seconds


def lines(path) -> list[str]:
    """Reads what ``append_line`` wrote (an empty list before the first line)."""
    file = Path(path)
    return file.read_text().splitlines() if file.exists() else []


def stamp_and_fail(path):
    """Records the time of this attempt (epoch seconds), then fails."""
    append_line(path, time.time())
    raise RuntimeError("failing on purpose")


def wait_for_file(path, seconds=30):
    """Runs until ``path`` exists (or ``seconds`` pass), then returns its text."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return Path(path).read_text() if Path(path).exists() else None


def fail_once(path, value):
    """Fails on its first run (counted in ``path``), then returns ``value``."""
    append_line(path, "attempt")
    if len(lines(path)) == 1:
        raise RuntimeError("first attempt fails")
    return value
