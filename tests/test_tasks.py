import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from alligator.constants import CANCELED, DELAYED, FAILED, RETRYING, SUCCESS, WAITING
from alligator.exceptions import (
    InvalidTaskError,
    NotImportableError,
    UnknownCallableError,
    UnknownModuleError,
)
from alligator.tasks import Task

from . import hooks, tasks


@pytest.fixture(autouse=True)
def clear_hook_calls():
    hooks.CALLS.clear()


def test_defaults():
    task = Task()
    assert len(task.task_id) == 36
    assert task.retries == 0 and task.is_async is True
    assert task.status == WAITING
    assert task.depends_on is None and task.delay_until is None
    assert Task().task_id != task.task_id


def test_async_keyword_is_accepted():
    assert Task(**{"async": False}).is_async is False
    with pytest.raises(InvalidTaskError, match="bogus"):
        Task(bogus=1)


def test_bad_options_are_refused():
    with pytest.raises(InvalidTaskError, match="retries"):
        Task(retries=-1)
    with pytest.raises(InvalidTaskError, match="task_id"):
        Task(task_id=12)


def test_status_transitions():
    task = Task()
    for method, status in [
        (task.to_success, SUCCESS),
        (task.to_failed, FAILED),
        (task.to_retrying, RETRYING),
        (task.to_canceled, CANCELED),
        (task.to_delayed, DELAYED),
        (task.to_waiting, WAITING),
    ]:
        method()
        assert task.status == status


def test_to_call_and_run():
    task = Task()
    task.to_call(tasks.add, 101, b=35)
    assert task.run() == 136
    assert task.result == 136 and task.status == SUCCESS


def test_run_without_a_callable():
    with pytest.raises(InvalidTaskError, match="to_call"):
        Task().run()


def test_hooks_fire_in_order():
    task = Task(on_start=hooks.on_start, on_success="tests.hooks.on_success")
    task.to_call(tasks.add, 1, 2)
    task.run()
    assert hooks.CALLS == [("start", task.task_id, WAITING), ("success", task.task_id, 3)]


def test_on_error_fires_only_after_the_last_attempt():
    task = Task(retries=1, on_error=hooks.on_error)
    task.to_call(tasks.fail, "nope")
    with pytest.raises(ValueError):
        task.run()
    assert task.status == RETRYING and hooks.CALLS == []
    task.retries = 0
    with pytest.raises(ValueError):
        task.run()
    assert task.status == FAILED
    assert hooks.CALLS == [("error", task.task_id, "nope")]


def test_a_failing_outcome_hook_does_not_change_the_outcome(caplog):
    task = Task(on_success="tests.tasks.fail", retries=3)
    task.to_call(tasks.add, 1, 2)
    assert task.run() == 3 and task.status == SUCCESS
    assert "on_success hook" in caplog.text

    task = Task(on_error=tasks.fail)
    task.to_call(tasks.fail, "the task's own error")
    with pytest.raises(ValueError, match="the task's own error"):
        task.run()
    assert task.status == FAILED and "on_error hook" in caplog.text


def test_sys_exit_in_a_task_is_its_failure():
    task = Task()
    task.to_call(tasks.exit_early)
    with pytest.raises(SystemExit):
        task.run()
    assert task.status == FAILED


def test_serialize_round_trip():
    task = Task(
        task_id="abc",
        retries=2,
        on_start=hooks.on_start,
        on_error="tests.hooks.on_error",
        depends_on=["x", Task(task_id="y")],
        delay_by=30,
    )
    task.to_call(tasks.add, 1, b=2)
    data = json.loads(task.serialize())
    assert data["task_id"] == "abc" and data["retries"] == 2 and data["async"] is True
    assert (data["module"], data["callable"]) == ("tests.tasks", "add")
    assert data["on_start"] == "tests.hooks.on_start"
    assert data["depends_on"] == ["x", "y"]

    copy = Task.deserialize(task.serialize())
    assert (copy.task_id, copy.retries, copy.is_async) == ("abc", 2, True)
    assert copy.func is tasks.add
    assert (copy.func_args, copy.func_kwargs) == ([1], {"b": 2})
    assert copy.depends_on == ["x", "y"]
    assert copy.delay_until == task.delay_until
    assert copy.status == DELAYED
    copy.run()
    assert hooks.CALLS == [("start", "abc", DELAYED)]


def test_dependencies_name_a_task_by_its_queue_once_pushed(gator):
    pushed = gator.task(tasks.add, 1, 2)
    task = Task(depends_on=[pushed, "same-queue-id", ("reports", "r1"), ["emails", "e1"], 7])
    expected = [(gator.queue_name, pushed.task_id), "same-queue-id", ("reports", "r1")]
    assert task.depends_on == [*expected, ("emails", "e1"), "7"]
    task.to_call(tasks.add, 1, 2)
    assert Task.deserialize(task.serialize()).depends_on == task.depends_on
    for bad in (("reports",), ("reports", 1), ("a", "b", "c")):
        with pytest.raises(InvalidTaskError, match="a .queue_name, task_id. pair"):
            Task(depends_on=[bad])


def test_deserialize_reads_the_documented_async_key():
    data = json.dumps(
        {
            "task_id": "t1",
            "retries": 0,
            "async": False,
            "module": "tests.tasks",
            "callable": "add",
            "args": [2, 3],
            "kwargs": {},
        }
    )
    task = Task.deserialize(data)
    assert task.is_async is False and task.run() == 5


@pytest.mark.parametrize(
    "data, error, match",
    [
        ("{nope", InvalidTaskError, "not valid JSON"),
        ("[1, 2]", InvalidTaskError, "not a JSON object"),
        ('{"task_id": "t"}', InvalidTaskError, "retries"),
        (
            '{"task_id": "t", "retries": 0, "async": true, "module": "no_such_mod", '
            '"callable": "f"}',
            UnknownModuleError,
            "no_such_mod",
        ),
        (
            '{"task_id": "t", "retries": 0, "async": true, "module": "tests.tasks", '
            '"callable": "missing"}',
            UnknownCallableError,
            "missing",
        ),
        (
            '{"task_id": "t", "retries": 0, "async": true, "module": "tests.tasks", '
            '"callable": "add", "args": {"a": 1}}',
            InvalidTaskError,
            "malformed",
        ),
    ],
)
def test_deserialize_bad_payloads(data, error, match):
    with pytest.raises(error, match=match):
        Task.deserialize(data)


def test_serialize_refuses_what_a_worker_cannot_run():
    task = Task()
    task.to_call(lambda: 1)
    with pytest.raises(NotImportableError, match="lambda"):
        task.serialize()
    task = Task(on_success=lambda task, result: None)
    task.to_call(tasks.add, 1, 2)
    with pytest.raises(NotImportableError):
        task.serialize()
    task = Task()
    task.to_call(tasks.add, object(), 2)
    with pytest.raises(InvalidTaskError, match="JSON-serializable"):
        task.serialize()


def test_delays():
    before = time.time()
    task = Task(delay_by=10)
    assert before + 10 <= task.delay_until <= time.time() + 10
    assert task.status == DELAYED
    when = datetime.now(UTC) + timedelta(hours=1)
    assert Task(delay_until=when).delay_until == when.timestamp()
    assert Task(delay_until=1_900_000_000).delay_until == 1_900_000_000


@pytest.mark.parametrize(
    "options, match",
    [
        ({"delay_until": datetime(2030, 1, 1)}, "naive datetime"),
        ({"delay_by": 1, "delay_until": 5}, "not both"),
        ({"delay_by": -1}, "delay_by"),
        ({"delay_until": "tomorrow"}, "epoch seconds"),
    ],
)
def test_bad_delays(options, match):
    with pytest.raises(InvalidTaskError, match=match):
        Task(**options)


def upstream_payload(**fields) -> dict:
    """A payload as upstream Alligator 1.0 wrote it: hooks and delay under "options"."""
    data = {
        "task_id": "up-1",
        "retries": 2,
        "is_async": True,
        "module": "tests.tasks",
        "callable": "add",
        "args": [1, 2],
        "kwargs": {},
        "options": {},
    }
    data.update(fields)
    return data


def test_deserialize_reads_upstream_payloads():
    options = {
        "on_start": {"module": "tests.hooks", "callable": "on_start"},
        "on_success": "tests.hooks.on_success",  # a dotted path, as some releases wrote
        "delay_until": 1234567890.5,
    }
    task = Task.deserialize(json.dumps(upstream_payload(options=options)))
    assert (task.task_id, task.retries, task.is_async) == ("up-1", 2, True)
    assert (task.on_start, task.on_success, task.on_error) == (
        "tests.hooks.on_start",
        "tests.hooks.on_success",
        None,
    )
    assert task.delay_until == 1234567890.5 and task.depends_on is None
    assert task.run() == 3
    # 0.7 wrote "async" rather than "is_async".
    old = upstream_payload()
    old["async"] = old.pop("is_async")
    assert Task.deserialize(json.dumps(old)).is_async is True


@pytest.mark.parametrize(
    "options, match",
    [
        ([], "options must be a JSON object"),
        ({"on_error": {"module": "tests.hooks"}}, "on_error option lacks module or callable"),
        ({"on_error": {"module": "os", "callable": "system"}}, "on_error hook os.system"),
    ],
)
def test_upstream_options_are_checked_like_the_rest(options, match):
    with pytest.raises(InvalidTaskError, match=match):
        Task.deserialize(json.dumps(upstream_payload(options=options)))


def test_retry_delays_grow_by_the_backoff_up_to_the_cap():
    task = Task(retry_delay=1, retry_backoff=2, retry_max_delay=5, retry_jitter=False)
    waits = []
    for attempts in range(1, 6):
        task.attempts = attempts
        waits.append(task.next_retry_delay())
    assert waits == [1, 2, 4, 5, 5]
    task.attempts = 10_000  # no overflow, however many
    assert task.next_retry_delay() == 5
    assert Task().next_retry_delay() == 0  # by default, at once


def test_jitter_adds_up_to_the_delay_again_and_never_passes_the_cap():
    task = Task(retry_delay=10, retry_max_delay=15)
    task.attempts = 1
    waits = [task.next_retry_delay() for _ in range(2000)]
    assert min(waits) >= 10 and max(waits) <= 15
    assert max(waits) - min(waits) > 4  # spread, not a constant
    task = Task(retry_delay=2, retry_max_delay=100)
    task.attempts = 1
    waits = [task.next_retry_delay() for _ in range(2000)]
    assert 2 <= min(waits) < 2.1 and 3.9 < max(waits) <= 4


@pytest.mark.parametrize(
    "options, match",
    [
        ({"retry_delay": -1}, "retry_delay must be at least 0"),
        ({"retry_backoff": 0.5}, "retry_backoff must be at least 1"),
        ({"retry_max_delay": float("inf")}, "retry_max_delay must be a number"),
        ({"retry_delay": "soon"}, "retry_delay must be a number"),
    ],
)
def test_bad_retry_options(options, match):
    with pytest.raises(InvalidTaskError, match=match):
        Task(**options)


def test_retry_options_and_attempts_travel_with_the_task():
    task = Task(retry_delay=3, retry_backoff=2, retry_jitter=False)
    task.attempts = 2
    task.to_call(tasks.add, 1, 2)
    data = json.loads(task.serialize())
    assert (data["retry_delay"], data["retry_backoff"], data["retry_jitter"]) == (3, 2, False)
    assert data["attempts"] == 2 and "retry_max_delay" not in data  # defaults stay out
    copy = Task.deserialize(task.serialize())
    assert (copy.retry_delay, copy.retry_backoff, copy.retry_jitter, copy.attempts) == (
        3,
        2,
        False,
        2,
    )
    plain = Task()
    plain.to_call(tasks.add, 1, 2)
    assert not {"retry_delay", "attempts"} & set(json.loads(plain.serialize()))
