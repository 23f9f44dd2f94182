"""
A worker's life after ``fork``: signals, title, the ``Worker`` loop, its board (what it
holds, in memory the master reads: ``supervisor.board``) and its reports to the master
(``supervisor.reports``).

Guarantees:

- A terminal's Control-C never reaches a worker: it runs in its own process group, and
  the master decides.
- Every SIGTERM (or SIGINT) a worker gets, the first or the tenth, from the master, from
  ``systemctl kill`` or as its parent-death signal, stops it gracefully: it finishes the
  task in hand and takes no other. Stopping it sooner is the master's call, with SIGKILL
  once ``graceful_timeout`` ran out.
- The master knows which task a worker holds from the moment the worker reserved it, before
  anything of it is decoded or imported: a worker killed by a task, however early, counts
  against that task in its queue, and a worker refuses, unopened, a task that killed
  ``DEATHS_PER_TASK`` workers.
- If the master dies, a worker notices at once on Linux (parent-death signal: SIGTERM) and
  within half a second anywhere (it watches its parent pid); it finishes its task, or
  abandons it after ``graceful_timeout`` seconds, and exits. An abandoned task returns to
  the queue when the worker's lease runs out.
"""

import copy
import logging
import os
import reprlib
import signal
import threading
import time
from dataclasses import replace
from typing import Any

import setproctitle

from alligator.backends import Reserved
from alligator.gator import Gator
from alligator.tasks import Task
from alligator.workers import Worker

from . import logs
from .board import BURY_PAYLOAD, NO_PAYLOAD, RETRY_PAYLOAD, Board, DeathTable, task_digest
from .config import WorkerSettings
from .reports import Leaving, Ready, Refused, Report
from .systemd import SYSTEMD_VARIABLES, set_parent_death_signal

log = logging.getLogger(__name__)

#: Seconds between two looks at the parent pid.
PARENT_CHECK_INTERVAL = 0.5

_reopen_logs = False


def _ask_log_reopen(signum, frame) -> None:
    # Only a flag: the worker reopens between tasks, never in the middle of a log write.
    global _reopen_logs
    _reopen_logs = True


class Reporter:
    """
    Writes the worker's reports to the master's pipe; notices when the master is gone.

    Ex::

        Reporter(write_fd).send(Ready())
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def send(self, report: Report) -> None:
        if self.broken:
            return
        data = report.encode()
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.broken = True  # the master closed its end: it is gone


class SupervisedWorker(Worker):
    """
    A ``Worker`` that keeps its board and process title up to date, reports its life to
    the master, refuses tasks that killed workers, and takes every SIGTERM as a request to
    stop after the task in hand.

    Ex::

        worker = SupervisedWorker(gator, settings, consumer_id, Reporter(fd), board, deaths)
        worker.run_forever()
    """

    # A second SIGTERM is common here (systemctl kill reaches every process; the
    # parent-death signal may follow the master's own SIGTERM) and must not cut a task
    # short: the master escalates with SIGKILL after graceful_timeout.
    second_signal_stops_now = False

    def __init__(
        self,
        gator: Gator,
        settings: WorkerSettings,
        consumer_id: str,
        reporter: Reporter,
        board: Board,
        deaths: DeathTable,
    ) -> None:
        super().__init__(
            gator,
            max_tasks=settings.max_tasks,
            to_consume=settings.queue,
            consumer_id=consumer_id,
            allowed_tasks=settings.tasks,
        )
        self.settings = settings
        self.reporter = reporter
        self.board = board
        self.deaths = deaths
        self._title = ""
        self._busy = False
        self._task: Task | None = None
        self._task_started = 0.0

    def set_title(self, state: str) -> None:
        title = f"alligatord: worker [{self.settings.queue}] {state}"
        if title != self._title:
            setproctitle.setproctitle(title)
            self._title = title

    def starting(self) -> None:
        log.info("Worker started; consumer id %s.", self.consumer_id)

    def ready(self) -> None:
        self.reporter.send(Ready())

    def stopping(self) -> None:
        self.set_title("stopping")
        log.info("Worker leaving after %d task(s).", self.tasks_complete)

    def result(self, result: Any) -> None:
        if self._task is not None:
            log.debug(
                "Task %s (%s) succeeded in %.3fs: %s",
                self._task.task_id,
                self._task.func_path,
                time.monotonic() - self._task_started,
                reprlib.repr(result),
            )

    def screen(self, reserved: Reserved) -> str | None:
        self._between_tasks()
        digest = task_digest(self.settings.queue, reserved.task_id)
        self.board.hold(digest, reserved.task_id)
        self._busy = True
        if self.max_tasks and self.tasks_complete + 1 >= self.max_tasks:
            self.reporter.send(Leaving())
        backend = self.gator.backend
        counted_here, last = self.deaths.lookup(digest)
        if counted_here:  # only on a backend that keeps no count: ask its server
            abandoned = backend.abandoned(self.settings.queue, reserved.task_id)
            taken = max(counted_here, abandoned or 0)
            reserved = replace(reserved, deaths=taken, last_death=last)
        refusal = super().screen(reserved)
        if refusal is not None and counted_here:
            self.reporter.send(Refused(digest))
        return refusal

    def running(self, task: Task) -> None:
        self._task, self._task_started = task, time.monotonic()
        self.set_title(f"running {task.func_path}")
        func = task.func_path or ""
        if self.settings.timeout:
            self.board.run(func, *self._payload_if_killed(task))
        else:
            self.board.run(func)

    def _payload_if_killed(self, task: Task) -> tuple[str | None, int, float]:
        """What the master stores if a timeout kills this run, which then counts as a failed
        attempt: the payload with one retry fewer, and how long that retry waits; or the
        payload for the dead letters."""
        try:
            if task.retries > 0:
                attempt = copy.copy(task)
                attempt.retries -= 1
                attempt.attempts += 1
                attempt.to_retrying()
                return self.gator.payload(attempt), RETRY_PAYLOAD, attempt.next_retry_delay()
            return self.gator.payload(task), BURY_PAYLOAD, 0.0
        except Exception as exc:  # the master then counts a worker death instead
            log.warning("Cannot prepare task %s for a failed run: %s", task.task_id, exc)
            return None, NO_PAYLOAD, 0.0

    def idle(self) -> None:
        self._between_tasks()
        if self._busy:
            self._busy = False
            self.board.idle()
        self.set_title("idle")

    def _between_tasks(self) -> None:
        global _reopen_logs
        if _reopen_logs:
            _reopen_logs = False
            logs.reopen()


class ParentWatch(threading.Thread):
    """Stops the worker when the master is gone, and abandons a task that outlives
    ``graceful_timeout`` after that."""

    def __init__(self, worker: SupervisedWorker, master_pid: int, graceful_timeout: float) -> None:
        super().__init__(name="alligatord-parent-watch", daemon=True)
        self.worker = worker
        self.master_pid = master_pid
        self.graceful_timeout = graceful_timeout
        self.finished = threading.Event()

    def run(self) -> None:
        while os.getppid() == self.master_pid and not self.worker.reporter.broken:
            if self.finished.wait(PARENT_CHECK_INTERVAL):
                return
        log.warning(
            "The master (pid %d) is gone; leaving after the task in hand, or in %gs at most.",
            self.master_pid,
            self.graceful_timeout,
        )
        self.worker.stop()
        if self.finished.wait(self.graceful_timeout):
            return
        log.error(
            "Abandoning the task in hand; it returns to the queue when this worker's "
            "lease runs out."
        )
        logs.flush()
        os._exit(1)


def prepare_process(
    master_pid: int, inherited_fds: list[int], master_signals: tuple[int, ...]
) -> bool:
    """
    Turns a freshly forked master into a worker process: own signal handling, own process
    group, parent-death signal, no inherited descriptors or systemd variables.

    Runs with the master's signals blocked; unblocks them once the worker's are in place.

    Ex::

        if prepare_process(master_pid, [wakeup_r, wakeup_w], HANDLED_SIGNALS):
            status = run(settings, consumer_id, write_fd, master_pid, 30.0, board, deaths)

    :returns: ``False`` if the master died already
    """
    signal.set_wakeup_fd(-1)
    for signum in master_signals:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, _ask_log_reopen)
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    for name in SYSTEMD_VARIABLES:
        os.environ.pop(name, None)
    # Out of the terminal's foreground group: a Control-C reaches the master alone.
    try:
        os.setpgid(0, 0)
    except OSError as exc:
        log.warning("Cannot leave the master's process group: %s", exc)
    set_parent_death_signal(signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, master_signals)
    # The master may have died before the parent-death signal was armed.
    return os.getppid() == master_pid


def run(
    settings: WorkerSettings,
    consumer_id: str,
    report_fd: int,
    master_pid: int,
    graceful: float,
    board: Board,
    deaths: DeathTable,
) -> int:
    """
    Runs the worker loop on one queue until asked to stop; returns the exit status.

    Ex::

        status = run(settings, consumer_id, write_fd, master_pid, 30.0, board, deaths)
    """
    logs.set_queue(settings.queue)
    setproctitle.setproctitle(f"alligatord: worker [{settings.queue}] starting")
    gator = Gator(
        settings.dsn,
        queue_name=settings.queue,
        secret=list(settings.secrets),
        result_backend=settings.result_backend,
    )
    reporter = Reporter(report_fd)
    worker = SupervisedWorker(gator, settings, consumer_id, reporter, board, deaths)
    watch = ParentWatch(worker, master_pid, graceful)
    watch.start()
    try:
        worker.run_forever()
    finally:
        watch.finished.set()
        gator.backend.close()
    return 0
