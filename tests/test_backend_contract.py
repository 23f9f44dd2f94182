"""The Client contract, held against every backend with the same tests."""

import os
import signal
import threading
import time

import pytest

from alligator import Gator, Worker
from alligator.backends import client_class
from alligator.exceptions import DuplicateTaskError

from . import tasks
from .servers import kill_process, start_latergator, wait_for

CONSUMER = "test-host:1:consumer"
OTHER = "test-host:2:other"


@pytest.fixture
def client(backend_dsn):
    client = client_class(backend_dsn())(backend_dsn())
    yield client
    client.close()


def push_many(client, queue_name, count):
    return [client.push(queue_name, f"task-{n}", f"payload-{n}") for n in range(count)]


def test_fifo(client, queue_name):
    ids = push_many(client, queue_name, 5)
    reserved = [client.reserve(queue_name, CONSUMER) for _ in ids]
    assert [r.task_id for r in reserved] == ids
    assert [r.data for r in reserved] == [f"payload-{n}" for n in range(5)]
    assert client.reserve(queue_name, CONSUMER) is None


def test_queues_are_separate(client, queue_name):
    client.push(queue_name, "a", "in-first")
    client.push(queue_name + "x", "b", "in-second")
    assert client.reserve(queue_name + "x", CONSUMER).data == "in-second"
    assert client.reserve(queue_name, CONSUMER).data == "in-first"


def test_len_counts_ready_and_delayed_not_inflight(client, queue_name):
    assert client.len(queue_name) == 0
    push_many(client, queue_name, 3)
    client.push(queue_name, "later", "delayed", delay_until=time.time() + 60)
    assert client.len(queue_name) == 4
    client.reserve(queue_name, CONSUMER)
    assert client.len(queue_name) == 3


def test_reserve_waits_for_a_push(client, queue_name):
    started = time.monotonic()
    assert client.reserve(queue_name, CONSUMER, timeout=0.3) is None
    assert time.monotonic() - started >= 0.25
    client.push(queue_name, "t", "data")
    assert client.reserve(queue_name, CONSUMER, timeout=5).data == "data"


def test_delayed_task_is_never_early(client, queue_name):
    due = time.time() + 1.5
    task_id = client.push(queue_name, "t", "delayed", delay_until=due)
    reserved = client.reserve(queue_name, CONSUMER, timeout=0.5)
    assert reserved is None
    reserved = wait_for(lambda: client.reserve(queue_name, CONSUMER, timeout=0.5), timeout=10)
    assert time.time() >= due
    assert reserved.task_id == task_id


def test_delay_in_the_past_is_ready_at_once(client, queue_name):
    client.push(queue_name, "t", "now", delay_until=time.time() - 10)
    assert client.reserve(queue_name, CONSUMER, timeout=2).data == "now"


def test_ack_removes_for_good(client, queue_name):
    task_id = client.push(queue_name, "t", "data")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, task_id, CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    assert client.reserve(queue_name, CONSUMER) is None
    assert client.len(queue_name) == 0


def test_requeue_inflight_puts_tasks_back_at_the_front(client, queue_name):
    first, second, third = push_many(client, queue_name, 3)
    client.reserve(queue_name, CONSUMER)
    client.reserve(queue_name, OTHER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 1
    assert client.reserve(queue_name, CONSUMER).task_id == first
    assert client.reserve(queue_name, CONSUMER).task_id == third
    # OTHER's task was left alone.
    assert client.requeue_inflight(queue_name, OTHER) == 1
    assert client.reserve(queue_name, CONSUMER).task_id == second


def test_expired_lease_is_requeued_and_a_kept_one_is_not(leased_backend_dsn, queue_name):
    dsn = leased_backend_dsn(lease=1)
    client = client_class(dsn)(dsn)
    held, kept = push_many(client, queue_name, 2)
    client.reserve(queue_name, CONSUMER)
    client.reserve(queue_name, OTHER)
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        client.keepalive(queue_name, OTHER)
        time.sleep(0.2)
    assert client.requeue_expired(queue_name) == 1
    assert client.reserve(queue_name, "third").task_id == held
    assert client.reserve(queue_name, "third") is None
    client.close()


def test_a_task_id_is_unique_within_a_queue(keyed_backend_dsn, queue_name):
    client = client_class(keyed_backend_dsn())(keyed_backend_dsn())
    client.push(queue_name, "same", "first")
    with pytest.raises(DuplicateTaskError):
        client.push(queue_name, "same", "waiting twice")
    client.reserve(queue_name, CONSUMER)
    with pytest.raises(DuplicateTaskError):
        client.push(queue_name, "same", "while in flight")
    client.add_dead_letter(queue_name, "same", "first", "boom", CONSUMER)
    with pytest.raises(DuplicateTaskError):
        client.push(queue_name, "same", "while dead")
    # Other queues have their own ids.
    client.push(queue_name + "x", "same", "elsewhere")
    assert client.len(queue_name) == 0
    assert [d.data for d in client.list_dead_letters(queue_name)] == ["first"]
    client.close()


def test_a_consumer_that_lost_its_task_cannot_settle_it(client, queue_name):
    task_id = client.push(queue_name, "t", "data")
    client.reserve(queue_name, CONSUMER)
    # CONSUMER is taken for dead; OTHER now holds the task.
    client.requeue_inflight(queue_name, CONSUMER)
    assert client.reserve(queue_name, OTHER, timeout=2).task_id == task_id

    client.ack(queue_name, task_id, CONSUMER)
    client.retry(queue_name, task_id, CONSUMER, "changed")
    client.add_dead_letter(queue_name, task_id, "data", "boom", CONSUMER)

    assert client.len(queue_name) == 0
    assert client.list_dead_letters(queue_name) == []
    assert client.requeue_inflight(queue_name, OTHER) == 1
    reserved = client.reserve(queue_name, OTHER, timeout=2)
    assert (reserved.task_id, reserved.data) == (task_id, "data")
    client.ack(queue_name, task_id, OTHER)
    assert client.requeue_inflight(queue_name, OTHER) == 0


def test_retry_replaces_payload_and_readies_the_task(client, queue_name):
    task_id = client.push(queue_name, "t", "first try")
    client.reserve(queue_name, CONSUMER)
    new_id = client.retry(queue_name, task_id, CONSUMER, "second try")
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    reserved = client.reserve(queue_name, CONSUMER, timeout=2)
    assert (reserved.task_id, reserved.data) == (new_id, "second try")


def test_get_takes_a_specific_task(client, queue_name):
    first, second = push_many(client, queue_name, 2)
    reserved = client.get(queue_name, second, CONSUMER)
    assert (reserved.task_id, reserved.data) == (second, "payload-1")
    assert client.get(queue_name, second, CONSUMER) is None
    assert client.reserve(queue_name, CONSUMER).task_id == first
    # The task got is in flight: requeued if its consumer dies.
    assert client.requeue_inflight(queue_name, CONSUMER) == 2


def test_get_a_delayed_task(client, queue_name):
    task_id = client.push(queue_name, "t", "later", delay_until=time.time() + 60)
    assert client.get(queue_name, task_id, CONSUMER).data == "later"


def test_cancel(client, queue_name):
    first, second = push_many(client, queue_name, 2)
    delayed = client.push(queue_name, "d", "later", delay_until=time.time() + 60)
    assert client.cancel(queue_name, second) == "payload-1"
    assert client.cancel(queue_name, delayed) == "later"
    assert client.cancel(queue_name, second) is None
    assert client.len(queue_name) == 1
    assert client.reserve(queue_name, CONSUMER).task_id == first


def test_drop_all(client, queue_name):
    push_many(client, queue_name, 3)
    client.push(queue_name, "d", "later", delay_until=time.time() + 60)
    client.drop_all(queue_name)
    assert client.len(queue_name) == 0
    assert client.reserve(queue_name, CONSUMER) is None


def test_dead_letters(client, queue_name):
    first, second = push_many(client, queue_name, 2)
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, first, "payload-0", "ValueError: boom", CONSUMER)
    # Leaving in-flight happens in the same step: nothing to requeue.
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, second, "payload-1", "KeyError: x", CONSUMER)

    dead = client.list_dead_letters(queue_name)
    assert [(d.data, d.error) for d in dead] == [
        ("payload-0", "ValueError: boom"),
        ("payload-1", "KeyError: x"),
    ]
    assert all(d.failed_at <= time.time() + 1 for d in dead)
    assert client.len(queue_name) == 0

    assert client.requeue_dead_letters(queue_name, [dead[1].task_id]) == 1
    assert client.reserve(queue_name, CONSUMER, timeout=2).data == "payload-1"
    assert [d.data for d in client.list_dead_letters(queue_name)] == ["payload-0"]
    assert client.requeue_dead_letters(queue_name) == 1
    assert client.reserve(queue_name, CONSUMER, timeout=2).data == "payload-0"

    third = client.push(queue_name, "t3", "payload-3")
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, third, "payload-3", "boom", CONSUMER)
    assert client.purge_dead_letters(queue_name) == 1
    assert client.list_dead_letters(queue_name) == []


# Bytes that are not UTF-8, as every backend hands them out: surrogate escapes.
UNDECODABLE = b'\xff\xfe{"callable": "\x80"}'.decode("utf-8", "surrogateescape")


def test_a_payload_of_bytes_that_are_not_utf8_round_trips(client, queue_name):
    task_id = client.push(queue_name, "t", UNDECODABLE)
    reserved = client.reserve(queue_name, CONSUMER, timeout=2)
    assert (reserved.task_id, reserved.data) == (task_id, UNDECODABLE)
    task_id = client.retry(queue_name, task_id, CONSUMER, UNDECODABLE)
    reserved = client.reserve(queue_name, CONSUMER, timeout=2)
    assert (reserved.task_id, reserved.data) == (task_id, UNDECODABLE)
    client.add_dead_letter(queue_name, task_id, reserved.data, "undecodable", CONSUMER)
    assert [d.data for d in client.list_dead_letters(queue_name)] == [UNDECODABLE]
    assert client.requeue_dead_letters(queue_name) == 1
    assert client.reserve(queue_name, CONSUMER, timeout=2).data == UNDECODABLE


def test_an_error_text_keeps_what_it_can(client, queue_name):
    # A surrogate escape stands for a byte and is kept; a lone surrogate that stands for
    # none (e.g. from a JSON "\\ud800" in a task's arguments) is stored as an escape.
    task_id = client.push(queue_name, "t", "data")
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, task_id, "data", "bad \ud800 and \udcff", CONSUMER)
    (dead,) = client.list_dead_letters(queue_name)
    assert dead.error == "bad \\ud800 and \udcff"


def test_unknown_option_in_dsn_is_refused(backend_dsn):
    from alligator.exceptions import InvalidDSNError

    with pytest.raises(InvalidDSNError, match="nonsense"):
        client_class(backend_dsn())(backend_dsn(nonsense=1))


def test_a_long_task_in_a_live_worker_is_never_handed_out_again(
    leased_backend_dsn, queue_name, tmp_path
):
    dsn = leased_backend_dsn(lease=1)
    record = tmp_path / "ran.txt"
    Gator(dsn, queue_name=queue_name).task(tasks.record_then_sleep, str(record), 2.5)
    busy = Worker(Gator(dsn, queue_name=queue_name), max_tasks=1)
    other = Worker(Gator(dsn, queue_name=queue_name))
    threads = [threading.Thread(target=worker.run_forever) for worker in (busy, other)]
    threads[0].start()
    wait_for(lambda: tasks.lines(record), message="the long task to start")
    threads[1].start()
    threads[0].join(15)
    time.sleep(1.5)  # past another lease: a wrongly swept task would have started by now
    other.stop()
    threads[1].join(15)
    assert busy.tasks_complete == 1 and other.tasks_complete == 0
    assert len(tasks.lines(record)) == 1


# Cross-process: what a worker in another process does with the same queue.


def test_two_workers_drain_a_queue_running_each_task_once(
    shared_backend_dsn, queue_name, tmp_path
):
    gator = Gator(shared_backend_dsn(), queue_name=queue_name)
    record = tmp_path / "ran.txt"
    for n in range(40):
        gator.task(tasks.append_line, str(record), n)
    workers = [start_latergator(shared_backend_dsn(), queue_name) for _ in range(2)]
    try:
        wait_for(lambda: len(tasks.lines(record)) >= 40, timeout=30, message="40 tasks to run")
        time.sleep(0.3)
        assert sorted(tasks.lines(record), key=int) == [str(n) for n in range(40)]
        assert gator.len() == 0
    finally:
        for worker in workers:
            kill_process(worker)


def test_sigkilled_workers_task_runs_again(shared_backend_dsn, queue_name, tmp_path):
    # beanstalkd returns a job when its connection closes; the others wait out the lease.
    backend = shared_backend_dsn.backend
    dsn = shared_backend_dsn() if backend == "beanstalk" else shared_backend_dsn(lease=1)
    gator = Gator(dsn, queue_name=queue_name)
    record = tmp_path / "pids.txt"
    gator.task(tasks.record_then_sleep, str(record), 1.0)
    first = start_latergator(dsn, queue_name)
    wait_for(lambda: tasks.lines(record), timeout=15, message="the task to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = start_latergator(dsn, queue_name, "-m", "1")
    try:
        # The second worker picks the task up once the first worker's lease expired.
        wait_for(lambda: len(tasks.lines(record)) == 2, timeout=20, message="a second run")
        assert tasks.lines(record) == [str(first.pid), str(second.pid)]
        second.wait(10)
        assert second.returncode == 0
        assert gator.len() == 0
    finally:
        kill_process(second)
