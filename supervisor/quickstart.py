"""
A task for trying alligatord out, and a command that enqueues it on the quickstart queue.

Ex::

    python -m supervisor.quickstart newcomer    # alligatord -c etc/quickstart.ini runs it
"""

import logging
import os
import sys

from alligator import Gator

log = logging.getLogger(__name__)

#: The queue of ``etc/quickstart.ini``: a SQLite file in the current directory. The file
#: states it too (it is an alligatord configuration); a test checks that the two agree.
QUICKSTART_DSN = "sqlite:///alligator-quickstart.db"


def greet(name: str = "world") -> str:
    """
    Logs a greeting from the worker that runs it, and returns it.

    Ex::

        gator.task(greet, 'newcomer')
    """
    greeting = f"Hello, {name}! (from alligatord worker pid {os.getpid()})"
    log.info("%s", greeting)
    return greeting


def main(argv: list[str] | None = None) -> int:
    """Enqueues ``greet`` once for each name given (or for "world")."""
    gator = Gator(QUICKSTART_DSN)
    for name in (sys.argv[1:] if argv is None else argv) or ["world"]:
        task = gator.task(greet, name)
        print(f"Queued task {task.task_id}: greet({name!r}).")
    return 0


if __name__ == "__main__":
    # Through the module's importable name: a worker cannot import greet from __main__.
    from supervisor.quickstart import main as enqueue

    sys.exit(enqueue())
