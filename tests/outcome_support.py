"""Gators and worker processes for the tests of outcomes and dependencies, on every backend
(beanstalkd with a result backend, since it keeps no outcomes itself)."""

import subprocess
import sys

from .servers import ROOT


def args_for(dsn, queue_name, tmp_path, **dsn_options):
    """What a Gator of the backend takes: beanstalkd keeps outcomes in an SQLite file."""
    options = {"queue_name": queue_name}
    if dsn.backend == "beanstalk":
        options["result_backend"] = f"sqlite:///{tmp_path / 'results.db'}"
    return dsn(**dsn_options), options


WORKER = """
import os, signal, sys
from alligator import Gator, Worker

dsn, queue, results, kill_after = sys.argv[1:]
gator = Gator(dsn, queue_name=queue, result_backend=results or None)
if kill_after:
    # SIGKILLs this worker the moment the end of that task is recorded: by the result
    # backend when there is one (which releases the tasks held on it), else with its ack.
    store = gator.result_backend or gator.backend
    name = "finish" if gator.result_backend else "ack"
    end = getattr(store, name)

    def end_then_die(queue_name, task_id, *args):
        returned = end(queue_name, task_id, *args)
        if task_id == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return returned

    setattr(store, name, end_then_die)
Worker(gator, allowed_tasks=["tests.tasks"]).run_forever()
"""


def start_worker(dsn: str, options: dict, log_path, kill_after: str = "") -> subprocess.Popen:
    """A worker of its own, in another process: what it does is seen from this one. With
    ``kill_after``, it kills itself right after the end of that task is recorded."""
    arguments = [dsn, options["queue_name"], options.get("result_backend", ""), kill_after]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, *arguments],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
