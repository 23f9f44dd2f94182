"""Importable hook functions: they record their calls so tests can look at them."""

import os

CALLS: list = []


def on_start(task):
    CALLS.append(("start", task.task_id, task.status))


def on_success(task, result):
    CALLS.append(("success", task.task_id, result))


def on_error(task, exc):
    CALLS.append(("error", task.task_id, str(exc)))


FLAKY_FAILURES = {"left": 0}


def flaky(value):
    """Fails while FLAKY_FAILURES['left'] > 0, then returns ``value``."""
    if FLAKY_FAILURES["left"] > 0:
        FLAKY_FAILURES["left"] -= 1
        raise RuntimeError("not yet")
    return value


def record_pid(task, result):
    """An on_success hook for ``tasks.append_line`` tasks: records which process ran it."""
    with open(task.func_args[0], "a") as handle:
        handle.write(f"hook in {os.getpid()}\n")
