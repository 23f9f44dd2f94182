"""alligatord as a real process: start, crashes, stops, orphans and the pidfile."""

import os
import resource
import signal
import time
import uuid
from types import SimpleNamespace

import psutil
import pytest

from alligator.gator import Gator

from . import alligatord_support as support
from .alligatord_support import is_gone, lines, sqlite_dsn, write_config
from .servers import ServerProcess, free_port, wait_for


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
    assert gator.dead_letters() == []
    log = daemon.log()
    assert f"(pid {first}): RUNNING -> EXITED: killed by SIGKILL unexpectedly" in log
    assert (
        f"its worker (pid {first}) died while running it (killed by SIGKILL); it runs again" in log
    )

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_task_that_keeps_killing_its_worker_goes_to_the_dead_letters(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 2}}, graceful_timeout=5)
    daemon = daemons(config)
    daemon.wait_workers({"a": 2})
    wait_for(lambda: daemon.log().count("STARTING -> RUNNING") == 2, message="workers up")
    gator = Gator(dsn, queue_name="a")
    deaths, record = tmp_path / "deaths.txt", tmp_path / "ran.txt"
    # Retries are for failures the task reports; dying with its worker is not one of them.
    with gator.options(retries=5) as opts:
        poison = opts.task(support.die, str(deaths))
    for n in range(3):
        gator.task(support.record, str(record), n)

    dead = wait_for(gator.dead_letters, timeout=15, message="the poison task to be buried")
    assert [letter.task_id for letter in dead] == [poison.task_id]
    assert dead[0].error.startswith("It killed 3 workers that took it (the last: pid")
    assert "exited with status 3 while running it" in dead[0].error
    assert len(lines(deaths)) == 3
    wait_for(lambda: sorted(lines(record)) == ["0", "1", "2"], message="the other tasks")
    daemon.wait_workers({"a": 2})
    assert len(lines(deaths)) == 3 and gator.len() == 0
    log = daemon.log()
    assert log.count("with one more death counted against it (at 3, the next worker") == 3
    assert f"Task {poison.task_id} in queue 'a' was moved to the dead-letter store unopened" in log
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_garbage_on_the_report_pipe_never_stops_the_master(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    queues = {"a": {"workers": 1, "timeout": 1.5}}  # with a timeout, "at" is read
    config = write_config(tmp_path / "a.ini", dsn, queues, graceful_timeout=5)
    daemon = daemons(config)
    [worker] = daemon.wait_workers({"a": 1})["a"]
    record = tmp_path / "ran.txt"
    gator = Gator(dsn, queue_name="a")
    gator.task(support.write_garbage_reports, str(record))
    gator.task(support.record, str(record), "next")
    wait_for(lambda: lines(record) == [f"wrote {worker}", "next"], message="both tasks")
    daemon.wait_workers({"a": 1})
    assert daemon.process.poll() is None
    assert daemon.queue_workers("a") == [worker]  # the same worker did both
    assert gator.len() == 0 and gator.dead_letters() == []
    log = daemon.log()
    assert log.count(f"(pid {worker}) wrote something that is not a report, ignored") == 3
    assert "its further ones go unlogged" in log
    # The master still follows the worker's reports: it sees a task overrun its timeout.
    slow = gator.task(support.sleep_then_record, str(record), 30)
    wait_for(gator.dead_letters, timeout=10, message="the slow task to be killed")
    assert f"task {slow.task_id} (tests.alligatord_support.sleep_then_record) ran longer" in (
        daemon.log()
    )
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_worker_that_dies_before_it_is_ready_backs_off_without_spinning(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    app, flag, deaths = tmp_path / "app", tmp_path / "broken", tmp_path / "deaths.txt"
    app.mkdir()
    # A task module that, once the flag exists, kills every worker importing it at start.
    (app / "flaky_start.py").write_text(
        "import os, time\n"
        f"if os.path.exists({str(flag)!r}):\n"
        f"    with open({str(deaths)!r}, 'a') as handle:\n"
        "        handle.write(f'{os.getpid()} {time.monotonic()}\\n')\n"
        "    os._exit(3)\n"
    )
    queues = {"a": {"workers": 1}}
    config = write_config(
        tmp_path / "a.ini", dsn, queues, graceful_timeout=2, pythonpath="app", tasks="flaky_start"
    )
    daemon = daemons(config)
    master = psutil.Process(daemon.pid)
    [first] = daemon.wait_workers({"a": 1})["a"]
    assert "STARTING -> RUNNING: ready" in daemon.log()

    flag.touch()
    os.kill(first, signal.SIGKILL)  # a crash; each replacement then dies before it is ready
    wait_for(lambda: len(lines(deaths)) == 1, message="the first failed start")
    cpu_before = sum(master.cpu_times()[:2])
    wait_for(lambda: len(lines(deaths)) == 3, timeout=10, message="two more tries")
    cpu_spent = sum(master.cpu_times()[:2]) - cpu_before
    times = [float(line.split()[1]) for line in lines(deaths)]
    assert times[1] - times[0] >= 0.95  # backoff 1 s after the first failed start
    assert times[2] - times[1] >= 1.95  # then 2 s
    assert cpu_spent < 0.5, f"the master used {cpu_spent:.2f}s of CPU while backing off"
    log = daemon.log()
    assert f"(pid {first}): RUNNING -> EXITED: killed by SIGKILL unexpectedly; replacing it" in log
    assert "before it was ready (failed start #1); next try in 1s" in log
    assert "before it was ready (failed start #2); next try in 2s" in log

    # Fixed: the next try (after 4 s) gets ready, which resets the count.
    flag.unlink()
    wait_for(lambda: daemon.log().count("STARTING -> RUNNING: ready") == 2, timeout=10)
    [second] = daemon.wait_workers({"a": 1})["a"]
    flag.touch()
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: daemon.log().count("(failed start #1)") == 2, message="a new count")
    assert "failed start #4" not in daemon.log()
    flag.unlink()
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
    # user. Only the master gets them.
    os.killpg(daemon.pid, signal.SIGINT)
    wait_for(lambda: "SIGINT: stopping gracefully" in daemon.log(), message="the first SIGINT")
    os.killpg(daemon.pid, signal.SIGINT)
    assert daemon.wait_exit() == 0
    assert len(lines(record)) == 2 and lines(record)[1].startswith("done")
    assert "SIGINT: already stopping; SIGQUIT stops at once." in daemon.log()


def test_every_sigterm_a_worker_gets_lets_its_task_finish(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 1}}, graceful_timeout=10)
    daemon = daemons(config)
    [worker] = daemon.wait_workers({"a": 1})["a"]
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name="a")
    gator.task(support.stop_request_then_record, str(record), 0.5)
    wait_for(lambda: lines(record), message="the task to start")
    # As `systemctl kill` does, or a parent-death signal after the master's own SIGTERM:
    # a second SIGTERM once the worker has taken the first.
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: f"asked {worker}" in lines(record), message="the first SIGTERM taken")
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: f"done {worker}" in lines(record), message="the task to finish")
    # It left after its task; the master, which did not ask, replaces it.
    [replacement] = daemon.wait_workers({"a": 1})["a"]
    assert replacement != worker
    assert f"(pid {worker}): RUNNING -> EXITED: exited with status 0 unexpectedly" in daemon.log()
    assert gator.len() == 0 and gator.dead_letters() == []
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


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


@pytest.mark.parametrize("mode", ["pdeathsig", "parent-watch"])
def test_each_orphan_protection_works_alone(tmp_path, mode):
    log_file = tmp_path / "worker.log"
    parent, worker = support.start_orphan_parent(mode, sqlite_dsn(tmp_path), log_file)
    try:
        ready = "Prepared." if mode == "pdeathsig" else "Worker started"
        wait_for(lambda: ready in support.read(log_file), message="the worker")
        parent.kill()
        parent.wait()
        # Alone, each gets the worker out well before it would leave on its own (60 s).
        wait_for(lambda: is_gone(worker), timeout=5, message="the orphan to exit")
        if mode == "parent-watch":
            assert f"The master (pid {parent.pid}) is gone" in support.read(log_file)
    finally:
        parent.kill()
        parent.wait()
        support.kill_if_alive(worker)


def test_master_failure_kills_workers_and_requeues_their_tasks(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    (tmp_path / "app").mkdir()
    imported = tmp_path / "imported.txt"
    # Preloaded: it records where it was imported, and breaks the master's SIGUSR1
    # handling, as a bug of the master's own would.
    (tmp_path / "app" / "faulty.py").write_text(
        "import os\n"
        "from supervisor import logs\n"
        f"with open({str(imported)!r}, 'a') as handle:\n"
        "    handle.write(f'{os.getpid()}\\n')\n"
        "def reopen():\n"
        "    raise RuntimeError('a fault of the master')\n"
        "logs.has_file = lambda: True\n"
        "logs.reopen = reopen\n"
    )
    queues = {"a": {"workers": 2}}
    config = write_config(
        tmp_path / "a.ini", dsn, queues, graceful_timeout=30, preload="faulty", pythonpath="app"
    )
    daemon = daemons(config)
    workers = daemon.wait_workers({"a": 2})["a"]
    # Preloaded by the master (after a first import by the check, in a process of its own),
    # never by a worker.
    assert len(lines(imported)) == 2 and lines(imported)[-1] == str(daemon.pid)
    assert not set(lines(imported)) & {str(pid) for pid in workers}
    record = tmp_path / "runs.txt"
    gator = Gator(dsn, queue_name="a")
    gator.task(support.sleep_then_record, str(record), 60)
    wait_for(lambda: lines(record), message="the task to start")

    daemon.send(signal.SIGUSR1)
    assert daemon.wait_exit() == 1
    # The master did not leave its workers behind: it killed and reaped them...
    assert all(is_gone(pid) for pid in workers)
    # ...and put the task back as it was: no failed attempt counted for its kill.
    assert gator.len() == 1 and gator.dead_letters() == []
    log = daemon.log()
    assert log.count(" CRITICAL ") == 1
    assert (
        "alligatord failed (RuntimeError: a fault of the master); killing its 2 worker(s) "
        "and exiting." in log
    )
    assert "Requeued 1 task(s) of dead worker pid" in log


def test_no_descriptor_for_a_worker_is_a_failed_start(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 5}}, graceful_timeout=5)

    def few_descriptors():
        # 0-2, the master's wakeup pipe and one report pipe per worker: room for 4 workers.
        resource.setrlimit(resource.RLIMIT_NOFILE, (10, 10))

    daemon = daemons(config, preexec_fn=few_descriptors)
    problem = "cannot create its report pipe: [Errno 24] Too many open files); next try in"
    wait_for(lambda: daemon.log().count(problem) >= 2, timeout=10, message="two failed starts")
    assert daemon.process.poll() is None
    assert 1 <= len(daemon.workers()) <= 4
    assert "STARTING -> BACKOFF: failed start #1" in daemon.log()
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_backend_down_during_a_reap_is_one_line_and_the_task_comes_back(daemons, tmp_path):
    # A Redis of its own, stopped and started again, that keeps its data meanwhile.
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    server = ServerProcess("redis-server", [*args, "--appendonly", "yes"], port, tmp_path)
    server.start()
    try:
        dsn = support.redis_dsn(server, lease=1)
        config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 2}}, graceful_timeout=5)
        daemon = daemons(config)
        daemon.wait_workers({"a": 2})
        record = tmp_path / "runs.txt"
        Gator(dsn, queue_name="a").task(support.sleep_then_record, str(record), 60)
        wait_for(lambda: lines(record), message="the task to start")
        first = int(lines(record)[0].split()[1])

        server.stop()
        os.kill(first, signal.SIGKILL)
        returns = "when its lease runs out."
        wait_for(lambda: returns in daemon.log(), message="the master's word on it")
        server.start()
        # Its lease ran out: a live worker puts it back, and another worker runs it.
        wait_for(lambda: len(lines(record)) == 2, timeout=15, message="the task to run again")
        assert daemon.process.poll() is None
        log = daemon.log()
        assert log.count(returns) == 1
        assert f"Cannot requeue the task of dead worker pid {first} on queue 'a'" in log
        daemon.send(signal.SIGQUIT)
        assert daemon.wait_exit() == 0
    finally:
        server.stop()


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
    assert f"is held by process {first.pid}, which is running" in second.log()
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
    assert f"Replaced the stale pidfile {pidfile} (it named pid {first.pid})" in fourth.log()
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
