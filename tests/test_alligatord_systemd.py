"""alligatord and systemd: sd_notify on a real datagram socket, and SIGUSR1 log reopening."""

import signal
import socket
import time

import psutil

from alligator.gator import Gator

from . import alligatord_support as support
from .alligatord_support import lines, log_order, sqlite_dsn, write_config
from .servers import wait_for


class NotifySocket:
    """A service manager's end of ``$NOTIFY_SOCKET``: collects what the daemon sends."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.socket.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            fields["received"] = time.monotonic()
            self.messages.append(fields)

    def wait(self, key: str, after: int = 0, timeout: float = 10) -> tuple[int, dict]:
        """Waits for a message with ``key`` at index ``after`` or later."""

        def found():
            for index, message in enumerate(self.receive()):
                if index >= after and key in message:
                    return index, message
            return None

        return wait_for(found, timeout=timeout, message=f"{key} from the daemon")


def test_sd_notify_ready_reloading_stopping_status_and_watchdog(daemons, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 2}}, graceful_timeout=5)
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "300000"}
    daemon = daemons(config, env=env)

    ready_at, ready = notify.wait("READY")
    assert ready["READY"] == "1"
    assert "a 2/2" in ready["STATUS"]
    # Sent once every worker is up: each went STARTING -> RUNNING before.
    assert_up_before_ready(daemon, daemon.queue_workers("a"), readies=1)
    for worker in daemon.queue_workers("a"):  # workers do not inherit systemd's variables
        assert "NOTIFY_SOCKET" not in psutil.Process(worker).environ()

    # Pings at half the watchdog interval.
    index, _ = notify.wait("WATCHDOG", after=ready_at)
    notify.wait("WATCHDOG", after=index + 1)

    write_config(config, dsn, {"a": {"workers": 3}}, graceful_timeout=5)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.send(signal.SIGHUP)
    reloading_at, reloading = notify.wait("RELOADING", after=ready_at + 1)
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= before + 5_000_000
    _, ready = notify.wait("READY", after=reloading_at + 1)
    assert "a 3/3" in ready["STATUS"]
    assert_up_before_ready(daemon, daemon.queue_workers("a"), readies=2)

    daemon.send(signal.SIGTERM)
    notify.wait("STOPPING")
    assert daemon.wait_exit() == 0


def assert_up_before_ready(daemon, workers, readies):
    """Checks, in the master's log, that every worker went STARTING -> RUNNING before the
    ``readies``-th READY=1 (each logged as "Ready: …" when sent)."""
    log = wait_for(lambda: daemon.log().count("Ready: ") >= readies and daemon.log())
    ready = -1
    for _ in range(readies):
        ready = log.index("Ready: ", ready + 1)
    assert len(workers) >= 1
    for pid in workers:
        assert log.index(f"(pid {pid}): STARTING -> RUNNING") < ready


def test_a_refused_reload_during_startup_does_not_send_ready_early(daemons, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    dsn = sqlite_dsn(tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "slow_start.py").write_text("import time\ntime.sleep(1.5)\n")
    config = write_config(
        tmp_path / "a.ini",
        dsn,
        {"a": {"workers": 2}},
        graceful_timeout=5,
        pythonpath="app",
        tasks="slow_start",
    )
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.path})
    # While the workers are still starting (their task module takes 1.5 s to import), a
    # reload is refused.
    wait_for(lambda: "forked" in daemon.log(), message="the first fork")
    config.write_text("[alligatord]\n")
    daemon.send(signal.SIGHUP)
    ready_at, _ = notify.wait("READY")
    log = wait_for(lambda: "Ready: " in daemon.log() and daemon.log())
    refused, ready = log_order(log, "Reload refused", "Ready: ")
    assert refused < ready and "STARTING -> RUNNING" not in log[:refused]
    assert_up_before_ready(daemon, daemon.queue_workers("a"), readies=1)
    # READY=1 came once, when the workers were up, not when the reload was refused.
    kinds = [
        key for message in notify.receive() for key in ("RELOADING", "READY") if key in message
    ]
    assert kinds == ["RELOADING", "READY"]
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_refused_reload_still_ends_with_ready(daemons, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    dsn = sqlite_dsn(tmp_path)
    config = write_config(tmp_path / "a.ini", dsn, {"a": {"workers": 1}}, graceful_timeout=5)
    daemon = daemons(config, env={"NOTIFY_SOCKET": notify.path})
    ready_at, _ = notify.wait("READY")
    config.write_text("[alligatord]\n")
    daemon.send(signal.SIGHUP)
    reloading_at, _ = notify.wait("RELOADING", after=ready_at + 1)
    notify.wait("READY", after=reloading_at + 1)
    assert "Reload refused" in daemon.log()
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_sigusr1_reopens_the_log_file_in_master_and_workers(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    log_file = tmp_path / "alligatord.log"
    config = write_config(
        tmp_path / "a.ini",
        dsn,
        {"a": {"workers": 1}},
        graceful_timeout=5,
        log_file=log_file.name,
        log_level="debug",
    )
    daemon = daemons(config)
    [worker] = daemon.wait_workers({"a": 1})["a"]
    wait_for(lambda: "Ready" in log_file.read_text(), message="the log file")
    rotated = tmp_path / "alligatord.log.1"
    log_file.rename(rotated)  # as logrotate does

    daemon.send(signal.SIGUSR1)
    wait_for(lambda: log_file.exists(), message="a new log file")
    assert "SIGUSR1: reopened the log file." in log_file.read_text()
    record = tmp_path / "ran.txt"
    Gator(dsn, queue_name="a").task(support.record, str(record), "ran")
    wait_for(lambda: lines(record), message="the task to run")
    worker_line = f"[{worker}] [a] DEBUG supervisor.child: Task"
    wait_for(lambda: worker_line in log_file.read_text(), message="the worker's line")
    assert worker_line not in rotated.read_text()
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_log_file_that_cannot_be_reopened_stays_in_use(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    (tmp_path / "logs").mkdir()
    config = write_config(
        tmp_path / "a.ini",
        dsn,
        {"a": {"workers": 1}},
        graceful_timeout=5,
        log_file="logs/alligatord.log",
        log_level="debug",
    )
    daemon = daemons(config)
    [worker] = daemon.wait_workers({"a": 1})["a"]
    (tmp_path / "logs").rename(tmp_path / "old-logs")  # the directory is gone
    old_log = tmp_path / "old-logs" / "alligatord.log"

    daemon.send(signal.SIGUSR1)
    cannot = "Cannot reopen the log file"
    wait_for(lambda: f"[master] WARNING supervisor.logs: {cannot}" in old_log.read_text())
    # The worker tries too, between tasks: run one.
    record = tmp_path / "ran.txt"
    Gator(dsn, queue_name="a").task(support.record, str(record), "ran")
    wait_for(lambda: lines(record), message="the task to run")
    wait_for(lambda: f"[{worker}] [a] WARNING supervisor.logs: {cannot}" in old_log.read_text())
    wait_for(lambda: f"[{worker}] [a] DEBUG supervisor.child: Task" in old_log.read_text())
    assert daemon.process.poll() is None
    assert daemon.queue_workers("a") == [worker]  # alive, still logging to the old file
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
