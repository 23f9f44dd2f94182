import threading
import time
import uuid

import pytest

from alligator import Gator, Options, Task
from alligator.backends.locmem_backend import Client as LocmemClient
from alligator.constants import CANCELED, DELAYED, FAILED, RETRYING, SUCCESS, WAITING
from alligator.exceptions import (
    InvalidDSNError,
    InvalidTaskError,
    NotImportableError,
    TaskNotFound,
)

from . import hooks, tasks


@pytest.fixture(autouse=True)
def reset_hooks():
    hooks.CALLS.clear()
    hooks.FLAKY_FAILURES["left"] = 0


def test_build_backend(gator):
    assert isinstance(gator.build_backend("locmem://"), LocmemClient)


def test_backend_class_overrides_the_scheme():
    class Custom(LocmemClient):
        pass

    gator = Gator("whatever://", backend_class=Custom)
    assert type(gator.backend) is Custom


def test_unknown_scheme_lists_the_supported_ones():
    with pytest.raises(InvalidDSNError) as error:
        Gator("mongodb://localhost/")
    message = str(error.value)
    assert "mongodb://" in message
    for scheme in ("locmem://", "sqlite://", "redis://", "rediss://", "beanstalk://"):
        assert scheme in message


@pytest.mark.parametrize(
    "dsn, match",
    [
        ("localhost:6379", "not a DSN"),
        ("locmem://?lease=soon", "lease"),
        ("locmem://?lease=nan", "lease"),
        ("locmem://?lease=inf", "lease"),
        ("locmem://?lease=-1", "lease"),
        ("redis://[::1/0", "malformed"),
        ("beanstalk://[::1/", "malformed"),
        ("beanstalk://localhost:port/", "malformed"),
        ("sqlite:///q.db?lease=nan", "lease"),
        ("redis://localhost/0?lease=inf", "lease"),
    ],
)
def test_bad_dsn(dsn, match):
    with pytest.raises(InvalidDSNError, match=match):
        Gator(dsn)


def test_task_pushes_and_pop_runs(gator):
    queued = gator.task(tasks.add, 2, b=3)
    assert isinstance(queued, Task) and queued.status == WAITING
    assert gator.len() == 1
    done = gator.pop()
    assert done.task_id == queued.task_id
    assert done.result == 5 and done.status == SUCCESS
    assert gator.len() == 0
    assert gator.pop() is None


def test_pop_is_fifo(gator):
    ids = [gator.task(tasks.add, n, 0).task_id for n in range(5)]
    assert [gator.pop().task_id for _ in ids] == ids


def test_queues_are_separate():
    dsn = f"locmem://{uuid.uuid4().hex}"
    emails, images = Gator(dsn, queue_name="emails"), Gator(dsn, queue_name="images")
    emails.task(tasks.add, 1, 1)
    assert (emails.len(), images.len()) == (1, 0)
    assert images.pop() is None


def test_push_a_configured_task(gator):
    task = Task(task_id="mine", retries=3)
    assert gator.push(task, tasks.add, 1, 2) is task
    assert gator.pop().task_id == "mine"


def test_sync_task_runs_at_once_with_hooks(gator):
    with gator.options(is_async=False, on_success=hooks.on_success) as opts:
        assert isinstance(opts, Options)
        task = opts.task(tasks.add, 40, 2)
    assert task.result == 42 and task.status == SUCCESS
    assert gator.len() == 0
    assert hooks.CALLS == [("success", task.task_id, 42)]


def test_sync_task_may_be_a_lambda(gator):
    with gator.options(**{"async": False}) as opts:
        assert opts.task(lambda x: x * 2, 21).result == 42


def test_sync_task_retries_in_process(gator):
    hooks.FLAKY_FAILURES["left"] = 2
    with gator.options(is_async=False, retries=2) as opts:
        task = opts.task(hooks.flaky, "ok")
    assert task.result == "ok" and task.retries == 0


def test_sync_task_last_failure_raises_without_dead_letter(gator):
    with gator.options(is_async=False, retries=1, on_error=hooks.on_error) as opts:
        with pytest.raises(ValueError, match="boom"):
            opts.task(tasks.fail)
    assert len(hooks.CALLS) == 1 and hooks.CALLS[0][0] == "error"
    assert gator.dead_letters() == []


def test_async_failure_with_retries_goes_back_on_the_queue(gator):
    with gator.options(retries=2, on_error=hooks.on_error) as opts:
        queued = opts.task(tasks.fail, "flaky")
    first = gator.pop()
    assert first.status == RETRYING and first.retries == 1
    assert gator.len() == 1 and hooks.CALLS == []
    second = gator.pop()
    assert second.task_id == queued.task_id and second.retries == 0
    with pytest.raises(ValueError, match="flaky"):
        gator.pop()
    assert gator.len() == 0
    assert hooks.CALLS == [("error", queued.task_id, "flaky")]
    [dead] = gator.dead_letters()
    assert dead.task_id == queued.task_id
    assert "ValueError: flaky" in dead.error
    assert Task.deserialize(dead.data).status == FAILED
    # Nothing is left in flight to be requeued later.
    assert gator.backend.requeue_inflight(gator.queue_name, gator.consumer_id) == 0


def test_flaky_task_succeeds_on_a_retry(gator):
    hooks.FLAKY_FAILURES["left"] = 1
    with gator.options(retries=1) as opts:
        opts.task(hooks.flaky, "finally")
    assert gator.pop().status == RETRYING
    assert gator.pop().result == "finally"
    assert gator.dead_letters() == []


def test_execute(gator):
    task = Task(is_async=False, retries=5)
    task.to_call(tasks.add, 101, 35)
    assert gator.execute(task).result == 136


def test_execute_async_task_with_retries_pushes_it_back(gator):
    task = Task(retries=1)
    task.to_call(tasks.fail)
    assert gator.execute(task).status == RETRYING
    assert gator.len() == 1


def test_get_runs_a_specific_task(gator):
    first = gator.task(tasks.add, 1, 1)
    second = gator.task(tasks.add, 2, 2)
    assert gator.get(second.task_id).result == 4
    assert gator.len() == 1
    assert gator.pop().task_id == first.task_id
    with pytest.raises(TaskNotFound, match=second.task_id):
        gator.get(second.task_id)


def test_get_reraises_the_last_failure(gator):
    task = gator.task(tasks.fail, "from get")
    with pytest.raises(ValueError, match="from get"):
        gator.get(task.task_id)
    assert [d.task_id for d in gator.dead_letters()] == [task.task_id]


def test_cancel(gator):
    keep = gator.task(tasks.add, 1, 1)
    task = gator.task(tasks.add, 18, 9)
    canceled = gator.cancel(task.task_id)
    assert canceled.task_id == task.task_id and canceled.status == CANCELED
    assert canceled.func_args == [18, 9]
    assert gator.len() == 1
    assert gator.pop().task_id == keep.task_id
    with pytest.raises(TaskNotFound):
        gator.cancel(task.task_id)


def test_delayed_task_waits_and_can_be_canceled(gator):
    with gator.options(delay_by=60) as opts:
        task = opts.task(tasks.add, 1, 1)
    assert task.status == DELAYED and gator.len() == 1
    assert gator.pop() is None
    assert gator.cancel(task.task_id).status == CANCELED
    assert gator.len() == 0


def test_delayed_task_runs_once_due(gator):
    with gator.options(delay_by=0.3) as opts:
        opts.task(tasks.add, 1, 1)
    assert gator.pop() is None
    task = gator.reserve(gator.consumer_id, timeout=5)
    assert task is not None and time.time() >= task.delay_until
    assert gator.execute(task).result == 2


def test_lambda_is_refused_at_enqueue(gator):
    with pytest.raises(NotImportableError):
        gator.task(lambda: None)
    assert gator.len() == 0


def test_bad_options_are_refused_when_given(gator):
    with pytest.raises(InvalidTaskError, match="naive"):
        from datetime import datetime

        gator.options(delay_until=datetime(2030, 1, 1))
    with pytest.raises(InvalidTaskError, match="retry"):
        gator.options(retry=3)


def test_undecodable_payload_goes_to_dead_letters(gator):
    gator.backend.push(gator.queue_name, "junk", "{not json")
    with pytest.raises(InvalidTaskError, match="junk.*dead-letter"):
        gator.pop()
    [dead] = gator.dead_letters()
    assert (dead.task_id, dead.data) == ("junk", "{not json")
    assert "not valid JSON" in dead.error


def test_dead_letters_requeue_and_purge(gator):
    for _ in range(2):
        gator.task(tasks.fail)
        with pytest.raises(ValueError):
            gator.pop()
    assert len(gator.dead_letters()) == 2
    assert gator.requeue_dead_letters([gator.dead_letters()[0].task_id]) == 1
    assert gator.len() == 1
    assert gator.purge_dead_letters() == 1
    assert gator.dead_letters() == []


def test_a_failed_attempt_with_retries_left_is_logged(gator, caplog):
    with gator.options(retries=1) as opts:
        task = opts.task(tasks.fail, "first attempt")
    gator.pop()
    [record] = [r for r in caplog.records if r.name == "alligator.gator"]
    assert record.levelname == "WARNING"
    assert task.task_id in record.getMessage()
    assert "ValueError: first attempt" in record.getMessage()
    assert "0 retries left" in record.getMessage()


@pytest.mark.parametrize(
    "dsn", ["locmem://app:hunter2@host/?nonsense=1", "redis://app:hunter2@host:port/0"]
)
def test_dsn_errors_do_not_show_passwords(dsn):
    with pytest.raises(InvalidDSNError) as error:
        Gator(dsn)
    assert "hunter2" not in str(error.value) and "app:***@host" in str(error.value)


def test_a_queued_sync_payload_is_settled_too(gator):
    payload = (
        '{"task_id": "sync", "retries": 0, "async": false, "module": "tests.tasks", '
        '"callable": "fail", "args": ["from the queue"]}'
    )
    gator.backend.push(gator.queue_name, "sync", payload)
    with pytest.raises(ValueError, match="from the queue"):
        gator.pop()
    assert [d.task_id for d in gator.dead_letters()] == ["sync"]
    assert gator.backend.requeue_inflight(gator.queue_name, gator.consumer_id) == 0


def test_pop_keeps_the_lease_of_a_long_task(tmp_path):
    gator = Gator(f"locmem://{uuid.uuid4().hex}?lease=0.6")
    record = tmp_path / "ran.txt"
    gator.task(tasks.record_then_sleep, str(record), 1.5)
    popping = threading.Thread(target=gator.pop)
    popping.start()
    requeued = 0
    while popping.is_alive():
        requeued += gator.backend.requeue_expired(gator.queue_name)
        time.sleep(0.05)
    assert requeued == 0 and gator.len() == 0
    assert len(tasks.lines(record)) == 1


def test_cancel_keeps_a_payload_that_cannot_be_decoded(gator):
    gator.backend.push(gator.queue_name, "junk", "{not json")
    with pytest.raises(InvalidTaskError, match="dead-letter"):
        gator.cancel("junk")
    assert gator.len() == 0
    [dead] = gator.dead_letters()
    assert (dead.task_id, dead.data) == ("junk", "{not json")
