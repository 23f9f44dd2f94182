"""alligatord as a real process: start, crashes, stops, orphans and the pidfile."""

import os
import signal
import time
import uuid
from types import SimpleNamespace

import psutil
import pytest

from alligator.gator import Gator

from . import alligatord_support as support
from .alligatord_support import Daemons, is_gone, lines, sqlite_dsn, write_config
from .servers import wait_for


@pytest.fixture
def daemons():
    started = Daemons()
    yield started
    started.stop_all()


@pytest.fixture(params=["sqlite", "redis", "beanstalk"])
def backend(request, tmp_path):
    """A backend worker processes share, and two queue names no other test uses (beanstalkd
    tubes outlive a test)."""
    suffix = uuid.uuid4().hex[:8]
    if request.param == "sqlite":
        dsn = sqlite_dsn(tmp_path)
    elif request.param == "redis":
        server = request.getfixturevalue("redis")
        dsn = f"redis://{server.host}:{server.port}/0?prefix=t{suffix}"
    else:
        server = request.getfixturevalue("beanstalkd")
        dsn = f"beanstalk://{server.host}:{server.port}/"
    return SimpleNamespace(name=request.param, dsn=dsn, a=f"a{suffix}", b=f"b{suffix}")


def test_workers_per_queue_with_titles_run_tasks(daemons, backend, tmp_path):
    dsn, a, b = backend.dsn, backend.a, backend.b
    queues = {a: {"workers": 2}, b: {"workers": 1}}
    config = write_config(tmp_path / "a.ini", dsn, queues, graceful_timeout=5)
    daemon = daemons(config)
    pids = daemon.wait_workers({a: 2, b: 1})
    assert support.title(psutil.Process(daemon.pid)) == f"alligatord: master -c {config}"
    titles = sorted(daemon.workers().values())
    assert titles == [f"alligatord: worker [{a}] idle"] * 2 + [f"alligatord: worker [{b}] idle"]

    record = tmp_path / "ran.txt"
    for queue in (a, b):
        for n in range(3):
            Gator(dsn, queue_name=queue).task(support.record, str(record), f"{queue}-{n}")
    wait_for(lambda: len(lines(record)) == 6, message="six tasks to run")
    assert sorted(lines(record)) == sorted(f"{q}-{n}" for q in (a, b) for n in range(3))

    Gator(dsn, queue_name=b).task(support.sleep_then_record, str(tmp_path / "slow"), 1.0)
    running = "running tests.alligatord_support.sleep_then_record"
    assert wait_for(lambda: daemon.queue_workers(b, running)) == pids[b]
    daemon.wait_workers({a: 2, b: 1})
    assert daemon.queue_workers(a) == pids[a]  # the same workers all along

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_sigkilled_worker_is_replaced_and_its_task_runs_again(daemons, backend, tmp_path):
    dsn, a = backend.dsn, backend.a
    config = write_config(tmp_path / "a.ini", dsn, {a: {"workers": 1}}, graceful_timeout=5)
    daemon = daemons(config)
    [first] = daemon.wait_workers({a: 1})[a]
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name=a)
    gator.task(support.sleep_then_record, str(record), 1.0)
    wait_for(lambda: lines(record) == [f"start {first}"], message="the task to start")

    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    # The lease is a minute long: a second run this soon means the master requeued it
    # (beanstalkd returns it itself, when the dead worker's connection closes).
    wait_for(lambda: len(lines(record)) == 2, timeout=5, message="the task to run again")
    assert time.monotonic() - killed_at < 3
    [second] = daemon.queue_workers(a)
    assert second != first
    assert lines(record)[1] == f"start {second}"
    wait_for(lambda: f"done {second}" in lines(record), message="the second run to finish")
    assert gator.len() == 0
    assert f"(pid {first}): RUNNING -> EXITED: killed by SIGKILL unexpectedly" in daemon.log()
    if backend.name != "beanstalk":
        assert "Requeued 1 task(s) of dead worker pid" in daemon.log()

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_crash_loop_backs_off_without_spinning_and_resets(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 1}}, graceful_timeout=2)
    gator = Gator(dsn, queue_name="a")
    deaths = tmp_path / "deaths.txt"
    # A poison task: every worker that takes it dies at once, so each start fails.
    gator.task(support.die_first, str(deaths), 2)
    daemon = daemons(config)
    master = psutil.Process(daemon.pid)
    wait_for(lambda: len(lines(deaths)) == 1, message="the first death")
    cpu_before = sum(master.cpu_times()[:2])
    wait_for(lambda: len(lines(deaths)) == 3, timeout=10, message="two more tries")
    cpu_spent = sum(master.cpu_times()[:2]) - cpu_before
    times = [float(line.split()[1]) for line in lines(deaths)]
    assert times[1] - times[0] >= 0.95  # backoff 1 s after the first failed start
    assert times[2] - times[1] >= 1.95  # then 2 s
    assert cpu_spent < 0.5, f"the master used {cpu_spent:.2f}s of CPU while backing off"
    assert "(failed start #1); next try in 1s" in daemon.log()
    assert "(failed start #2); next try in 2s" in daemon.log()

    # The third try ran the task; once that worker has been up a while, the count is reset.
    wait_for(lambda: "STARTING -> RUNNING" in daemon.log(), message="a worker to stay up")
    gator.task(support.die_first, str(tmp_path / "again.txt"), 2)
    wait_for(lambda: len(lines(tmp_path / "again.txt")) == 3, timeout=10, message="a recovery")
    log = daemon.log()
    assert log.count("(failed start #1)") == 2 and "failed start #3" not in log

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sigterm_lets_the_running_task_finish_then_exits_0(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 2}}, graceful_timeout=10)
    daemon = daemons(config)
    workers = daemon.wait_workers({"a": 2})["a"]
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name="a")
    gator.task(support.sleep_then_record, str(record), 1.5)
    wait_for(lambda: lines(record), message="the task to start")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    pid = lines(record)[0].split()[1]
    assert lines(record) == [f"start {pid}", f"done {pid}"]
    assert gator.len() == 0
    assert all(is_gone(worker) for worker in workers)


def test_a_task_longer_than_graceful_timeout_is_killed_and_requeued(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 1}}, graceful_timeout=0.5)
    daemon = daemons(config)
    daemon.wait_workers({"a": 1})
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name="a")
    gator.task(support.sleep_then_record, str(record), 30)
    wait_for(lambda: lines(record), message="the task to start")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(timeout=10) == 0
    assert len(lines(record)) == 1  # never finished...
    assert gator.len() == 1  # ...and waits to run again
    assert "did not stop within graceful_timeout=0.5s; killing it" in daemon.log()


def test_sigquit_kills_at_once_and_requeues(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 2}}, graceful_timeout=60)
    daemon = daemons(config)
    workers = daemon.wait_workers({"a": 2})["a"]
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name="a")
    gator.task(support.sleep_then_record, str(record), 60)
    wait_for(lambda: lines(record), message="the task to start")
    daemon.send(signal.SIGQUIT)
    assert daemon.wait_exit(timeout=10) == 0
    assert gator.len() == 1
    assert all(is_gone(worker) for worker in workers)


def test_control_c_in_a_terminal_reaches_the_master_alone(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 1}}, graceful_timeout=10)
    daemon = daemons(config)
    daemon.wait_workers({"a": 1})
    record = tmp_path / "runs.txt"
    Gator(dsn, queue_name="a").task(support.sleep_then_record, str(record), 1.5)
    wait_for(lambda: lines(record), message="the task to start")
    # A terminal sends SIGINT to its foreground process group; twice, for an impatient
    # user. A worker that got them itself would stop at once at the second.
    os.killpg(daemon.pid, signal.SIGINT)
    time.sleep(0.1)
    os.killpg(daemon.pid, signal.SIGINT)
    assert daemon.wait_exit() == 0
    assert len(lines(record)) == 2 and lines(record)[1].startswith("done")
    assert "SIGINT: already stopping; SIGQUIT stops at once." in daemon.log()


def test_no_worker_outlives_a_sigkilled_master(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    queues = {"a": {"workers": 2}, "b": {"workers": 1}}
    config = write_config(tmp_path / "a.ini", dsn, queues, graceful_timeout=1)
    daemon = daemons(config)
    daemon.wait_workers({"a": 2, "b": 1})
    record = tmp_path / "runs.txt"
    Gator(dsn, queue_name="a").task(support.sleep_then_record, str(record), 60)
    wait_for(lambda: lines(record), message="the task to start")
    workers = list(daemon.workers())
    daemon.process.kill()
    daemon.wait_exit()
    # Idle workers leave at once; the busy one gives its task graceful_timeout, then goes.
    wait_for(lambda: all(is_gone(pid) for pid in workers), timeout=6, message="orphans to exit")
    assert len(lines(record)) == 1


def test_pidfile_rules(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    pidfile = tmp_path / "alligatord.pid"
    config = write_config(
        tmp_path / "a.ini", dsn, {"a": {"workers": 1}}, graceful_timeout=2, pidfile=pidfile.name
    )
    first = daemons(config)
    first.wait_workers({"a": 1})
    assert pidfile.read_text() == f"{first.pid}\n"

    # A second daemon on the same pidfile refuses to start, and leaves it alone.
    second = daemons(config)
    assert second.wait_exit() == 2
    assert f"names process {first.pid}, which is running" in second.log()
    assert pidfile.read_text() == f"{first.pid}\n"
    assert first.process.poll() is None

    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert not pidfile.exists()

    # A stale pidfile (its process is gone) is replaced; --pidfile wins over the file.
    pidfile.write_text(f"{first.pid}\n")
    other = tmp_path / "other.pid"
    third = daemons(config, "--pidfile", str(other))
    third.wait_workers({"a": 1})
    assert other.read_text() == f"{third.pid}\n"
    assert pidfile.read_text() == f"{first.pid}\n"
    third.send(signal.SIGTERM)
    assert third.wait_exit() == 0
    assert not other.exists()
    fourth = daemons(config)
    fourth.wait_workers({"a": 1})
    assert pidfile.read_text() == f"{fourth.pid}\n"
    assert "Replacing the stale pidfile" in fourth.log()
    fourth.send(signal.SIGTERM)
    assert fourth.wait_exit() == 0


def test_a_bad_file_refuses_to_start_with_one_sentence(daemons, tmp_path):
    config = write_config(tmp_path / "a.ini", "bogus://x", {"a": {"workers": 1}})
    daemon = daemons(config)
    assert daemon.wait_exit() == 2
    assert daemon.log().splitlines() == [
        f"alligatord: {config}, section [alligatord], key dsn: no backend handles the scheme "
        "bogus://; use one of beanstalk://, redis://, rediss://, sqlite://, unix://."
    ]
