"""
The Client contract's outcomes: kept with the end of a task, read back (waiting if need be),
and where a task is. Every backend that keeps results; beanstalkd keeps none.
"""

import threading
import time

import pytest

from alligator.backends import (
    DEAD,
    DELAYED,
    FINISHED,
    INFLIGHT,
    READY,
    Located,
    Outcome,
    client_class,
)

from .servers import wait_for

CONSUMER = "test-host:1:consumer"
OTHER = "test-host:2:other"


@pytest.fixture
def client(keyed_backend_dsn):
    dsn = keyed_backend_dsn()
    client = client_class(dsn)(dsn)
    yield client
    client.close()


def outcome(value="42", ttl=60.0) -> Outcome:
    return Outcome(f'{{"status":1,"value":{value}}}', ttl)


def test_ack_keeps_the_outcome_it_is_given(client, queue_name):
    client.push(queue_name, "t1", "payload")
    assert client.reserve(queue_name, CONSUMER).task_id == "t1"
    assert client.locate(queue_name, "t1") == Located(INFLIGHT, "payload")
    client.ack(queue_name, "t1", CONSUMER, outcome())
    assert client.result(queue_name, "t1") == '{"status":1,"value":42}'
    assert client.locate(queue_name, "t1") == Located(FINISHED, '{"status":1,"value":42}')
    assert client.len(queue_name) == 0


def test_nothing_is_kept_without_an_outcome_or_by_a_consumer_that_does_not_hold_it(
    client, queue_name
):
    for task_id in ("plain", "lost"):
        client.push(queue_name, task_id, "payload")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "plain", CONSUMER)
    assert client.result(queue_name, "plain") is None
    assert client.locate(queue_name, "plain") is None
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "lost", OTHER, outcome())  # not its task: a no-op
    assert client.result(queue_name, "lost") is None
    assert client.locate(queue_name, "lost") == Located(INFLIGHT, "payload")


def test_an_outcome_expires_after_its_ttl_and_one_without_ttl_stays(client, queue_name):
    for task_id in ("short", "forever"):
        client.push(queue_name, task_id, "payload")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "short", CONSUMER, outcome(ttl=0.5))
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "forever", CONSUMER, outcome(ttl=None))
    assert client.result(queue_name, "short") is not None
    wait_for(lambda: client.result(queue_name, "short") is None, timeout=3)
    assert client.locate(queue_name, "short") is None
    time.sleep(0.2)
    assert client.result(queue_name, "forever") is not None


def test_dead_letters_and_cancels_keep_theirs(client, queue_name):
    for task_id in ("failed", "canceled"):
        client.push(queue_name, task_id, f"payload-{task_id}")
    client.reserve(queue_name, CONSUMER)
    record = '{"status":2,"error":"ValueError: bad"}'
    client.add_dead_letter(
        queue_name, "failed", "payload-failed", "ValueError: bad", CONSUMER, Outcome(record, 60)
    )
    assert client.result(queue_name, "failed") == record
    assert client.locate(queue_name, "failed") == Located(DEAD, "payload-failed")
    canceled = '{"status":5,"error":"Canceled."}'
    assert client.cancel(queue_name, "canceled", Outcome(canceled, 60)) == "payload-canceled"
    assert client.result(queue_name, "canceled") == canceled
    assert client.locate(queue_name, "canceled") == Located(FINISHED, canceled)
    # Nothing to cancel: nothing kept.
    assert client.cancel(queue_name, "nobody", Outcome(canceled, 60)) is None
    assert client.result(queue_name, "nobody") is None


def test_finish_keeps_an_outcome_on_its_own(client, queue_name):
    assert client.finish(queue_name, "elsewhere", True, outcome("7")) == []
    assert client.result(queue_name, "elsewhere") == '{"status":1,"value":7}'
    assert client.result("another-queue", "elsewhere") is None  # outcomes are per queue


def test_result_waits_for_the_outcome_up_to_its_timeout(client, queue_name):
    assert client.result(queue_name, "t1", timeout=0) is None
    started = time.monotonic()
    assert client.result(queue_name, "t1", timeout=0.3) is None
    assert time.monotonic() - started >= 0.3
    client.push(queue_name, "t1", "payload")
    client.reserve(queue_name, CONSUMER)
    ack = threading.Timer(0.3, client.ack, (queue_name, "t1", CONSUMER, outcome()))
    ack.start()
    started = time.monotonic()
    assert client.result(queue_name, "t1", timeout=10) == '{"status":1,"value":42}'
    assert 0.25 <= time.monotonic() - started < 2.5
    ack.join()
    # From another client (another process's, in real life) too.
    other = client_class(client.conn_string)(client.conn_string)
    try:
        store = threading.Timer(0.3, client.finish, (queue_name, "t2", True, outcome("2")))
        store.start()
        assert other.result(queue_name, "t2", timeout=10) == '{"status":1,"value":2}'
        store.join()
    finally:
        other.close()


def test_a_new_push_or_a_requeued_dead_letter_forgets_the_old_outcome(client, queue_name):
    client.push(queue_name, "t1", "first")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "t1", CONSUMER, outcome())
    client.push(queue_name, "t1", "second")
    assert client.result(queue_name, "t1") is None
    assert client.locate(queue_name, "t1") == Located(READY, "second")
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, "t1", "second", "boom", CONSUMER, outcome())
    assert client.requeue_dead_letters(queue_name) == 1
    assert client.result(queue_name, "t1") is None
    assert client.locate(queue_name, "t1") == Located(READY, "second")


def test_locate_tells_every_place(client, queue_name):
    client.push(queue_name, "later", "delayed payload", delay_until=time.time() + 60)
    client.push(queue_name, "now", "ready payload")
    client.add_dead_letter(queue_name, "dead", "dead payload", "boom")
    assert client.locate(queue_name, "later") == Located(DELAYED, "delayed payload")
    assert client.locate(queue_name, "now") == Located(READY, "ready payload")
    assert client.locate(queue_name, "dead") == Located(DEAD, "dead payload")
    assert client.locate(queue_name, "nobody") is None
    assert client.locate("another-queue", "now") is None


def test_beanstalkd_keeps_no_outcomes_but_locates_its_jobs(beanstalkd, queue_name):
    dsn = f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/"
    client = client_class(dsn)(dsn)
    try:
        assert client.keeps_results is False
        later = client.push(queue_name, "x", "delayed", delay_until=time.time() + 60)
        now = client.push(queue_name, "x", "ready")
        assert client.locate(queue_name, later) == Located(DELAYED, "delayed")
        assert client.locate(queue_name, now) == Located(READY, "ready")
        assert client.reserve(queue_name, CONSUMER).task_id == now
        assert client.locate(queue_name, now) == Located(INFLIGHT, "ready")
        client.ack(queue_name, now, CONSUMER)
        assert client.locate(queue_name, now) is None
        assert client.locate(queue_name, "not-a-job-id") is None
        assert client.locate("another-queue", later) is None
    finally:
        client.close()
