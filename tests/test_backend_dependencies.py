"""
The Client contract's dependencies: a task pushed with ``depends_on`` is held until every
task it depends on succeeded, released in the step that acks the last of them, and
canceled (with the tasks held on it) in the step that buries or cancels one. Every backend
that keeps results; beanstalkd keeps its dependencies in its result backend.
"""

import json
import time

import pytest

from alligator.backends import (
    DELAYED,
    FINISHED,
    HELD,
    INFLIGHT,
    READY,
    Dependencies,
    Located,
    Outcome,
    client_class,
)
from alligator.constants import CANCELED, SUCCESS
from alligator.exceptions import DuplicateTaskError, UnknownTaskError

CONSUMER = "test-host:1:consumer"
OTHER = "test-host:2:other"


@pytest.fixture
def client(keyed_backend_dsn):
    dsn = keyed_backend_dsn()
    client = client_class(dsn)(dsn)
    yield client
    client.close()


def on(*dependencies, ttl=60.0, elsewhere=False) -> Dependencies:
    return Dependencies(tuple(dependencies), ttl, elsewhere)


def succeeded(ttl=60.0) -> Outcome:
    return Outcome('{"status":1,"value":null}', ttl)


def run(client, queue_name, task_id, outcome=None):
    """Reserves the task at the front, checks it is ``task_id``, and acks it."""
    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved is not None and reserved.task_id == task_id
    client.ack(queue_name, task_id, CONSUMER, outcome)


def bury(client, queue_name, task_id):
    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved is not None and reserved.task_id == task_id
    client.add_dead_letter(queue_name, task_id, reserved.data, "ValueError: no", CONSUMER)


def record_of(client, queue_name, task_id) -> dict:
    found = client.locate(queue_name, task_id)
    assert found is not None and found.place == FINISHED, found
    return json.loads(found.data)


def test_a_held_task_waits_until_its_dependency_is_acked(client, queue_name):
    client.push(queue_name, "a", "payload-a")
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "a")))
    client.push(queue_name, "c", "payload-c")
    assert client.locate(queue_name, "b") == Located(HELD, "payload-b")
    assert client.len(queue_name) == 3
    assert client.get(queue_name, "b", CONSUMER) is None
    run(client, queue_name, "a")
    # Released at the back of its queue, behind the task pushed after it.
    assert client.locate(queue_name, "b") == Located(READY, "payload-b")
    run(client, queue_name, "c")
    run(client, queue_name, "b")
    assert client.reserve(queue_name, CONSUMER) is None


def test_only_an_ack_releases_not_a_retry_or_a_requeue(client, queue_name):
    client.push(queue_name, "a", "payload-a")
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "a")))
    client.reserve(queue_name, CONSUMER)
    client.retry(queue_name, "a", CONSUMER, "payload-a2")
    client.reserve(queue_name, OTHER)
    client.requeue_inflight(queue_name, OTHER, death="it died")
    assert client.locate(queue_name, "b").place == HELD
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "a", OTHER)  # not its holder: a no-op
    assert client.locate(queue_name, "b").place == HELD
    client.ack(queue_name, "a", CONSUMER)
    assert client.locate(queue_name, "b").place == READY


def test_a_task_waits_for_every_dependency_across_queues(client, queue_name):
    other_queue = queue_name + "-other"
    client.push(queue_name, "a1", "payload")
    client.push(other_queue, "a2", "payload")
    deps = on((queue_name, "a1"), (other_queue, "a2"))
    client.push(other_queue, "b", "payload-b", depends_on=deps)
    run(client, other_queue, "a2")
    assert client.locate(other_queue, "b").place == HELD
    run(client, queue_name, "a1")
    assert client.locate(other_queue, "b") == Located(READY, "payload-b")
    assert client.len(queue_name) == 0 and client.len(other_queue) == 1


def test_a_chain_is_released_one_link_at_a_time(client, queue_name):
    client.push(queue_name, "a", "payload")
    client.push(queue_name, "b", "payload", depends_on=on((queue_name, "a")))
    client.push(queue_name, "c", "payload", depends_on=on((queue_name, "b")))
    run(client, queue_name, "a")
    assert client.locate(queue_name, "c").place == HELD
    run(client, queue_name, "b")
    run(client, queue_name, "c")


def test_a_dependency_that_already_succeeded_counts_as_done(client, queue_name):
    client.push(queue_name, "a", "payload")
    run(client, queue_name, "a", succeeded())
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "a")))
    assert client.locate(queue_name, "b") == Located(READY, "payload-b")


def test_an_unknown_dependency_is_refused_and_nothing_is_stored(client, queue_name):
    client.push(queue_name, "a", "payload")
    deps = on((queue_name, "a"), (queue_name, "nobody"))
    with pytest.raises(UnknownTaskError, match="nobody"):
        client.push(queue_name, "b", "payload", depends_on=deps)
    assert client.locate(queue_name, "b") is None
    assert client.len(queue_name) == 1
    run(client, queue_name, "a")  # acking it finds nothing held on it
    assert client.reserve(queue_name, CONSUMER) is None
    # A dependency gone with no outcome kept is unknown too.
    with pytest.raises(UnknownTaskError):
        client.push(queue_name, "c", "payload", depends_on=on((queue_name, "a")))


def test_a_held_id_is_taken(client, queue_name):
    client.push(queue_name, "a", "payload")
    client.push(queue_name, "b", "payload", depends_on=on((queue_name, "a")))
    with pytest.raises(DuplicateTaskError):
        client.push(queue_name, "b", "payload")


def test_a_failed_dependency_cancels_its_dependents_and_theirs(client, queue_name):
    other_queue = queue_name + "-other"
    client.push(queue_name, "a", "payload")
    client.push(other_queue, "b", "payload", depends_on=on((queue_name, "a")))
    client.push(queue_name, "c", "payload", depends_on=on((other_queue, "b"), ttl=None))
    client.push(queue_name, "d", "payload", depends_on=on((other_queue, "b"), ttl=0))
    bury(client, queue_name, "a")
    for queue, task_id in ((other_queue, "b"), (queue_name, "c")):
        record = record_of(client, queue, task_id)
        assert record["status"] == CANCELED
        assert "task a of queue" in record["error"] and queue_name in record["error"]
    assert client.locate(queue_name, "d") is None  # a ttl of 0 keeps nothing
    assert client.len(queue_name) == 0 and client.len(other_queue) == 0
    assert client.reserve(other_queue, CONSUMER) is None


def test_a_canceled_outcome_expires_with_the_dependents_own_ttl(client, queue_name):
    client.push(queue_name, "a", "payload")
    client.push(queue_name, "b", "payload", depends_on=on((queue_name, "a"), ttl=0.3))
    client.cancel(queue_name, "a")
    assert record_of(client, queue_name, "b")["status"] == CANCELED
    deadline = time.monotonic() + 5
    while client.locate(queue_name, "b") is not None:
        assert time.monotonic() < deadline, "the outcome never expired"
        time.sleep(0.05)


def test_a_dependency_that_already_failed_cancels_at_once(client, queue_name):
    for task_id in ("dead", "failed"):
        client.push(queue_name, task_id, "payload")
    bury(client, queue_name, "dead")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "failed", CONSUMER, Outcome('{"status":2,"error":"x"}', 60))
    for dependency in ("dead", "failed"):
        task_id = f"after-{dependency}"
        assert (
            client.push(queue_name, task_id, "payload", depends_on=on((queue_name, dependency)))
            == task_id
        )
        record = record_of(client, queue_name, task_id)
        assert record["status"] == CANCELED and f"task {dependency} " in record["error"]
    assert client.len(queue_name) == 0


def test_canceling_a_held_task_cancels_those_held_on_it(client, queue_name):
    client.push(queue_name, "a", "payload")
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "a")))
    client.push(queue_name, "c", "payload", depends_on=on((queue_name, "b")))
    assert client.cancel(queue_name, "b") == "payload-b"
    assert record_of(client, queue_name, "c")["status"] == CANCELED
    run(client, queue_name, "a")  # its held task is gone: nothing to release
    assert client.reserve(queue_name, CONSUMER) is None
    assert client.len(queue_name) == 0


def test_a_task_canceled_and_pushed_again_waits_for_its_new_dependencies(client, queue_name):
    for task_id in ("a", "c"):
        client.push(queue_name, task_id, "payload")
    client.push(queue_name, "b", "payload", depends_on=on((queue_name, "a")))
    client.cancel(queue_name, "b")
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "c")))
    run(client, queue_name, "a")
    assert client.locate(queue_name, "b").place == HELD
    run(client, queue_name, "c")
    assert client.locate(queue_name, "b").place == READY


def test_drop_all_cancels_the_tasks_held_on_what_it_drops(client, queue_name):
    other_queue = queue_name + "-other"
    client.push(queue_name, "a", "payload")
    client.push(queue_name, "held", "payload", depends_on=on((queue_name, "a")))
    client.push(other_queue, "b", "payload", depends_on=on((queue_name, "a")))
    client.drop_all(queue_name)
    assert client.len(queue_name) == 0
    assert record_of(client, other_queue, "b")["status"] == CANCELED
    assert client.len(other_queue) == 0


def test_a_released_task_keeps_its_delay(client, queue_name):
    client.push(queue_name, "a", "payload")
    later = time.time() + 60
    client.push(queue_name, "b", "payload-b", later, depends_on=on((queue_name, "a")))
    run(client, queue_name, "a")
    assert client.locate(queue_name, "b") == Located(DELAYED, "payload-b")
    soon = time.time() + 0.3
    client.push(queue_name, "c", "payload", soon, depends_on=on((queue_name, "b")))
    client.cancel(queue_name, "b", None)
    assert client.len(queue_name) == 0


def test_finish_settles_dependencies_that_live_elsewhere(client, queue_name):
    other_queue = queue_name + "-other"
    # Unknown here, as a beanstalkd job is to its result backend: waited for.
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "17"), elsewhere=True))
    client.push(other_queue, "c", "payload-c", depends_on=on((queue_name, "17"), elsewhere=True))
    client.push(other_queue, "d", "payload-d", depends_on=on((queue_name, "18"), elsewhere=True))
    assert client.locate(queue_name, "b").place == HELD
    assert client.finish(queue_name, "17", True, succeeded()) == sorted([queue_name, other_queue])
    assert json.loads(client.result(queue_name, "17"))["status"] == SUCCESS
    assert client.locate(queue_name, "b") == Located(READY, "payload-b")
    assert client.locate(other_queue, "c") == Located(READY, "payload-c")
    assert client.finish(queue_name, "17", True, succeeded()) == []  # told twice: no more
    assert client.finish(queue_name, "18", False, None) == []
    assert record_of(client, other_queue, "d")["status"] == CANCELED
    assert client.result(queue_name, "18") is None


def test_move_carries_the_held_tasks_to_the_new_id(client, queue_name):
    pointer = Outcome('{"status":4,"moved_to":"18"}', 60)
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "17"), elsewhere=True))
    client.move(queue_name, "17", "18", pointer)
    assert client.result(queue_name, "17") == pointer.record
    assert client.finish(queue_name, "17", True, None) == []
    assert client.locate(queue_name, "b").place == HELD
    # A dependency named by its old id, after the move, is followed to the new one.
    client.push(queue_name, "c", "payload-c", depends_on=on((queue_name, "17"), elsewhere=True))
    assert client.finish(queue_name, "18", True, None) == [queue_name]
    assert client.locate(queue_name, "b").place == READY
    assert client.locate(queue_name, "c").place == READY


def test_hand_over_keeps_the_held_tasks_for_the_new_id(client, queue_name):
    client.push(queue_name, "a", "payload-a", depends_on=on((queue_name, "17"), elsewhere=True))
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "a")))
    client.finish(queue_name, "17", True, None)
    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved.task_id == "a"
    client.hand_over(queue_name, "a", OTHER, "99", None)  # not its holder: a no-op
    assert client.locate(queue_name, "a").place == INFLIGHT
    pointer = Outcome('{"status":4,"moved_to":"99"}', 60)
    client.hand_over(queue_name, "a", CONSUMER, "99", pointer)
    assert client.locate(queue_name, "a") == Located(FINISHED, pointer.record)
    assert client.locate(queue_name, "b").place == HELD
    assert client.finish(queue_name, "99", True, None) == [queue_name]
    assert client.locate(queue_name, "b").place == READY


def test_hand_over_under_the_same_id_keeps_them_held_on_it(client, queue_name):
    client.push(queue_name, "a", "payload-a", depends_on=on((queue_name, "17"), elsewhere=True))
    client.push(queue_name, "b", "payload-b", depends_on=on((queue_name, "a")))
    client.finish(queue_name, "17", True, None)
    client.reserve(queue_name, CONSUMER)
    client.hand_over(queue_name, "a", CONSUMER, "a", None)
    assert client.locate(queue_name, "a") is None
    assert client.locate(queue_name, "b").place == HELD
    client.finish(queue_name, "a", False, None)
    assert record_of(client, queue_name, "b")["status"] == CANCELED
