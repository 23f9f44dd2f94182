"""The Client contract, held against every backend with the same tests."""

import os
import signal
import threading
import time

import pytest

from alligator import Gator, Worker
from alligator.backends import EXPIRED_LEASE_DEATH, client_class
from alligator.exceptions import DuplicateTaskError

from . import tasks
from .conftest import make_dsn
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


# Deaths: how many consumers died holding a task, shared by every worker of a queue.


@pytest.fixture(params=["locmem", "sqlite", "redis"])
def counting_backend_dsn(request, tmp_path):
    """Every backend that counts the deaths of a task's consumers (beanstalkd counts its
    own, see ``abandoned``)."""
    return make_dsn(request, tmp_path)


@pytest.fixture
def counting(counting_backend_dsn):
    client = client_class(counting_backend_dsn())(counting_backend_dsn())
    yield client
    client.close()


def deaths_of(reserved):
    return (reserved.deaths, reserved.last_death)


def die_holding(client, queue_name, task_id, death, consumer=CONSUMER):
    """``consumer`` takes the task (which waits at the front of the queue) and dies."""
    reserved = client.reserve(queue_name, consumer, timeout=2)
    assert reserved.task_id == task_id
    assert client.requeue_inflight(queue_name, consumer, death=death) == 1
    return reserved


def test_a_task_counts_the_consumers_that_died_holding_it(counting, queue_name):
    client = counting
    client.push(queue_name, "poison", "payload")
    client.push(queue_name, "fine", "payload")
    reserved = client.reserve(queue_name, CONSUMER)
    assert deaths_of(reserved) == (0, "")
    assert client.requeue_inflight(queue_name, CONSUMER, death="pid 1 killed by SIGKILL") == 1
    die_holding(client, queue_name, "poison", "pid 2 killed by SIGSEGV", OTHER)
    die_holding(client, queue_name, "poison", "pid 3 killed by SIGKILL while running it")
    reserved = client.reserve(queue_name, OTHER)
    assert reserved.task_id == "poison"
    assert deaths_of(reserved) == (3, "pid 3 killed by SIGKILL while running it")
    # Counted per task: the one behind it never died.
    assert deaths_of(client.reserve(queue_name, CONSUMER)) == (0, "")
    # Every task a dead consumer held counts its death; get hands out the count too.
    assert client.requeue_inflight(queue_name, OTHER, death="pid 4 ran out of memory") == 1
    assert client.requeue_inflight(queue_name, CONSUMER, death="pid 5 hung") == 1
    assert deaths_of(client.get(queue_name, "fine", OTHER)) == (1, "pid 5 hung")
    assert deaths_of(client.get(queue_name, "poison", OTHER)) == (4, "pid 4 ran out of memory")


def test_a_requeue_without_a_death_counts_none(counting, queue_name):
    client = counting
    client.push(queue_name, "t", "payload")
    die_holding(client, queue_name, "t", "pid 1 killed by SIGKILL")
    client.reserve(queue_name, CONSUMER)
    # A graceful stop gives its task back: not a death, and the last reason stays.
    assert client.requeue_inflight(queue_name, CONSUMER) == 1
    assert deaths_of(client.reserve(queue_name, CONSUMER)) == (1, "pid 1 killed by SIGKILL")
    assert client.requeue_inflight(queue_name, CONSUMER) == 1
    client.push(queue_name, "u", "payload")
    client.reserve(queue_name, CONSUMER)
    client.reserve(queue_name, CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 2
    assert [deaths_of(client.reserve(queue_name, OTHER)) for _ in range(2)] == [
        (1, "pid 1 killed by SIGKILL"),
        (0, ""),
    ]


def test_a_consumer_whose_lease_ran_out_counts_as_dead(leased_backend_dsn, queue_name):
    dsn = leased_backend_dsn(lease=1)
    client = client_class(dsn)(dsn)
    client.push(queue_name, "t", "payload")
    die_holding(client, queue_name, "t", "pid 1 killed by SIGKILL")
    client.reserve(queue_name, CONSUMER)
    # CONSUMER never renews its lease (a latergator the OOM killer took, say).
    wait_for(lambda: client.requeue_expired(queue_name) == 1, message="CONSUMER's lease to end")
    reserved = client.reserve(queue_name, OTHER)
    assert (reserved.task_id, deaths_of(reserved)) == ("t", (2, EXPIRED_LEASE_DEATH))
    assert EXPIRED_LEASE_DEATH == "its worker stopped renewing its lease (it died, or hung)"
    client.close()


def test_an_acked_id_pushed_again_starts_with_no_deaths(counting, queue_name):
    client = counting
    client.push(queue_name, "same", "first")
    die_holding(client, queue_name, "same", "pid 1 killed by SIGKILL")
    assert client.reserve(queue_name, CONSUMER).deaths == 1
    client.ack(queue_name, "same", CONSUMER)
    client.push(queue_name, "same", "second")
    reserved = client.reserve(queue_name, CONSUMER)
    assert (reserved.data, deaths_of(reserved)) == ("second", (0, ""))


def test_a_stale_ack_leaves_the_count_of_the_new_holder(counting, queue_name):
    client = counting
    client.push(queue_name, "t", "payload")
    client.reserve(queue_name, CONSUMER)
    client.requeue_inflight(queue_name, CONSUMER, death="pid 1 was taken for dead")
    client.reserve(queue_name, OTHER)
    client.ack(queue_name, "t", CONSUMER)  # changes nothing
    client.requeue_inflight(queue_name, OTHER, death="pid 2 killed by SIGKILL")
    assert deaths_of(client.reserve(queue_name, OTHER)) == (2, "pid 2 killed by SIGKILL")


def test_a_retry_starts_the_count_again(counting, queue_name):
    client = counting
    client.push(queue_name, "t", "first try")
    die_holding(client, queue_name, "t", "pid 1 killed by SIGKILL")
    assert client.reserve(queue_name, CONSUMER).deaths == 1
    client.retry(queue_name, "t", CONSUMER, "second try")
    reserved = client.reserve(queue_name, CONSUMER)
    assert (reserved.data, deaths_of(reserved)) == ("second try", (0, ""))
    # A delayed retry too.
    client.requeue_inflight(queue_name, CONSUMER, death="pid 2 killed by SIGKILL")
    client.reserve(queue_name, CONSUMER)
    client.retry(queue_name, "t", CONSUMER, "third try", delay_until=time.time() + 60)
    assert deaths_of(client.get(queue_name, "t", CONSUMER)) == (0, "")


def test_a_dead_letter_forgets_the_count_and_a_requeued_one_starts_again(counting, queue_name):
    client = counting
    client.push(queue_name, "requeued", "payload-0")
    client.push(queue_name, "purged", "payload-1")
    for task_id in ("requeued", "purged"):
        die_holding(client, queue_name, task_id, "pid 1 killed by SIGKILL")
        reserved = client.reserve(queue_name, CONSUMER)
        assert deaths_of(reserved) == (1, "pid 1 killed by SIGKILL")
        client.add_dead_letter(queue_name, task_id, reserved.data, "refused", CONSUMER)
    assert client.requeue_dead_letters(queue_name, ["requeued"]) == 1
    reserved = client.reserve(queue_name, CONSUMER)
    assert (reserved.task_id, deaths_of(reserved)) == ("requeued", (0, ""))
    assert client.purge_dead_letters(queue_name) == 1
    client.push(queue_name, "purged", "new")
    reserved = client.reserve(queue_name, CONSUMER)
    assert (reserved.task_id, deaths_of(reserved)) == ("purged", (0, ""))


def test_cancel_and_drop_all_leave_no_count_behind(counting, queue_name):
    client = counting
    for task_id in ("running", "canceled", "dropped"):
        client.push(queue_name, task_id, "old")
        client.reserve(queue_name, CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER, death="pid 1 killed by SIGKILL") == 3
    # "running" is in flight, and keeps its count; "dropped" waits in the queue.
    assert client.reserve(queue_name, OTHER).task_id == "running"
    assert client.cancel(queue_name, "canceled") == "old"
    client.drop_all(queue_name)
    for task_id in ("canceled", "dropped"):
        client.push(queue_name, task_id, "new")
        reserved = client.reserve(queue_name, CONSUMER)
        assert (reserved.task_id, reserved.data, deaths_of(reserved)) == (task_id, "new", (0, ""))
    client.requeue_inflight(queue_name, OTHER, death="pid 2 killed by SIGKILL")
    assert deaths_of(client.reserve(queue_name, OTHER)) == (2, "pid 2 killed by SIGKILL")


def test_a_waiting_reserve_gets_the_count(counting_backend_dsn, counting, queue_name):
    client = counting
    client.push(queue_name, "t", "payload")
    die_holding(client, queue_name, "t", "pid 1 killed by SIGKILL")
    client.reserve(queue_name, CONSUMER)
    got = {}
    waiting = threading.Thread(
        target=lambda: got.update(task=client.reserve(queue_name, OTHER, timeout=10))
    )
    waiting.start()
    if counting_backend_dsn.backend == "redis":
        blocked_on_the_server(client)
    # CONSUMER dies while OTHER waits: its task goes to OTHER with its two deaths.
    client.requeue_inflight(queue_name, CONSUMER, death="pid 2 killed by SIGKILL")
    waiting.join(15)
    assert got["task"].task_id == "t"
    assert deaths_of(got["task"]) == (2, "pid 2 killed by SIGKILL")


def blocked_on_the_server(client):
    """Waits until a reserve through this Redis client blocks in BLMOVE."""
    admin = client._redis
    wait_for(
        lambda: any(c["cmd"] == "blmove" for c in admin.client_list()),
        message="the reserve to block on the server",
    )


def test_a_task_that_died_keeps_its_id_unique(keyed_backend_dsn, queue_name):
    client = client_class(keyed_backend_dsn())(keyed_backend_dsn())
    client.push(queue_name, "same", "first")
    die_holding(client, queue_name, "same", "pid 1 killed by SIGKILL")
    with pytest.raises(DuplicateTaskError):
        client.push(queue_name, "same", "again")
    assert deaths_of(client.reserve(queue_name, CONSUMER)) == (1, "pid 1 killed by SIGKILL")
    client.close()


def test_beanstalk_takes_a_death_and_counts_none(beanstalkd, queue_name):
    dsn = f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/"
    client = client_class(dsn)(dsn)
    task_id = client.push(queue_name, "ignored", "payload")
    assert deaths_of(client.reserve(queue_name, CONSUMER, timeout=1)) == (0, "")
    assert client.requeue_inflight(queue_name, CONSUMER, death="pid 1 killed by SIGKILL") == 1
    reserved = client.reserve(queue_name, CONSUMER, timeout=1)
    assert (reserved.task_id, deaths_of(reserved)) == (task_id, (0, ""))
    client.close()


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
