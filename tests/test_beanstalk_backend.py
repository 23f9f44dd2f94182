"""What the beanstalk backend does beyond the Client contract (tests/test_backend_contract.py
holds it to that): server-assigned ids, time-to-run and touch, reconnecting, dead letters
as buried records, and the round trips it saves."""

import json
import logging
import os
import threading
import time

import greenstalk
import pytest

from alligator.backends import Reserved
from alligator.backends.beanstalk_backend import Client
from alligator.exceptions import BackendError, InvalidDSNError, InvalidQueueError
from alligator.gator import Gator

from . import tasks
from .servers import beanstalkd_server, kill_process, start_latergator, wait_for

CONSUMER = "test-host:1:consumer"
OTHER = "test-host:2:other"


@pytest.fixture
def dsn(beanstalkd):
    """The shared server's DSN; a function of DSN options: ``dsn(ttr=2)``."""

    def make(**options) -> str:
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/" + (f"?{query}" if query else "")

    return make


@pytest.fixture
def client(dsn):
    client = Client(dsn())
    yield client
    client.close()


@pytest.fixture
def raw(beanstalkd):
    """A plain greenstalk connection, to look at what the backend left on the server."""
    conn = greenstalk.Client((beanstalkd.host, beanstalkd.port), encoding=None)
    yield conn
    conn.close()


@pytest.fixture
def own_server(tmp_path):
    """A beanstalkd of this test's own: its counters count only this test, and it can be
    stopped without disturbing the others."""
    server = beanstalkd_server(tmp_path)
    server.start()
    yield server
    server.stop()


def counters(server) -> dict:
    with greenstalk.Client((server.host, server.port), encoding=None) as conn:
        return conn.stats()


# Ids.


def test_gator_task_carries_the_servers_id(dsn, queue_name, raw):
    gator = Gator(dsn(), queue_name=queue_name)
    with gator.options(task_id="chosen-by-the-producer") as opts:
        task = opts.task(tasks.add, 1, 2)
    assert task.task_id.isdigit()
    stats = raw.stats_job(int(task.task_id))
    assert (stats["tube"], stats["state"]) == (queue_name, "ready")
    assert json.loads(raw.peek(int(task.task_id)).body)["callable"] == "add"

    reserved = gator.reserve(CONSUMER)
    assert reserved.task_id == task.task_id
    gator.execute(reserved)
    with pytest.raises(greenstalk.NotFoundError):
        raw.peek(int(task.task_id))

    # The server's id is the one to get or cancel a task by.
    later = gator.task(tasks.add, 2, 3)
    assert gator.get(later.task_id).result == 5
    doomed = gator.task(tasks.add, 3, 4)
    assert gator.cancel(doomed.task_id).func_args == [3, 4]
    assert gator.len() == 0


def test_ids_that_are_not_beanstalk_ids_are_not_found(client, queue_name):
    client.push(queue_name, "x", "data")
    assert client.get(queue_name, "not-a-number", CONSUMER) is None
    assert client.cancel(queue_name, "not-a-number") is None
    # A job of another tube is not this queue's.
    elsewhere = client.push(queue_name + "x", "x", "data")
    assert client.get(queue_name, elsewhere, CONSUMER) is None
    assert client.cancel(queue_name, elsewhere) is None
    assert client.len(queue_name + "x") == 1


# DSN and options.


def test_ttr_option_sets_each_jobs_time_to_run(dsn, queue_name, raw):
    for options, ttr in (({}, 3600), ({"ttr": 7}, 7), ({"ttr": 2.5}, 3)):
        client = Client(dsn(**options))
        task_id = client.push(queue_name, "t", "data")
        assert raw.stats_job(int(task_id))["ttr"] == ttr
        assert client.ttr == ttr
        client.close()


def test_lease_is_the_touch_cadence_and_never_longer_than_the_ttr(dsn):
    assert Client(dsn()).lease == 60
    assert Client(dsn(lease=30)).lease == 30
    assert Client(dsn(ttr=2)).lease == 2
    assert Client(dsn(ttr=2, lease=1.5)).lease == 1.5


@pytest.mark.parametrize(
    "bad, message",
    [
        ("beanstalk://127.0.0.1:11300/?ttr=0", "ttr"),
        ("beanstalk://127.0.0.1:11300/?ttl=5", "ttl"),
        ("beanstalk://127.0.0.1:11300/emails", "has a path"),
        ("beanstalk://127.0.0.1:99999/", "malformed"),
    ],
)
def test_bad_dsn_is_refused_in_one_sentence(bad, message):
    with pytest.raises(InvalidDSNError, match=message):
        Client(bad)


def test_messages_and_the_address_keep_the_password_out():
    with pytest.raises(InvalidDSNError, match="has a path") as caught:
        Client("beanstalk://app:secret@127.0.0.1:11300/emails")
    assert "secret" not in str(caught.value)
    # An unescaped "#" in the password: the parser would take its head for the port.
    with pytest.raises(InvalidDSNError, match="write them as %2F, %3F and %23") as caught:
        Client("beanstalk://app:4711#x@127.0.0.1/")
    assert "4711" not in str(caught.value)


# Every call that takes a queue name, with the other arguments it needs.
QUEUE_CALLS = [
    ("push", ("1", "data")),
    ("reserve", (CONSUMER,)),
    ("ack", ("1", CONSUMER)),
    ("retry", ("1", CONSUMER, "data")),
    ("requeue_inflight", (CONSUMER,)),
    ("keepalive", (CONSUMER,)),
    ("requeue_expired", ()),
    ("get", ("1", CONSUMER)),
    ("cancel", ("1",)),
    ("len", ()),
    ("drop_all", ()),
    ("add_dead_letter", ("1", "data", "boom", CONSUMER)),
    ("list_dead_letters", ()),
    ("requeue_dead_letters", ()),
    ("purge_dead_letters", ()),
]


@pytest.mark.parametrize("name", ["two words", "-dash-first", "", "café", "q" * 196, "a\nb"])
def test_a_queue_name_that_cannot_be_a_tube_is_refused_before_any_round_trip(name, tmp_path):
    # Nothing listens on this port: a call that reached for the server would raise
    # BackendError, which a worker retries for ever.
    server = beanstalkd_server(tmp_path)
    client = Client(f"beanstalk://{server.host}:{server.port}/")
    for method, args in QUEUE_CALLS:
        with pytest.raises(InvalidQueueError) as raised:
            getattr(client, method)(name, *args)
        assert not isinstance(raised.value, BackendError)
        message = str(raised.value)
        assert repr(name) in message and "195" in message and "+ / ; . $ _ ( ) -" in message
    with pytest.raises(InvalidQueueError, match="cannot be a beanstalkd tube"):
        Gator(f"beanstalk://{server.host}:{server.port}/", queue_name=name).task(tasks.add, 1)


def test_every_character_and_length_a_tube_allows_works_as_a_queue_name(client, queue_name):
    for name in (queue_name + "+/;.$_()-az09AZ", "q" + "x" * 194):
        task_id = client.push(name, "t", "data")
        assert client.reserve(name, CONSUMER).task_id == task_id
        client.add_dead_letter(name, task_id, "data", "boom", CONSUMER)
        assert [dead.data for dead in client.list_dead_letters(name)] == ["data"]
        assert client.purge_dead_letters(name) == 1


# Time-to-run and touch.


# beanstalkd 1.12 may let a job's time-to-run pass unnoticed while the connection holding
# it sends nothing: the job then stays reserved, with a negative time-left, until that
# connection's next command. So these tests look at time-left, not only at the job's state.


def test_keepalive_touches_held_jobs_and_lets_go_of_timed_out_ones(dsn, queue_name, raw, caplog):
    client = Client(dsn(ttr=2))
    task_id = int(client.push(queue_name, "t", "data"))
    client.reserve(queue_name, CONSUMER)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # Longer than the TTR, touching all along.
        client.keepalive(queue_name, CONSUMER)
        time.sleep(0.3)
    stats = raw.stats_job(task_id)
    assert (stats["state"], stats["timeouts"]) == ("reserved", 0)
    assert stats["time-left"] >= 1

    # Left alone, beanstalkd takes it back; the next keepalive says so and forgets it.
    def taken_back():
        client.len(queue_name)  # A command on the holding connection (see above).
        return raw.stats_job(task_id)["state"] == "ready"

    wait_for(taken_back, timeout=5, message="beanstalkd to take the job back")
    with caplog.at_level(logging.WARNING, logger="alligator.backends.beanstalk_backend"):
        client.keepalive(queue_name, CONSUMER)
    assert "ran out of its time-to-run" in caplog.text
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    client.close()


def test_a_long_task_in_a_worker_is_kept_alive_and_runs_once(dsn, queue_name, raw, tmp_path):
    # The task runs twice as long as the TTR. Were it not touched, its time-left would go
    # below zero, or beanstalkd would hand it to the second worker halfway through.
    worker_dsn = dsn(ttr=2)
    timeouts_before = raw.stats()["job-timeouts"]
    record = tmp_path / "pids.txt"
    workers = [
        start_latergator(worker_dsn, queue_name, log_path=tmp_path / f"w{n}.log") for n in range(2)
    ]
    try:
        gator = Gator(worker_dsn, queue_name=queue_name)
        task = gator.task(tasks.record_then_sleep, str(record), 4)
        job_id = int(task.task_id)
        wait_for(lambda: tasks.lines(record), timeout=15, message="the task to start")
        seen = []

        def finished():
            try:
                stats = raw.stats_job(job_id)
            except greenstalk.NotFoundError:
                return True
            seen.append((stats["state"], stats["time-left"]))
            return False

        wait_for(finished, timeout=15, message="the task to finish and be deleted")
        assert len(seen) > 20  # Watched all along its four seconds.
        assert {state for state, _ in seen} == {"reserved"}
        assert min(left for _, left in seen) >= 0
        assert len(tasks.lines(record)) == 1
        assert raw.stats()["job-timeouts"] == timeouts_before
    finally:
        for worker in workers:
            kill_process(worker)


def test_a_reserve_during_a_held_jobs_last_second_waits_instead_of_spinning(
    own_server, queue_name
):
    # beanstalkd answers DEADLINE_SOON at once to every reserve while a job held on the
    # connection is in its last second.
    client = Client(f"beanstalk://{own_server.host}:{own_server.port}/?ttr=2")
    task_id = client.push(queue_name, "t", "data")
    client.reserve(queue_name, CONSUMER)
    reserves_before = counters(own_server)["cmd-reserve-with-timeout"]
    again = client.reserve(queue_name, OTHER, timeout=5)
    assert again.task_id == task_id  # Taken back by beanstalkd, then reserved anew.
    assert counters(own_server)["cmd-reserve-with-timeout"] - reserves_before < 10
    client.close()


# Connections.


def test_producer_gets_backend_error_with_its_cause_while_beanstalkd_is_down(tmp_path, queue_name):
    server = beanstalkd_server(tmp_path)  # Its port, with nothing listening yet.
    gator = Gator(f"beanstalk://{server.host}:{server.port}/", queue_name=queue_name)
    with pytest.raises(BackendError, match="unreachable") as raised:
        gator.task(tasks.add, 1, 2)
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    server.start()
    try:
        # The same gator connects on its next call.
        assert gator.task(tasks.add, 1, 2).task_id.isdigit()
        assert gator.len() == 1
    finally:
        server.stop()


def test_worker_reconnects_with_backoff_after_a_beanstalkd_restart(
    own_server, queue_name, tmp_path
):
    dsn = f"beanstalk://{own_server.host}:{own_server.port}/"
    log_path = tmp_path / "worker.log"
    # At debug level, so that every attempt is logged, not only the outage's first.
    worker = start_latergator(dsn, queue_name, "--log-level", "debug", log_path=log_path)
    try:

        def worker_waits():
            with greenstalk.Client((own_server.host, own_server.port)) as conn:
                try:
                    return conn.stats_tube(queue_name)["current-waiting"] == 1
                except greenstalk.NotFoundError:
                    return False

        wait_for(worker_waits, timeout=15, message="the worker to wait for tasks")
        own_server.stop()

        def warnings():
            text = log_path.read_text()
            return text.count("Queue backend unavailable") + text.count("still unavailable")

        wait_for(lambda: warnings() >= 1, message="the worker to log the lost connection")
        first = time.monotonic()
        wait_for(lambda: warnings() >= 4, message="three more attempts")
        # Backoff: 0.1 + 0.2 + 0.4 s between the attempts, not a tight loop.
        assert time.monotonic() - first >= 0.6
        assert worker.poll() is None

        # Without a binlog, the restarted server is empty: push after it is back.
        own_server.start()
        record = tmp_path / "ran.txt"
        Gator(dsn, queue_name=queue_name).task(tasks.append_line, str(record), "after")
        wait_for(lambda: tasks.lines(record) == ["after"], timeout=15, message="the task")
        assert "Reconnected to beanstalkd" in log_path.read_text()
    finally:
        kill_process(worker)


def test_requeued_jobs_go_before_older_ones_that_became_ready_meanwhile(client, queue_name, raw):
    delayed = client.push(queue_name, "d", "was delayed", delay_until=time.time() + 0.1)
    held = client.push(queue_name, "h", "was held")
    client.reserve(queue_name, CONSUMER)
    wait_for(lambda: raw.stats_job(int(delayed))["state"] == "ready", timeout=5)
    # The delayed job is older; the requeued one still comes first.
    assert client.requeue_inflight(queue_name, CONSUMER) == 1
    assert [client.reserve(queue_name, CONSUMER).task_id for _ in range(2)] == [held, delayed]


def test_a_dead_connections_jobs_come_back_and_no_other_client_can_release_them(
    dsn, queue_name, raw
):
    holder, other = Client(dsn()), Client(dsn())
    task_id = holder.push(queue_name, "t", "data")
    holder.reserve(queue_name, CONSUMER)
    assert other.requeue_inflight(queue_name, CONSUMER) == 0
    assert raw.stats_job(int(task_id))["state"] == "reserved"
    assert other.requeue_expired(queue_name) == 0
    holder.close()  # As the kernel does for a process that died.
    assert other.reserve(queue_name, OTHER, timeout=2).task_id == task_id
    other.close()


def test_a_forked_child_opens_its_own_connection(client, queue_name, raw):
    held = client.push(queue_name, "t", "parent's")
    client.reserve(queue_name, CONSUMER)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # The child: push and reserve through the inherited client.
        status = 1
        try:
            os.close(read_end)
            task_id = client.push(queue_name, "c", "child's")
            reserved = client.reserve(queue_name, "child", timeout=2)
            os.write(write_end, f"{task_id} {reserved.data}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_id, child_data = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_data == "child's"
    # The child's reservation ended with the child's own connection; the parent's holds.
    wait_for(lambda: raw.stats_job(int(child_id))["state"] == "ready", timeout=5)
    assert raw.stats_job(int(held))["state"] == "reserved"
    assert client.requeue_inflight(queue_name, CONSUMER) == 1


def test_hot_path_reuses_the_tube_in_use_and_the_tube_watched(own_server, queue_name):
    client = Client(f"beanstalk://{own_server.host}:{own_server.port}/")
    before = counters(own_server)
    for n in range(20):
        client.push(queue_name, f"t{n}", "data")
    for _ in range(20):
        client.ack(queue_name, client.reserve(queue_name, CONSUMER).task_id, CONSUMER)
    after = counters(own_server)
    assert after["cmd-use"] - before["cmd-use"] == 1
    assert after["cmd-watch"] - before["cmd-watch"] == 1
    assert after["cmd-ignore"] - before["cmd-ignore"] == 1
    # One round trip per push, reserve and ack: nothing else on the way.
    assert after["cmd-put"] - before["cmd-put"] == 20
    assert after["cmd-delete"] - before["cmd-delete"] == 20
    assert after["cmd-stats-job"] == before["cmd-stats-job"]
    assert after["cmd-touch"] == before["cmd-touch"]
    client.close()


def test_an_idle_reserve_does_not_hold_up_a_heartbeat_with_nothing_to_touch(
    client, queue_name, raw
):
    waiting = threading.Thread(target=client.reserve, args=(queue_name, CONSUMER, 3))
    waiting.start()
    try:

        def reserve_waits():
            try:
                return raw.stats_tube(queue_name)["current-waiting"] == 1
            except greenstalk.NotFoundError:
                return False

        wait_for(reserve_waits, message="the reserve to wait on the server")
        started = time.monotonic()
        client.keepalive(queue_name, CONSUMER)
        assert time.monotonic() - started < 0.5
    finally:
        client.push(queue_name, "t", "wake up")
        waiting.join(10)


# Retries.


def test_retry_puts_a_new_job_and_deletes_the_old_one(client, queue_name, raw):
    old = client.push(queue_name, "t", "first try")
    client.reserve(queue_name, CONSUMER)
    new = client.retry(queue_name, old, CONSUMER, "second try", delay_until=time.time() + 60)
    assert new != old
    with pytest.raises(greenstalk.NotFoundError):
        raw.peek(int(old))
    stats = raw.stats_job(int(new))
    assert (stats["tube"], stats["state"]) == (queue_name, "delayed")
    assert raw.peek(int(new)).body == b"second try"


def test_a_retried_task_carries_its_remaining_retries(dsn, queue_name):
    gator = Gator(dsn(), queue_name=queue_name)
    with gator.options(retries=1) as opts:
        first = opts.task(tasks.fail, "again")
    task = gator.reserve(CONSUMER)
    gator.execute(task)  # Fails; one retry left, so it goes back.
    assert task.task_id != first.task_id
    task = gator.reserve(CONSUMER)
    assert task.retries == 0
    with pytest.raises(ValueError, match="again"):
        gator.execute(task)
    (dead,) = gator.dead_letters()
    assert dead.task_id == task.task_id
    assert json.loads(dead.data)["retries"] == 0
    assert gator.len() == 0


# drop_all.


def test_drop_all_leaves_inflight_tasks_dead_letters_and_other_queues(client, queue_name):
    for n in range(4):
        client.push(queue_name, f"t{n}", f"payload-{n}")
    client.push(queue_name, "d", "later", delay_until=time.time() + 60)
    client.push(queue_name + "x", "o", "other queue")
    failed = client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, failed.task_id, failed.data, "boom", CONSUMER)
    running = client.reserve(queue_name, CONSUMER)

    client.drop_all(queue_name)
    assert client.len(queue_name) == 0
    assert client.reserve(queue_name, OTHER) is None
    assert client.len(queue_name + "x") == 1
    assert [d.data for d in client.list_dead_letters(queue_name)] == ["payload-0"]
    assert client.requeue_inflight(queue_name, CONSUMER) == 1
    assert client.reserve(queue_name, OTHER).task_id == running.task_id


# Dead letters.


def dead_tube_stats(raw, queue_name):
    return raw.stats_tube(queue_name + ".dead")


def test_a_dead_letter_is_a_buried_record_in_the_companion_tube(client, queue_name, raw):
    task_id = client.push(queue_name, "t", "payload")
    client.reserve(queue_name, CONSUMER)
    before = time.time()
    client.add_dead_letter(queue_name, task_id, "payload", "ValueError: boom\nline 2", CONSUMER)

    with pytest.raises(greenstalk.NotFoundError):
        raw.peek(int(task_id))  # The task's own job is gone...
    stats = dead_tube_stats(raw, queue_name)
    assert (stats["current-jobs-buried"], stats["current-jobs-ready"]) == (1, 0)
    raw.use(queue_name + ".dead")
    header, payload = raw.peek_buried().body.split(b"\n", 1)  # ...its record is buried.
    fields = json.loads(header)
    assert (fields["task_id"], fields["error"]) == (task_id, "ValueError: boom\nline 2")
    assert payload == b"payload"

    (dead,) = client.list_dead_letters(queue_name)
    assert (dead.task_id, dead.data, dead.error) == (task_id, "payload", fields["error"])
    assert before <= dead.failed_at <= time.time()

    # Requeued: the payload goes back to the queue as a new job; the record is deleted.
    assert client.requeue_dead_letters(queue_name) == 1
    assert dead_tube_stats(raw, queue_name)["current-jobs-buried"] == 0
    again = client.reserve(queue_name, CONSUMER)
    assert again.data == "payload" and again.task_id != task_id


def test_dead_letters_list_oldest_first_and_listing_keeps_them(client, queue_name, raw):
    for n in range(5):
        task_id = client.push(queue_name, f"t{n}", f"payload-{n}")
        client.reserve(queue_name, CONSUMER)
        client.add_dead_letter(queue_name, task_id, f"payload-{n}", f"error {n}", CONSUMER)
    expected = [f"payload-{n}" for n in range(5)]
    assert [d.data for d in client.list_dead_letters(queue_name)] == expected
    assert [d.data for d in client.list_dead_letters(queue_name)] == expected
    assert dead_tube_stats(raw, queue_name)["current-jobs-buried"] == 5

    wanted = [d.task_id for d in client.list_dead_letters(queue_name)][1:4:2]
    assert client.requeue_dead_letters(queue_name, wanted) == 2
    assert [client.reserve(queue_name, CONSUMER).data for _ in range(2)] == [
        "payload-1",
        "payload-3",
    ]
    assert [d.data for d in client.list_dead_letters(queue_name)] == [
        "payload-0",
        "payload-2",
        "payload-4",
    ]
    assert client.purge_dead_letters(queue_name) == 3
    assert dead_tube_stats(raw, queue_name)["current-jobs-buried"] == 0


def test_a_record_left_unburied_by_a_crash_is_still_listed(client, queue_name, beanstalkd):
    record = json.dumps({"task_id": "7", "error": "boom", "failed_at": 1.0}).encode()
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), encoding=None) as crashed:
        # A client that put the record, reserved it to bury it, and died.
        crashed.use(queue_name + ".dead")
        record_id = crashed.put(record + b"\npayload", delay=60)
        crashed.reserve_job(record_id)
    (dead,) = client.list_dead_letters(queue_name)
    assert (dead.task_id, dead.data, dead.error) == ("7", "payload", "boom")
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), encoding=None) as raw:
        assert raw.stats_job(record_id)["state"] == "buried"


def test_a_job_body_that_is_not_utf8_round_trips(client, queue_name, raw):
    # Put by another program; a dead letter must keep exactly these bytes.
    body = b'\xff\xfe{"callable": "\x80"}'
    data = body.decode("utf-8", "surrogateescape")
    raw.use(queue_name)
    job_id = str(raw.put(body))
    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved == Reserved(job_id, data)
    client.add_dead_letter(queue_name, job_id, data, "undecodable \udcff \ud800", CONSUMER)
    raw.use(queue_name + ".dead")
    assert raw.peek_buried().body.split(b"\n", 1)[1] == body
    (dead,) = client.list_dead_letters(queue_name)
    assert (dead.task_id, dead.data, dead.error) == (job_id, data, "undecodable \udcff \\ud800")

    assert client.requeue_dead_letters(queue_name) == 1
    again = client.reserve(queue_name, CONSUMER)
    assert again.data == data
    assert raw.peek(int(again.task_id)).body == body
    retried = client.retry(queue_name, again.task_id, CONSUMER, again.data)
    assert raw.peek(int(retried)).body == body
    assert client.get(queue_name, retried, CONSUMER) == Reserved(retried, data)
    client.ack(queue_name, retried, CONSUMER)

    pushed = client.push(queue_name, "t", data)
    assert raw.peek(int(pushed)).body == body
    assert client.cancel(queue_name, pushed) == data
    assert client.len(queue_name) == 0


def test_a_long_error_is_shortened_to_its_end_to_fit_a_job(client, queue_name, raw):
    max_size = raw.stats()["max-job-size"]
    error = "Traceback (most recent call last):\n" + "x" * (2 * max_size) + "\nValueError: end"
    payload = "p" * 1000
    task_id = client.push(queue_name, "t", payload)
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, task_id, payload, error, CONSUMER)
    (dead,) = client.list_dead_letters(queue_name)
    assert dead.data == payload
    assert dead.error.startswith("[…]") and dead.error.endswith("\nValueError: end")
    # As much of the error as fits beside the payload and the record's other fields.
    assert max_size - len(payload) - 200 < len(dead.error.encode()) < max_size - len(payload)


# Settling: only the consumer holding a task.


def test_a_task_is_settled_only_through_its_own_queue(client, queue_name, raw):
    # Job ids are the server's, shared by every tube: an id alone does not name the task.
    task_id = client.push(queue_name, "t", "data")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name + "x", task_id, CONSUMER)
    client.retry(queue_name + "x", task_id, CONSUMER, "changed")
    client.add_dead_letter(queue_name + "x", task_id, "data", "boom", CONSUMER)
    assert raw.stats_job(int(task_id))["state"] == "reserved"
    assert client.len(queue_name + "x") == 0
    assert client.list_dead_letters(queue_name + "x") == []
    client.ack(queue_name, task_id, CONSUMER)
    with pytest.raises(greenstalk.NotFoundError):
        raw.peek(int(task_id))


def test_a_task_whose_time_to_run_ran_out_is_left_to_its_new_holder(dsn, queue_name, caplog):
    # This client's record still says CONSUMER holds the job, but beanstalkd took it back
    # and another connection reserved it: beanstalkd refuses the late consumer's settling.
    late, now_holding = Client(dsn(ttr=1)), Client(dsn())
    task_id = late.push(queue_name, "t", "data")
    late.reserve(queue_name, CONSUMER)

    def taken_over():
        late.len(queue_name)  # A command on the holding connection (see above).
        return now_holding.reserve(queue_name, OTHER)

    assert wait_for(taken_over, timeout=5, message="the job to run out").task_id == task_id
    with caplog.at_level(logging.WARNING, logger="alligator.backends.beanstalk_backend"):
        assert late.retry(queue_name, task_id, CONSUMER, "changed") == task_id
    assert "ran out of its time-to-run" in caplog.text
    late.add_dead_letter(queue_name, task_id, "data", "boom", CONSUMER)
    late.ack(queue_name, task_id, CONSUMER)

    assert late.len(queue_name) == 0
    assert late.list_dead_letters(queue_name) == []
    assert now_holding.requeue_inflight(queue_name, OTHER) == 1
    assert now_holding.reserve(queue_name, OTHER, timeout=2).data == "data"
    late.close()
    now_holding.close()


def test_a_lost_connection_forgets_its_reservations(queue_name, tmp_path, caplog):
    # With a binlog, a restarted beanstalkd still has the jobs: ready again, since the
    # connection that reserved them is gone.
    server = beanstalkd_server(tmp_path)
    server.argv += ["-b", str(tmp_path)]
    server.start()
    client = Client(f"beanstalk://{server.host}:{server.port}/")
    try:
        finished, running = (client.push(queue_name, f"t{n}", "data") for n in range(2))
        client.reserve(queue_name, CONSUMER)
        client.reserve(queue_name, CONSUMER)
        server.stop()
        caplog.set_level(logging.INFO, logger="alligator.backends.beanstalk_backend")
        with pytest.raises(BackendError, match="unreachable"):
            client.len(queue_name)
        assert "2 task(s) reserved through the connection" in caplog.text
        server.start()
        client.keepalive(queue_name, CONSUMER)  # Nothing held any more: nothing to touch.
        assert client.requeue_inflight(queue_name, CONSUMER) == 0
        # CONSUMER lost both tasks with the connection: it can settle neither (at least
        # once: the finished one runs again).
        client.ack(queue_name, finished, CONSUMER)
        client.retry(queue_name, running, CONSUMER, "changed")
        client.add_dead_letter(queue_name, running, "data", "boom", CONSUMER)
        with greenstalk.Client((server.host, server.port), encoding=None) as raw:
            stats = raw.stats_tube(queue_name)
            # Both still there, and no job put since the restart (no retried copy).
            assert (stats["current-jobs-ready"], stats["total-jobs"]) == (2, 0)
        assert client.list_dead_letters(queue_name) == []
        assert [client.reserve(queue_name, OTHER).task_id for _ in range(2)] == [
            finished,
            running,
        ]
        assert "Reconnected to beanstalkd" in caplog.text
        assert "time-to-run" not in caplog.text
    finally:
        client.close()
        server.stop()


def test_abandoned_counts_the_takers_that_never_gave_a_job_back(dsn, queue_name):
    client = Client(dsn())
    task_id = client.push(queue_name, "ignored", "{}")
    for _ in range(2):  # each takes the job, then its connection goes, the job with it
        dying = Client(dsn())
        assert dying.reserve(queue_name, OTHER, timeout=1).task_id == task_id
        dying.close()
    holder = Client(dsn())
    assert holder.reserve(queue_name, CONSUMER, timeout=1).task_id == task_id
    assert client.abandoned(queue_name, task_id) == 2
    holder.requeue_inflight(queue_name, CONSUMER)  # given back: not abandoned
    assert holder.reserve(queue_name, CONSUMER, timeout=1).task_id == task_id
    assert client.abandoned(queue_name, task_id) == 2
    holder.ack(queue_name, task_id, CONSUMER)
    assert client.abandoned(queue_name, task_id) is None
    assert client.abandoned(queue_name, "not-an-id") is None
    for each in (client, holder):
        each.close()
