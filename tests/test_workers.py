import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from alligator import Gator, Worker
from alligator.backends.locmem_backend import Client as LocmemClient
from alligator.exceptions import AlligatorException, BackendError
from alligator.gator import new_consumer_id

from . import hooks, tasks
from .servers import wait_for


def test_worker_runs_tasks_and_prints_results(gator, capsys):
    for n in range(3):
        gator.task(tasks.add, n, 10)
    worker = Worker(gator, max_tasks=3)
    worker.run_forever()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Alligator Worker (#{os.getpid()}) starting & consuming 'all'."
    assert out[1:4] == ["10", "11", "12"]
    assert "Consumed 3 tasks." in out[4]
    assert worker.tasks_complete == 3 and gator.len() == 0


def test_ident_includes_the_pid(gator):
    assert str(os.getpid()) in Worker(gator).ident()


def test_max_tasks_counts_failures_and_the_worker_carries_on(gator, caplog):
    gator.task(tasks.fail, "first")
    gator.backend.push(gator.queue_name, "junk", "{not json")
    gator.task(tasks.add, 1, 1)
    gator.task(tasks.add, 2, 2)
    worker = Worker(gator, max_tasks=3)
    worker.run_forever()
    assert worker.tasks_complete == 3
    assert gator.len() == 1  # the fourth task is still waiting
    assert {d.task_id for d in gator.dead_letters()} >= {"junk"}
    assert len(gator.dead_letters()) == 2
    messages = [record.getMessage() for record in caplog.records]
    assert any("failed" in m and "tests.tasks.fail" in m for m in messages)
    assert any("junk" in m and "dead-letter" in m for m in messages)


def test_unimportable_task_is_dead_lettered(gator):
    payload = (
        '{"task_id": "gone", "retries": 0, "async": true, "module": "tests.tasks", '
        '"callable": "removed_since"}'
    )
    gator.backend.push(gator.queue_name, "gone", payload)
    Worker(gator, max_tasks=1).run_forever()
    [dead] = gator.dead_letters()
    assert dead.task_id == "gone" and "removed_since" in dead.error


def test_poison_tasks_do_not_stop_the_worker(gator):
    broken = (
        '{"task_id": "broken", "retries": 0, "async": true, "module": "tests.broken_on_import", '
        '"callable": "task"}'
    )
    gator.backend.push(gator.queue_name, "broken", broken)
    exiting = gator.task(tasks.exit_early)
    gator.task(tasks.add, 1, 1)
    worker = Worker(gator, max_tasks=3)
    worker.run_forever()
    assert worker.tasks_complete == 3 and gator.len() == 0
    dead = {d.task_id: d.error for d in gator.dead_letters()}
    assert "DATABASE_URL" in dead["broken"]
    assert "SystemExit: 3" in dead[exiting.task_id]


def test_nap_time_must_be_a_number_of_seconds(gator):
    for bad in (-1, "soon", True, None):
        with pytest.raises(AlligatorException, match="nap_time"):
            Worker(gator, nap_time=bad)


def test_nap_time_0_naps_no_longer_than_the_backends_shortest_pause(tmp_path):
    """Upstream's ``nap_time=0``: an idle SQLite worker then looks every few milliseconds,
    never spinning."""
    gator = Gator(f"sqlite:///{tmp_path / 'queue.db'}")
    worker = Worker(gator, nap_time=0)
    looks = []
    peek = gator.backend._peek
    gator.backend._peek = lambda queue: looks.append(time.monotonic()) or peek(queue)
    started = time.monotonic()
    assert gator.take(worker.consumer_id, timeout=0.5, poll_interval=worker.nap_time) is None
    assert time.monotonic() - started >= 0.5
    assert 20 <= len(looks) <= 150  # every 5 ms or so: neither a spin nor a 100 ms nap


class FlakyBackend(LocmemClient):
    """A local queue whose server "goes away" for the calls named in ``outages``."""

    outages = {"reserve": 0, "ack": 0}

    def _maybe_fail(self, call):
        if self.outages[call] > 0:
            self.outages[call] -= 1
            raise BackendError(f"{call}: connection refused")

    def reserve(self, *args, **kwargs):
        self._maybe_fail("reserve")
        return super().reserve(*args, **kwargs)

    def ack(self, *args, **kwargs):
        self._maybe_fail("ack")
        return super().ack(*args, **kwargs)


def flaky_gator(reserve_outages=0, ack_outages=0):
    FlakyBackend.outages = {"reserve": reserve_outages, "ack": ack_outages}
    return Gator(f"locmem://{uuid.uuid4().hex}", backend_class=FlakyBackend)


def test_an_outage_is_logged_once_and_its_end_too(caplog):
    gator = flaky_gator(reserve_outages=4)
    gator.task(tasks.add, 1, 1)
    caplog.set_level(logging.DEBUG, logger="alligator.workers")
    Worker(gator, max_tasks=1).run_forever()
    logged = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "alligator.workers"
    ]
    assert [level for level, _ in logged] == ["WARNING", "DEBUG", "DEBUG", "DEBUG", "INFO"]
    assert logged[0][1].startswith("Queue backend unavailable (reserve: connection refused)")
    assert logged[-1][1] == "Queue backend reachable again."


def test_an_outcome_that_could_not_be_stored_is_stored_before_the_next_task(tmp_path):
    gator = flaky_gator(ack_outages=2)
    record = tmp_path / "ran.txt"
    first = gator.task(tasks.append_line, str(record), "first")
    gator.task(tasks.append_line, str(record), "second")
    worker = Worker(gator, max_tasks=2)
    worker.run_forever()
    # Each task ran once, and the first one's ack was retried until it was stored.
    assert tasks.lines(record) == ["first", "second"]
    assert FlakyBackend.outages["ack"] == 0
    backend = gator.backend
    assert backend.requeue_inflight(gator.queue_name, worker.consumer_id) == 0
    assert backend.cancel(gator.queue_name, first.task_id) is None


def test_to_consume_names_the_queue(gator):
    other = Gator(gator.conn_string, queue_name="images")
    other.task(tasks.add, 1, 1)
    worker = Worker(gator, max_tasks=1, to_consume="images")
    assert worker.to_consume == "images" and gator.queue_name == "all"
    worker.run_forever()
    assert other.len() == 0


def test_consumer_id_is_given_or_made(gator):
    assert Worker(gator, consumer_id="me").consumer_id == "me"
    assert Worker(gator).consumer_id != Worker(gator).consumer_id
    assert new_consumer_id().count(":") == 2


def test_stop_finishes_the_task_in_hand(gator, tmp_path):
    record = tmp_path / "ran.txt"
    gator.task(tasks.record_then_sleep, str(record), 0.5)
    gator.task(tasks.add, 1, 1)
    worker = Worker(gator)
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    wait_for(lambda: tasks.lines(record), message="the task to start")
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert worker.tasks_complete == 1 and gator.len() == 1


def test_idle_worker_blocks_instead_of_napping(gator):
    # With a nap_time this long, any nap between tasks or on an idle queue would show.
    worker = Worker(gator, max_tasks=21, nap_time=30)
    thread = threading.Thread(target=worker.run_forever)
    started = time.monotonic()
    thread.start()
    time.sleep(0.2)  # the worker is now idle, waiting on the queue
    for n in range(21):
        gator.task(tasks.add, n, 0)
    thread.join(10)
    assert not thread.is_alive(), "worker napped between tasks"
    assert time.monotonic() - started < 10


def test_a_live_worker_requeues_the_task_of_a_consumer_whose_lease_expired(gator):
    dsn = gator.conn_string + "?lease=0.6"
    leased = Gator(dsn)
    # A task held by a consumer that never renews its lease (a dead worker) is handed
    # back by a live worker's heartbeat, and that worker then runs it.
    leased.task(tasks.add, 1, 1)
    assert leased.reserve("dead-consumer") is not None
    leased.task(tasks.add, 2, 2)
    worker = Worker(leased, max_tasks=2)
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    thread.join(10)
    assert worker.tasks_complete == 2 and leased.len() == 0


SCRIPT = """
import sys
from alligator import Gator, Worker
from tests import tasks
gator = Gator("locmem://")
gator.task(tasks.record_then_sleep, sys.argv[1], float(sys.argv[2]))
gator.task(tasks.append_line, sys.argv[1], "second task")
Worker(gator).run_forever()
"""


def run_worker_script(record, seconds):
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(record), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_task_in_hand_finish(tmp_path, signum):
    record = tmp_path / "ran.txt"
    process = run_worker_script(record, 1.0)
    wait_for(lambda: tasks.lines(record), message="the task to start")
    process.send_signal(signum)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "1.0" in out.splitlines()  # the result of the task in hand
    assert "second task" not in tasks.lines(record)
    assert "Consumed 1 tasks." in out


def test_second_signal_stops_at_once(tmp_path):
    record = tmp_path / "ran.txt"
    process = run_worker_script(record, 30)
    wait_for(lambda: tasks.lines(record), message="the task to start")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert process.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10


def test_hooks_fire_in_the_process_that_runs_the_task(tmp_path):
    dsn = f"sqlite:///{tmp_path / 'queue.db'}"
    record = tmp_path / "ran.txt"
    with Gator(dsn).options(on_success=hooks.record_pid) as opts:
        opts.task(tasks.append_line, str(record), "ran")
    worker = subprocess.run(
        [sys.executable, "-m", "alligator.cli", dsn, "-m", "1"], capture_output=True, timeout=30
    )
    assert worker.returncode == 0, worker.stderr
    [ran, hook] = tasks.lines(record)
    assert ran == "ran"
    assert hook.startswith("hook in ") and hook != f"hook in {os.getpid()}"


def test_a_retried_task_prints_no_result(gator, capsys):
    with gator.options(retries=1) as opts:
        opts.task(tasks.fail)
    Worker(gator, max_tasks=1).run_forever()
    assert capsys.readouterr().out.splitlines()[1].endswith("shutting down. Consumed 1 tasks.")


def test_a_stop_asked_before_run_forever_is_kept(gator):
    gator.task(tasks.add, 1, 1)
    worker = Worker(gator)
    worker.stop()
    worker.run_forever()
    assert worker.tasks_complete == 0 and gator.len() == 1


def test_a_worker_leaving_stores_its_last_outcome_first():
    gator = flaky_gator(ack_outages=1)
    gator.task(tasks.add, 1, 1)
    worker = Worker(gator, max_tasks=1)
    worker.run_forever()
    assert FlakyBackend.outages["ack"] == 0
    assert gator.backend.requeue_inflight(gator.queue_name, worker.consumer_id) == 0


def test_a_payload_queued_by_upstream_alligator_runs(backend_dsn, queue_name, tmp_path):
    """Tasks still in a queue when a deployment switches over from upstream Alligator run."""
    gator = Gator(backend_dsn(), queue_name=queue_name)
    record = tmp_path / "ran.txt"
    payload = {
        "task_id": "upstream-1",
        "retries": 0,
        "is_async": True,
        "module": "tests.tasks",
        "callable": "append_line",
        "args": [str(record), "from upstream"],
        "kwargs": {},
        "options": {"on_success": {"module": "tests.hooks", "callable": "record_pid"}},
    }
    gator.backend.push(queue_name, "upstream-1", json.dumps(payload))
    Worker(gator, max_tasks=1).run_forever()
    assert tasks.lines(record)[0] == "from upstream"
    assert tasks.lines(record)[1].startswith("hook in ")
    assert gator.dead_letters() == []


@pytest.mark.parametrize("jitter", [False, True])
def test_retries_wait_their_delay_and_never_run_early(backend_dsn, queue_name, tmp_path, jitter):
    gator = Gator(backend_dsn(), queue_name=queue_name)
    stamps = tmp_path / "attempts.txt"
    options = {"retries": 2, "retry_delay": 0.4, "retry_backoff": 2, "retry_jitter": jitter}
    with gator.options(**options) as opts:
        opts.task(tasks.stamp_and_fail, str(stamps))
    Worker(gator, max_tasks=3, nap_time=0.01).run_forever()
    first, second, third = (float(line) for line in tasks.lines(stamps))
    # beanstalkd counts delays in whole seconds, rounded up: later, never earlier.
    slack = 1.1 if backend_dsn.backend == "beanstalk" else 0.4
    for gap, delay in ((second - first, 0.4), (third - second, 0.8)):
        assert gap >= delay
        assert gap <= (2 * delay if jitter else delay) + slack
    [dead] = gator.dead_letters()
    assert "failing on purpose" in dead.error
