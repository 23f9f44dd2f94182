"""
Helpers for the alligatord tests: task functions the daemon's workers import, and a
``Daemon`` that runs ``alligatord`` as a real process and looks at it from outside.
"""

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .servers import wait_for

ROOT = Path(__file__).resolve().parent.parent

# Task functions (workers import them as tests.alligatord_support.*).

_held: list[bytearray] = []


def record(path, line):
    with open(path, "a") as handle:
        handle.write(f"{line}\n")


def lines(path) -> list[str]:
    file = Path(path)
    return file.read_text().splitlines() if file.exists() else []


def read(path) -> str:
    file = Path(path)
    return file.read_text() if file.exists() else ""


def kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def sleep_then_record(path, seconds):
    """Records ``start PID``, sleeps, records ``done PID``."""
    record(path, f"start {os.getpid()}")
    time.sleep(seconds)
    record(path, f"done {os.getpid()}")


def stamp_then_sleep(path, seconds):
    """Records ``start PID TIME`` (epoch seconds), then sleeps."""
    record(path, f"start {os.getpid()} {time.time()}")
    time.sleep(seconds)


def pause_then_record(path, line, seconds):
    """Sleeps, then records ``line``."""
    time.sleep(seconds)
    record(path, line)


def die(path):
    """Records the worker's pid and time, then kills the worker: a poison task."""
    record(path, f"{os.getpid()} {time.monotonic()}")
    os._exit(3)


def die_first(path, times):
    """Kills the worker on its first ``times`` runs (counted in ``path``), then succeeds."""
    record(path, f"{os.getpid()} {time.monotonic()}")
    if len(lines(path)) <= times:
        os._exit(3)


def write_garbage_reports(path):
    """Writes, to the pipe on which its worker reports to the master, lines that are not
    reports (malformed, wrong types, not JSON, one over the length limit), then finishes."""
    from supervisor.child import Reporter

    [reporter] = [obj for obj in gc.get_objects() if isinstance(obj, Reporter)]
    garbage = [
        b'{"event":"running","task":"x"}\n',  # no "func", no "at"
        b'{"event":"running","task":"x","func":"f","at":"soon"}\n',
        b'{"event":"running","task":"x","func":"f","at":NaN}\n',
        b'{"event":"idle","done":"many"}{\n',
        b"\xff not json\n",
        b"[1, 2]\n",
        b"x" * (3 * 1024 * 1024),  # a line that never ends...
        b"\n",  # ...until here
        b"half a line, then the worker's own report",
    ]
    for chunk in garbage:
        while chunk:
            chunk = chunk[os.write(reporter.fd, chunk) :]
    record(path, f"wrote {os.getpid()}")


def stop_request_then_record(path, seconds):
    """Records ``start PID``; once its worker has been asked to stop (a SIGTERM it handled),
    records ``asked PID``, goes on for ``seconds``, then records ``done PID``."""
    from alligator.workers import Worker

    record(path, f"start {os.getpid()}")
    [worker] = [obj for obj in gc.get_objects() if isinstance(obj, Worker)]
    while worker.keep_running:
        time.sleep(0.01)
    record(path, f"asked {os.getpid()}")
    time.sleep(seconds)
    record(path, f"done {os.getpid()}")


def hold_memory(path, megabytes):
    """Keeps ``megabytes`` of memory in the worker, touched so they count in its RSS."""
    _held.append(bytearray(b"x" * (megabytes * 2**20)))
    record(path, os.getpid())


# Orphans, one protection at a time.


def orphan_parent(mode: str, dsn: str, log_file: str) -> None:
    """
    Acts as a master: forks one worker, prints its pid, and waits to be killed.

    ``pdeathsig``: the worker is prepared as alligatord prepares its workers (which arms
    the parent-death signal) and then only sleeps, watching nothing. ``parent-watch``: the
    worker runs alligatord's worker loop, parent-pid watch included, with no parent-death
    signal armed (a fork does not inherit one).
    """
    from alligator.gator import new_consumer_id
    from supervisor import child, logs
    from supervisor.board import Board, DeathTable
    from supervisor.config import WorkerSettings

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        logs.configure("info", log_file)
        status = 0
        try:
            if mode == "pdeathsig":
                if child.prepare_process(os.getppid(), [], ()):
                    record(log_file, "Prepared.")
                    time.sleep(60)
            else:
                settings = WorkerSettings("a", dsn)
                status = child.run(
                    settings,
                    new_consumer_id(),
                    write_end,
                    os.getppid(),
                    5.0,
                    Board(),
                    DeathTable(),
                )
        finally:
            logs.flush()
            os._exit(status)
    os.close(write_end)
    print(pid, flush=True)
    time.sleep(60)


def start_orphan_parent(mode: str, dsn: str, log_file: Path) -> tuple[subprocess.Popen, int]:
    """Runs ``orphan_parent`` in a process of its own; returns it and its worker's pid."""
    code = "import sys; from tests.alligatord_support import orphan_parent; "
    code += "orphan_parent(*sys.argv[1:])"
    parent = subprocess.Popen(
        [sys.executable, "-c", code, mode, dsn, str(log_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    return parent, int(parent.stdout.readline())


# The daemon.


def write_config(path: Path, dsn: str, queues: dict[str, dict], **main) -> Path:
    """Writes an INI file: ``[alligatord]`` with ``dsn`` and ``main``, a section a queue."""
    text = f"[alligatord]\ndsn = {dsn}\n"
    text += "".join(f"{key} = {value}\n" for key, value in main.items())
    for name, keys in queues.items():
        text += f"\n[queue:{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    path.write_text(text)
    return path


def title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()).strip()
    except psutil.Error:
        return ""


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Daemon:
    """
    ``alligatord -c CONFIG`` in its own session (so a test may signal its process group),
    logging to a file the test can read.
    """

    def __init__(
        self,
        config: Path,
        *args: str,
        env: dict | None = None,
        cwd: Path = ROOT,
        log_path: Path | None = None,
        preexec_fn=None,
    ) -> None:
        self.config = config
        self.args = args
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        self.env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
        self.env.update(env or {})
        self.log_path = log_path or config.with_suffix(".log")
        self.process: subprocess.Popen | None = None
        self.seen: set[int] = set()

    def start(self) -> "Daemon":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.cli", "-c", str(self.config), *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
            )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def workers(self) -> dict[int, str]:
        """The master's live children: pid -> process title."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return {}
        found = {}
        for child in children:
            name = title(child)
            if name and not is_gone(child.pid):
                found[child.pid] = name
        self.seen.update(found)
        return found

    def queue_workers(self, queue: str, state: str = "") -> list[int]:
        prefix = f"alligatord: worker [{queue}] {state}"
        return sorted(pid for pid, name in self.workers().items() if name.startswith(prefix))

    def wait_workers(self, counts: dict[str, int], state: str = "idle", timeout=15) -> dict:
        """Waits until each queue has exactly ``counts[queue]`` workers in ``state``, and
        no other worker is alive; returns queue -> pids."""

        def settled():
            workers = self.workers()
            found = {q: self.queue_workers(q, state) for q in counts}
            total = sum(len(pids) for pids in found.values())
            if total == len(workers) and all(len(found[q]) == n for q, n in counts.items()):
                return found
            return None

        return wait_for(settled, timeout=timeout, message=f"workers {counts} {state}")

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Kills the daemon and every worker it ever had, whatever state the test left."""
        if self.process is None:
            return
        self.workers()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in self.seen:
            try:
                process = psutil.Process(pid)
                if title(process).startswith("alligatord: "):  # not a reused pid
                    process.kill()
            except psutil.Error:
                pass


_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Daemons:
    """Starts daemons for one test and stops them all at its end (see the ``daemons``
    fixture of each test module)."""

    def __init__(self) -> None:
        self.started: list[Daemon] = []

    def __call__(self, config: Path, *args: str, **options) -> Daemon:
        daemon = Daemon(config, *args, **options)
        self.started.append(daemon)
        return daemon.start()

    def stop_all(self) -> None:
        for daemon in self.started:
            daemon.stop()


def sqlite_dsn(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


def redis_dsn(server, **options) -> str:
    """A DSN on a test redis-server, with a key prefix no other test uses."""
    query = "".join(f"&{key}={value}" for key, value in options.items())
    return f"redis://{server.host}:{server.port}/0?prefix=t{os.urandom(6).hex()}{query}"


def backend_dsn(request, tmp_path: Path) -> str:
    """A DSN for the backend ``request.param`` names: ``sqlite`` or ``redis``."""
    if request.param == "sqlite":
        return sqlite_dsn(tmp_path)
    return redis_dsn(request.getfixturevalue("redis"))


def log_order(log: str, *needles: str) -> list[int]:
    """Where each text first appears in a log (fails the test if one is missing)."""
    positions = []
    for needle in needles:
        assert needle in log, needle
        positions.append(log.index(needle))
    return positions


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``alligatord ARGS`` to its end, with its output."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
