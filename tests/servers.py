"""Real queue servers for the tests: started on a free loopback port, stopped after."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: The repository root: workers started from here can import ``tests.tasks``.
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Polls ``condition`` until it returns something truthy; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


class ServerProcess:
    """A server binary run on 127.0.0.1:port; can be stopped and started again."""

    def __init__(self, binary: str, args: list[str], port: int, workdir: Path) -> None:
        path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
        if path is None:
            pytest.fail(f"{binary} is not installed; the README's test command installs it.")
        self.argv = [path, *args]
        self.host, self.port, self.workdir = "127.0.0.1", port, workdir
        self.process: subprocess.Popen | None = None

    def accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self.accepts, message=f"{self.argv[0]} to accept on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def redis_server(workdir: Path) -> ServerProcess:
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return ServerProcess("redis-server", args + ["--dir", str(workdir)], port, workdir)


def beanstalkd_server(workdir: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess("beanstalkd", ["-l", "127.0.0.1", "-p", str(port)], port, workdir)


def start_latergator(dsn: str, queue_name: str, *extra: str, log_path: Path | None = None):
    """A ``latergator`` worker in a process of its own; its log goes to ``log_path``."""
    stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "alligator.cli", dsn, "-q", queue_name, *extra],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    finally:
        if log_path:
            stderr.close()


def kill_process(process: subprocess.Popen) -> None:
    """Kills a process the test started, if it still runs, and reaps it."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
