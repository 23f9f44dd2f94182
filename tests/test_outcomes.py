"""
A task's outcome, queryable from any process: ``Gator.status`` through every state, and
``Gator.result`` of a success, a failure, a cancel and a wait that times out, on every
backend (beanstalkd through a result backend).
"""

import signal
import time

import pytest

from alligator import Gator, Worker, outcomes
from alligator.constants import TaskStatus
from alligator.exceptions import (
    AlligatorException,
    InvalidTaskError,
    ResultTimeout,
    TaskCanceled,
    TaskFailed,
)

from . import tasks
from .alligatord_support import write_config
from .outcome_support import start_worker
from .servers import kill_process, wait_for


def test_status_and_result_through_every_state_from_another_process(shared_gator_args, tmp_path):
    dsn, options = shared_gator_args
    gator = Gator(dsn, **options)
    go = tmp_path / "go"
    running = gator.task(tasks.wait_for_file, str(go))
    later = gator.options(delay_by=60).task(tasks.add, 1, 2)
    waiting = gator.task(tasks.add, 2, 3)
    assert gator.status(running.task_id) == TaskStatus.WAITING
    assert gator.status(later.task_id) == TaskStatus.DELAYED
    assert gator.status("no-such-task") == TaskStatus.UNKNOWN

    worker = start_worker(dsn, options, tmp_path / "worker.log")
    try:
        wait_for(lambda: gator.status(running.task_id) == TaskStatus.RUNNING)
        assert gator.status(waiting.task_id) == TaskStatus.WAITING
        with pytest.raises(ResultTimeout):
            gator.result(running.task_id, timeout=0)
        go.write_text("done")
        assert gator.result(running.task_id, timeout=20) == "done"
        assert gator.status(running.task_id) == TaskStatus.SUCCESS
        assert gator.result(waiting.task_id, timeout=20) == 5

        failing = gator.task(tasks.fail, "no luck")
        with pytest.raises(TaskFailed) as failed:
            gator.result(failing.task_id, timeout=20)
        assert failed.value.exc_type == "ValueError" and "no luck" in failed.value.error
        assert gator.status(failing.task_id) == TaskStatus.FAILED

        retrying = gator.options(retries=1, retry_delay=60).task(tasks.fail)
        wait_for(lambda: gator.status(retrying.task_id) == TaskStatus.RETRYING, timeout=20)
    finally:
        kill_process(worker)

    gator.cancel(later.task_id)
    assert gator.status(later.task_id) == TaskStatus.CANCELED
    with pytest.raises(TaskCanceled):
        gator.result(later.task_id, timeout=0)


def test_result_ttl_0_keeps_nothing_and_an_outcome_expires(gator_args, tmp_path):
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    kept = gator.options(result_ttl=1).task(tasks.add, 1, 1)
    none = gator.options(result_ttl=0).task(tasks.add, 2, 2)
    Worker(gator, max_tasks=2).run_forever()
    assert gator.result(kept.task_id, timeout=0) == 2
    assert gator.status(none.task_id) == TaskStatus.UNKNOWN
    with pytest.raises(ResultTimeout):
        gator.result(none.task_id, timeout=0)
    wait_for(lambda: gator.status(kept.task_id) == TaskStatus.UNKNOWN, timeout=5)


def test_result_waits_no_longer_than_its_timeout(gator_args):
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    task = gator.task(tasks.add, 1, 1)
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        gator.result(task.task_id, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.5


def test_a_beanstalk_gator_without_a_result_backend_says_so_when_asked(beanstalkd, queue_name):
    gator = Gator(f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/", queue_name=queue_name)
    task = gator.task(tasks.add, 1, 2)  # pushing needs none
    for ask in (gator.status, gator.result):
        with pytest.raises(AlligatorException, match="keeps no task outcomes: give the Gator a"):
            ask(task.task_id)


def test_alligatord_keeps_a_beanstalk_queues_outcomes_in_its_result_backend(
    daemons, beanstalkd, queue_name, tmp_path
):
    dsn = f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/"
    results = f"sqlite:///{tmp_path / 'results.db'}"
    config = write_config(
        tmp_path / "a.ini",
        dsn,
        {queue_name: {"workers": 1}},
        graceful_timeout=5,
        result_backend=results,
        tasks="tests.tasks",
    )
    daemon = daemons(config)
    gator = Gator(dsn, queue_name=queue_name, result_backend=results)
    assert gator.result(gator.task(tasks.add, 20, 22).task_id, timeout=20) == 42
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_retried_task_is_followed_to_its_outcome(gator_args, tmp_path):
    """Even on beanstalkd, where a retry is a job of its own: its first id leads to it."""
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    task = gator.options(retries=1).task(tasks.fail_once, str(tmp_path / "attempts"), "second")
    Worker(gator, max_tasks=1).run_forever()
    assert gator.status(task.task_id) == TaskStatus.RETRYING
    Worker(gator, max_tasks=1).run_forever()
    assert gator.result(task.task_id, timeout=5) == "second"
    assert gator.status(task.task_id) == TaskStatus.SUCCESS


def test_pointers_round_in_a_circle_are_an_error_not_a_hang(beanstalkd, queue_name, tmp_path):
    results = f"sqlite:///{tmp_path / 'results.db'}"
    gator = Gator(
        f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/",
        queue_name=queue_name,
        result_backend=results,
    )
    for old, new in (("1", "2"), ("2", "1")):
        gator.result_backend.move(queue_name, old, new, outcomes.moved(new, 60))
    for ask in (gator.status, lambda task_id: gator.result(task_id, timeout=0)):
        with pytest.raises(InvalidTaskError, match="round in a circle"):
            ask("1")
