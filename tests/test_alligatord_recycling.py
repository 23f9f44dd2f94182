"""Recycling: max_tasks and max_memory retire a worker gracefully; timeout kills one."""

import signal
from collections import Counter

import pytest

from alligator.gator import Gator

from . import alligatord_support as support
from . import tasks
from .alligatord_support import lines, sqlite_dsn, write_config
from .servers import wait_for


def test_max_tasks_recycles_a_worker_without_a_backoff(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    queues = {"a": {"workers": 1, "max_tasks": 2}}
    daemon = daemons(write_config(tmp_path / "a.ini", dsn, queues, graceful_timeout=5))
    [first] = daemon.wait_workers({"a": 1})["a"]
    record = tmp_path / "pids.txt"
    gator = Gator(dsn, queue_name="a")
    for _ in range(5):
        gator.task(tasks.record_then_sleep, str(record), 0)
    wait_for(lambda: len(lines(record)) == 5, message="five tasks to run")
    runs = Counter(lines(record))
    assert runs[str(first)] == 2
    assert len(runs) == 3 and max(runs.values()) == 2
    daemon.wait_workers({"a": 1})
    log = daemon.log()
    assert log.count("recycling after this task (max_tasks=2)") >= 2
    assert "BACKOFF" not in log  # a recycled worker is no failed start
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_max_memory_recycles_the_worker_that_grew(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    queues = {"a": {"workers": 2, "max_memory": "120M"}}
    daemon = daemons(write_config(tmp_path / "a.ini", dsn, queues, graceful_timeout=5))
    workers = daemon.wait_workers({"a": 2})["a"]
    record = tmp_path / "pids.txt"
    Gator(dsn, queue_name="a").task(support.hold_memory, str(record), 200)
    [grown] = [int(pid) for pid in wait_for(lambda: lines(record), message="the task to run")]
    [other] = [pid for pid in workers if pid != grown]
    wait_for(lambda: grown not in daemon.workers(), timeout=8, message="the recycling")
    after = daemon.wait_workers({"a": 2})["a"]
    assert other in after and grown not in after
    assert f"(pid {grown}): RUNNING -> STOPPING: recycling: its own memory (USS)" in daemon.log()
    assert "max_memory 120 MiB" in daemon.log()
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


@pytest.fixture(params=["sqlite", "redis"])
def dsn(request, tmp_path):
    return support.backend_dsn(request, tmp_path)


def test_timeout_kills_the_worker_and_counts_a_failed_attempt(daemons, dsn, tmp_path):
    queues = {"a": {"workers": 1, "timeout": 1}}
    daemon = daemons(write_config(tmp_path / "a.ini", dsn, queues, graceful_timeout=5))
    daemon.wait_workers({"a": 1})
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name="a")
    with gator.options(retries=1, retry_delay=1.5, retry_jitter=False) as opts:
        task = opts.task(support.stamp_then_sleep, str(record), 60)

    # The first run is killed after a second and retried once, 1.5 s after the kill; the
    # retry is killed too, and with no retry left the task goes to the dead letters.
    dead = wait_for(gator.dead_letters, timeout=15, message="the task to be dead-lettered")
    assert [letter.task_id for letter in dead] == [task.task_id]
    assert "ran longer than timeout=1s" in dead[0].error
    starts = lines(record)
    assert len(starts) == 2 and all(line.startswith("start") for line in starts)
    assert starts[0] != starts[1]  # a new worker each time
    first, second = (float(line.split()[2]) for line in starts)
    # The timeout (counted from the moment the task was taken, a few milliseconds before it
    # started), then the retry's delay, counted from the kill.
    assert second - first >= 1 + 1.5 - 0.05
    assert gator.len() == 0
    log = daemon.log()
    assert log.count("ran longer than timeout=1s; killing the worker") == 2
    killed = "Killed by alligatord: the task ran longer than timeout=1s"
    assert (
        f"{killed} (worker pid {starts[0].split()[1]}). The run counts as a failed attempt; "
        "it will be retried in 1.5s." in log
    )
    assert f"{killed} (worker pid {starts[1].split()[1]}). It had no retries left;" in log
    daemon.wait_workers({"a": 1})
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
