"""
``depends_on``, for real, on every backend (beanstalkd through its result backend): a task
waits until the tasks it depends on succeeded, across queues and processes; a failure
cancels it; a worker killed right after a dependency ended strands nothing.
"""

import signal
import time

import greenstalk
import pytest

from alligator import Gator, Task, Worker
from alligator.constants import TaskStatus
from alligator.exceptions import AlligatorException, TaskCanceled, UnknownTaskError
from alligator.gator import new_consumer_id

from . import tasks
from .outcome_support import args_for, start_worker
from .servers import kill_process, wait_for


def other_queue(options: dict) -> dict:
    return {**options, "queue_name": options["queue_name"] + "-2"}


def test_a_chain_across_two_queues_runs_in_order_in_other_processes(shared_gator_args, tmp_path):
    dsn, options = shared_gator_args
    first, second = Gator(dsn, **options), Gator(dsn, **other_queue(options))
    order = str(tmp_path / "order")
    a = first.task(tasks.append_line, order, "a")
    b = second.options(depends_on=[a]).task(tasks.append_line, order, "b")
    c = first.options(depends_on=[b]).task(tasks.append_line, order, "c")
    assert second.status(b.task_id) == TaskStatus.WAITING
    assert first.status(c.task_id) == TaskStatus.WAITING
    assert first.len() == 2 and second.len() == 1  # held tasks wait in their queue

    workers = [
        start_worker(dsn, options, tmp_path / "first.log"),
        start_worker(dsn, other_queue(options), tmp_path / "second.log"),
    ]
    try:
        assert first.result(c.task_id, timeout=30) == "c"
    finally:
        for worker in workers:
            kill_process(worker)
    assert tasks.lines(order) == ["a", "b", "c"]
    assert second.status(b.task_id) == TaskStatus.SUCCESS


def test_a_failed_dependency_cancels_its_dependents_and_theirs(gator_args):
    dsn, options = gator_args
    gator, elsewhere = Gator(dsn, **options), Gator(dsn, **other_queue(options))
    a = gator.task(tasks.fail, "no luck")
    b = elsewhere.options(depends_on=[a]).task(tasks.add, 1, 2)
    c = gator.options(depends_on=[b]).task(tasks.add, 2, 3)
    Worker(gator, max_tasks=1).run_forever()
    assert gator.status(a.task_id) == TaskStatus.FAILED
    for dependent, queue in ((b, elsewhere), (c, gator)):
        assert queue.status(dependent.task_id) == TaskStatus.CANCELED
        with pytest.raises(TaskCanceled, match=f"task {a.task_id} of queue"):
            queue.result(dependent.task_id, timeout=0)
    assert gator.len() == 0 and elsewhere.len() == 0


def test_canceling_a_dependency_or_a_held_task_cancels_what_waits_on_it(gator_args):
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    later = gator.options(delay_by=60).task(tasks.add, 1, 1)
    held = gator.options(depends_on=[later]).task(tasks.add, 1, 2)
    after_held = gator.options(depends_on=[held]).task(tasks.add, 1, 3)
    canceled = gator.cancel(held.task_id)
    assert canceled.func_args == [1, 2]
    assert gator.status(held.task_id) == TaskStatus.CANCELED
    assert gator.status(after_held.task_id) == TaskStatus.CANCELED
    waiting = gator.options(depends_on=[later]).task(tasks.add, 1, 4)
    gator.cancel(later.task_id)
    assert gator.status(waiting.task_id) == TaskStatus.CANCELED
    assert gator.len() == 0


def test_a_dependency_that_already_succeeded_counts_as_done(gator_args):
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    a = gator.task(tasks.add, 1, 1)
    Worker(gator, max_tasks=1).run_forever()
    b = gator.options(depends_on=[a.task_id]).task(tasks.add, 2, 2)
    assert gator.status(b.task_id) == TaskStatus.WAITING
    Worker(gator, max_tasks=1).run_forever()
    assert gator.result(b.task_id, timeout=5) == 4


def test_an_unknown_dependency_is_refused_at_enqueue(gator_args):
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    with pytest.raises(UnknownTaskError, match="424242"):
        gator.options(depends_on=["424242"]).task(tasks.add, 1, 2)
    assert gator.len() == 0


def test_a_dependency_that_retries_is_followed_to_its_success(gator_args, tmp_path):
    """On beanstalkd a retry is a job with an id of its own: what waits on the task moves."""
    dsn, options = gator_args
    gator = Gator(dsn, **options)
    a = gator.options(retries=1).task(tasks.fail_once, str(tmp_path / "attempts"), "a")
    b = gator.options(depends_on=[a]).task(tasks.add, 2, 3)
    Worker(gator, max_tasks=3).run_forever()
    assert gator.result(b.task_id, timeout=5) == 5


def test_a_dependency_retried_while_other_workers_wait_releases_its_dependents(
    shared_gator_args, tmp_path
):
    """On beanstalkd the retry is a new job that an idle worker takes at once: what waits on
    the task must be carried over to it first."""
    dsn, options = shared_gator_args
    gator = Gator(dsn, **options)
    a = gator.options(retries=1).task(tasks.fail_once, str(tmp_path / "attempts"), "a")
    b = gator.options(depends_on=[a]).task(tasks.add, 2, 3)
    workers = [start_worker(dsn, options, tmp_path / f"worker{n}.log") for n in range(2)]
    try:
        assert gator.result(b.task_id, timeout=30) == 5
    finally:
        for worker in workers:
            kill_process(worker)
    assert gator.result(a.task_id, timeout=0) == "a"


def slowly(method, seconds=1.0):
    """``method``, made to start ``seconds`` late: a worker that stalls before that step."""

    def slow(*args):
        time.sleep(seconds)
        return method(*args)

    return slow


def idle_worker_on(gator, tmp_path, beanstalkd):
    """A worker in another process, started for the gator's queue; returns once it waits."""
    options = {"queue_name": gator.queue_name, "result_backend": gator.result_backend.conn_string}
    worker = start_worker(gator.conn_string, options, tmp_path / "worker.log")
    with greenstalk.Client((beanstalkd.host, beanstalkd.port)) as admin:
        wait_for(lambda: _waiting_on(admin, gator.queue_name) > 0)
    return worker


def _waiting_on(admin, tube: str) -> int:
    try:
        return admin.stats_tube(tube)["current-waiting"]
    except greenstalk.NotFoundError:
        return 0


@pytest.fixture
def beanstalk_gators(beanstalkd, queue_name, tmp_path):
    """Two gators on beanstalkd queues, with one result backend."""
    dsn = f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/"
    results = f"sqlite:///{tmp_path / 'results.db'}"
    return (
        Gator(dsn, queue_name=queue_name, result_backend=results),
        Gator(dsn, queue_name=queue_name + "-2", result_backend=results),
    )


def test_no_worker_takes_a_released_task_before_what_waits_on_it_moved(
    beanstalk_gators, beanstalkd, tmp_path
):
    """beanstalkd gives a released task a new id: the tasks waiting on it move to that id
    while the job is parked, even when the worker forwarding it stalls."""
    first, second = beanstalk_gators
    a = first.task(tasks.add, 1, 1)
    b = second.options(depends_on=[a]).task(tasks.add, 1, 2)
    c = first.options(depends_on=[b]).task(tasks.add, 1, 3)
    worker = idle_worker_on(second, tmp_path, beanstalkd)
    try:
        first.result_backend.hand_over = slowly(first.result_backend.hand_over)
        Worker(first, max_tasks=1).run_forever()  # runs a, forwards b to its queue
        assert second.result(b.task_id, timeout=20) == 3
        Worker(first, max_tasks=1).run_forever()
        assert first.result(c.task_id, timeout=20) == 4
    finally:
        kill_process(worker)


def test_no_worker_takes_a_retry_before_what_waits_on_it_moved(
    beanstalk_gators, beanstalkd, tmp_path
):
    first, _ = beanstalk_gators
    a = first.options(retries=1).task(tasks.fail_once, str(tmp_path / "attempts"), "a")
    b = first.options(depends_on=[a]).task(tasks.add, 2, 3)
    consumer = new_consumer_id()
    task = first.reserve(consumer)
    assert task.task_id == a.task_id
    worker = idle_worker_on(first, tmp_path, beanstalkd)
    try:
        first.result_backend.move = slowly(first.result_backend.move)
        first.execute(task)  # fails, and retries as a new job
        assert first.result(b.task_id, timeout=20) == 5
    finally:
        kill_process(worker)


def test_a_worker_killed_right_after_a_dependency_ended_strands_nothing(
    shared_backend_dsn, queue_name, tmp_path
):
    # A short lease: beanstalkd's workers look for what a crash left every lease / 3 s.
    dsn, options = args_for(shared_backend_dsn, queue_name, tmp_path, lease=3)
    gator = Gator(dsn, **options)
    order = str(tmp_path / "order")
    a = gator.task(tasks.append_line, order, "a")
    b = gator.options(depends_on=[a]).task(tasks.append_line, order, "b")
    killed = start_worker(dsn, options, tmp_path / "killed.log", kill_after=a.task_id)
    try:
        assert killed.wait(timeout=30) == -signal.SIGKILL
    finally:
        kill_process(killed)
    assert tasks.lines(order) == ["a"]
    assert gator.status(b.task_id) == TaskStatus.WAITING
    worker = start_worker(dsn, options, tmp_path / "worker.log")
    try:
        assert gator.result(b.task_id, timeout=30) == "b"
    finally:
        kill_process(worker)
    assert tasks.lines(order)[-1] == "b"


def test_dependencies_need_a_backend_that_keeps_them(beanstalkd, queue_name):
    gator = Gator(f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/", queue_name=queue_name)
    a = gator.task(tasks.add, 1, 2)
    with pytest.raises(AlligatorException, match="keeps no dependencies: give the Gator a"):
        gator.options(depends_on=[a]).task(tasks.add, 2, 3)


def test_a_synchronous_task_runs_at_once(gator):
    ran = gator.push(Task(is_async=False, depends_on=["anything"]), tasks.add, 1, 2)
    assert ran.result == 3


def test_a_result_backend_must_be_another_backend(tmp_path):
    dsn = f"sqlite:///{tmp_path / 'queue.db'}"
    with pytest.raises(AlligatorException, match="is its own backend"):
        Gator(dsn, result_backend=dsn)
