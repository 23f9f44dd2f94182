"""
The master: one event loop that forks workers, watches them and stops them.

Signal handlers only record the signal; ``signal.set_wakeup_fd`` wakes the loop, which
does all the work in one place: handle the recorded signals, reap every dead worker
(``waitpid(-1, WNOHANG)`` until none is left), requeue its in-flight task, then bring each
queue to the workers its configuration asks for.

Each worker lives in a *slot*, whose state follows Supervisor's names::

    EXITED ──spawn──> STARTING ──reported ready──> RUNNING ──died──> EXITED (respawned at once)
                         │  ▲                         │  │
              died first │  │ backoff over            │  └─died, crashes in a burst──> BACKOFF
                         ▼  │                         │ retired (stop, reload, recycle)
                       BACKOFF                        ▼
                                              STOPPING ──exited──> EXITED (slot removed)

A worker is ready once it imported its task modules and its backend answered. One that dies
before that failed to start: its slot waits 1, 2, 4 … 60 seconds before the next try, and a
worker that gets ready resets the count. One that dies after is a crash, replaced at once;
only when a queue's workers crash more than ``CRASH_BURST`` times in ``CRASH_WINDOW``
seconds does each replacement wait ``CRASH_PAUSE``. The master knows from a worker's board
which task it held (from the moment it was reserved), counts the deaths of each task, and
publishes the count in the death table, where the next worker to take a task that killed
``DEATHS_PER_TASK`` moves it to the dead letters unopened. The master never runs tasks and
never holds a backend connection across a fork: it builds a client only to requeue a reaped
worker's task, and closes it at once.
"""

import enum
import logging
import os
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil
import setproctitle

from alligator.backends import client_class
from alligator.gator import new_consumer_id
from alligator.workers import DEATHS_PER_TASK

from . import child, logs
from .board import Board, DeathTable, Held
from .config import Config, QueueConfig, WorkerSettings
from .exits import describe_exit
from .preflight import ImportCheck, check_file, use_pythonpath
from .reports import Leaving, Ready, Refused, Report, ReportError, ReportReader
from .requeue import Requeue, requeue_tasks
from .systemd import Notifier, monotonic_usec

log = logging.getLogger(__name__)

#: Pauses before the next try after failed starts: 1, 2, 4 … up to this.
BACKOFF_MAX = 60.0
#: More crashes than this within ``CRASH_WINDOW`` seconds, in one queue, make a burst:
#: each replacement then waits ``CRASH_PAUSE`` seconds, so that a crash loop cannot spin.
CRASH_BURST = 10
CRASH_WINDOW = 10.0
CRASH_PAUSE = 1.0
#: Seconds between two memory checks of workers whose queue sets ``max_memory``.
MEMORY_CHECK_INTERVAL = 2.0
#: The longest the loop sleeps without a reason to wake.
LOOP_MAX_SLEEP = 1.0
#: After a failure of its own, how long the master waits for its killed workers to go.
FAILURE_REAP_SECONDS = 5.0
#: Invalid reports logged per worker; more are dropped without a word.
BAD_REPORTS_LOGGED = 3

#: The signals the master handles; blocked around each fork.
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGUSR1,
)


class MasterFailed(Exception):
    """The master hit an unexpected error; it killed its workers and logged why."""


class State(enum.Enum):
    """Where a worker slot is in its life."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"


#: Every transition a slot may make, and the log level it is reported at.
TRANSITIONS: dict[tuple[State, State], int] = {
    (State.EXITED, State.STARTING): logging.INFO,
    (State.STARTING, State.RUNNING): logging.INFO,
    (State.STARTING, State.BACKOFF): logging.WARNING,
    (State.STARTING, State.STOPPING): logging.INFO,
    (State.RUNNING, State.STOPPING): logging.INFO,
    (State.RUNNING, State.EXITED): logging.WARNING,
    (State.RUNNING, State.BACKOFF): logging.WARNING,
    (State.BACKOFF, State.STARTING): logging.INFO,
    (State.BACKOFF, State.EXITED): logging.INFO,
    (State.STOPPING, State.EXITED): logging.INFO,
}


def backoff_delay(failures: int) -> float:
    """
    Seconds to wait before trying again after ``failures`` failed starts in a row.

    Ex::

        [backoff_delay(n) for n in (1, 2, 3, 7, 8)]  # [1.0, 2.0, 4.0, 60.0, 60.0]
    """
    return min(BACKOFF_MAX, 2.0 ** max(failures - 1, 0))


@dataclass(eq=False)
class Slot:
    """One place for a worker of a queue, and the worker process in it (if any)."""

    settings: WorkerSettings
    number: int
    state: State = State.EXITED
    pid: int | None = None
    consumer_id: str = ""
    pipe: int | None = None
    board: Board | None = None
    reader: ReportReader = field(default_factory=ReportReader)
    bad_reports: int = 0
    started_at: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    retry_why: str = ""
    kill_at: float | None = None
    timed_out: bytes | None = None  # the digest of the task it was killed for overrunning
    killed_to_stop: bool = False  # SIGKILLed by a stop: its task's run is not its fault
    term_sent: bool = False
    eof: bool = False  # the worker closed its end of the pipe: it is exiting

    @property
    def name(self) -> str:
        return f"{self.settings.queue}#{self.number}"

    def describe(self) -> str:
        return f"worker {self.name}" + (f" (pid {self.pid})" if self.pid else "")

    def held(self) -> Held | None:
        """The task the worker holds, as its board says; ``None`` when it holds none."""
        return None if self.board is None else self.board.read()

    def busy_since(self) -> float | None:
        """When the worker took the task it holds (its board's cheap part), or ``None``."""
        held = None if self.board is None else self.board.glance()
        return None if held is None else held.since

    def to(self, state: State, why: str) -> None:
        """Moves to ``state``, which must be allowed from the current one; logs it."""
        level = TRANSITIONS.get((self.state, state))
        if level is None:
            raise RuntimeError(
                f"{self.describe()}: no transition {self.state.name} -> {state.name}"
            )
        log.log(level, "%s: %s -> %s: %s.", self.describe(), self.state.name, state.name, why)
        self.state = state


@dataclass(eq=False)
class Pool:
    """A queue's slots. ``config`` is ``None`` once the queue left the configuration."""

    config: QueueConfig | None
    slots: list[Slot] = field(default_factory=list)
    crashes: deque[float] = field(default_factory=deque)  # times of the recent crashes
    in_burst: bool = False


class Master:
    """
    Runs the configured queues' workers until stopped.

    Ex::

        config, _ = preflight.validate('/etc/alligator/alligator.ini')
        master = Master(config, '/etc/alligator/alligator.ini')
        exit_status = master.run()

    :param config: The validated configuration
    :param config_path: The file to read again on SIGHUP, as given on the command line
    :param log_level: A level from the command line, which wins over the file's
    :param notifier: Where to send systemd notifications; from the environment if omitted
    :param private_fds: Descriptors of the master's own (e.g. the pidfile's, which holds
        its lock) that workers must not inherit
    :param pidfile: The pidfile given on the command line, which a reload keeps
    """

    def __init__(
        self,
        config: Config,
        config_path: str,
        log_level: str | None = None,
        notifier: Notifier | None = None,
        private_fds: tuple[int, ...] = (),
        pidfile: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.log_level_override = log_level
        self.pidfile_override = pidfile
        self.notifier = notifier or Notifier()
        self.private_fds = private_fds
        self.pools: dict[str, Pool] = {}
        self.by_pid: dict[int, Slot] = {}
        # The tasks that killed workers, shared with every worker forked from here on.
        self.deaths = DeathTable()
        # A reload waiting for its import check, and the warnings of its file.
        self.reload: tuple[ImportCheck, list[str]] | None = None
        self.signals: deque[int] = deque()
        self.stopping = False
        self.ready_pending = True  # READY=1 is due once the workers are up
        self.status = ""
        self.next_memory_check = 0.0
        self.next_watchdog = 0.0
        self.wakeup_r = self.wakeup_w = -1
        self.pid = os.getpid()

    # The loop.

    def run(self) -> int:
        """
        Forks the workers and supervises them until SIGTERM, SIGINT or SIGQUIT.

        :returns: The exit status: 0
        :raises MasterFailed: After an unexpected error, once every worker was killed and
            its task requeued
        """
        setproctitle.setproctitle(f"alligatord: master -c {self.config_path}")
        self._install_signals()
        try:
            log.info(
                "alligatord started: master pid %d, %d queue(s), %d worker(s).",
                self.pid,
                len(self.config.queues),
                self.config.total_workers,
            )
            for queue in self.config.queues:
                self.pools[queue.name] = Pool(queue)
            try:
                self._loop()
            except Exception as exc:
                self._fail(exc)
                raise MasterFailed(str(exc)) from exc
        finally:
            self._uninstall_signals()
            self.notifier.close()
        log.info("alligatord stopped.")
        return 0

    def _loop(self) -> None:
        while True:
            self._supervise()
            if self.stopping and not self.by_pid:
                return
            self._wait(self._sleep_time())
            self._handle_signals()
            self._reap()

    def _fail(self, exc: Exception) -> None:
        """Stops at once after an error of the master's own: kills every worker, reaps
        them and requeues their tasks, so that no worker outlives a master in an unknown
        state. One log line says why."""
        log.critical(
            "alligatord failed (%s: %s); killing its %d worker(s) and exiting.",
            type(exc).__name__,
            exc,
            len(self.by_pid),
            exc_info=exc,
        )
        self.stopping = True
        try:
            self.notifier.notify("STOPPING=1", "STATUS=Failed; stopping.")
            for pid in self.by_pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            requeues = []
            deadline = time.monotonic() + FAILURE_REAP_SECONDS
            while self.by_pid and time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    time.sleep(0.01)  # SIGKILLed processes are gone within moments
                    continue
                slot = self.by_pid.pop(pid, None)
                if slot is not None:
                    requeues.append(Requeue(slot.settings, slot.consumer_id, pid))
            requeue_tasks(requeues)
        except Exception:
            log.exception("Stopping after that failure failed too; tasks return by lease.")

    def _install_signals(self) -> None:
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)

    def _uninstall_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)

    def _record_signal(self, signum: int, frame: Any) -> None:
        # Only a record: the wakeup fd has already woken the loop, which does the work.
        self.signals.append(signum)

    def _sleep_time(self) -> float:
        deadlines = [time.monotonic() + LOOP_MAX_SLEEP]
        for slot in self._slots():
            if slot.state is State.BACKOFF:
                deadlines.append(slot.retry_at)
            if slot.kill_at is not None:
                deadlines.append(slot.kill_at)
            if slot.settings.timeout and slot.timed_out is None and slot.pid is not None:
                since = slot.busy_since()  # a task started later is seen at the next turn
                if since is not None:
                    deadlines.append(since + slot.settings.timeout)
        if self.notifier.watchdog_interval:
            deadlines.append(self.next_watchdog)
        if self.reload is not None:
            deadlines.append(self.reload[0].deadline)
        # A floor, so that a deadline that somehow stays in the past cannot spin the CPU.
        return max(0.01, min(deadlines) - time.monotonic())

    def _wait(self, timeout: float) -> None:
        pipes = {
            slot.pipe: slot for slot in self._slots() if slot.pipe is not None and not slot.eof
        }
        check = None if self.reload is None else self.reload[0]
        check_fd = None if check is None else check.fileno()
        poller = select.poll()
        for fd in (self.wakeup_r, *pipes, *([] if check_fd is None else [check_fd])):
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(timeout * 1000):
            if fd == self.wakeup_r:
                self._drain(fd)
            elif fd == check_fd:
                check.read()
            else:
                self._read_reports(pipes[fd])

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _slots(self) -> list[Slot]:
        return [slot for pool in self.pools.values() for slot in pool.slots]

    # Signals.

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            if signum == signal.SIGCHLD:
                continue  # every turn of the loop reaps
            name = signal.Signals(signum).name
            if signum == signal.SIGQUIT:
                log.info("SIGQUIT: stopping at once.")
                self._stop(graceful=False)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.info("%s: already stopping; SIGQUIT stops at once.", name)
                else:
                    log.info(
                        "%s: stopping gracefully (at most %gs).",
                        name,
                        self.config.graceful_timeout,
                    )
                    self._stop(graceful=True)
            elif signum == signal.SIGHUP:
                if self.stopping:
                    log.info("SIGHUP: ignored while stopping.")
                else:
                    self._reload()
            elif signum == signal.SIGUSR1:
                self._reopen_logs()

    def _stop(self, graceful: bool) -> None:
        self._drop_reload()
        if not self.stopping:
            self.stopping = True
            self.notifier.notify("STOPPING=1", "STATUS=Stopping.")
        for pool in self.pools.values():
            for slot in list(pool.slots):
                if graceful or slot.pid is None:
                    self._retire(pool, slot, "alligatord is stopping")
                else:
                    self._kill_to_stop(slot)
                    if slot.state is not State.STOPPING:
                        slot.to(State.STOPPING, "stopping at once (SIGQUIT)")

    def _reopen_logs(self) -> None:
        if not logs.has_file():
            log.info("SIGUSR1: no log_file is configured; nothing to reopen.")
            return
        if logs.reopen():
            log.info("SIGUSR1: reopened the log file.")
        # Passed on either way: a worker's own reopen may well succeed.
        for slot in self._slots():
            if slot.pid is not None:
                self._kill(slot, signal.SIGUSR1)

    # Reload.

    def _reload(self) -> None:
        """Validates the file as a start would; the imports are tried by a process of their
        own, which the loop watches (``_reload_checked`` applies the file once it is done),
        so that the master goes on meanwhile."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
        log.info("SIGHUP: reloading %s.", self.config_path)
        self._drop_reload()  # a newer SIGHUP wins
        try:
            new, warnings = check_file(self.config_path, self.pidfile_override)
            self.reload = (ImportCheck(new), warnings)
        except Exception as exc:  # whatever the file holds, the running master goes on
            self._refuse_reload(exc)
            return
        self._reload_checked()

    def _reload_checked(self) -> None:
        check, warnings = self.reload
        if not check.done:
            return
        self.reload = None
        if check.error is not None:
            self._refuse_reload(check.error)
        else:
            self._apply(check.config, warnings)

    def _refuse_reload(self, exc: Exception) -> None:
        log.error("Reload refused, the running configuration stays: %s", exc)
        if not self.ready_pending:  # else READY=1 comes once the workers are up
            self.notifier.notify("READY=1", f"STATUS={self.status}")

    def _drop_reload(self) -> None:
        """Abandons a reload still checking its imports (its process is reaped as it ends)."""
        if self.reload is not None:
            self.reload[0].kill()
            self.reload = None

    def _apply(self, new: Config, warnings: list[str]) -> None:
        for warning in warnings:
            log.warning("%s", warning)
        old = self.config
        for key in ("pidfile", "preload"):
            if getattr(new, key) != getattr(old, key):
                log.warning("%s changed; it takes effect at the next start, not on reload.", key)
        use_pythonpath(new)
        level = self.log_level_override or new.log_level
        if new.log_file != old.log_file:
            try:
                logs.configure(level, new.log_file)
            except OSError as exc:
                logs.set_level(level)
                log.error("Cannot open log_file %s (%s); logging as before.", new.log_file, exc)
        else:
            logs.set_level(level)
        for name, pool in self.pools.items():
            if pool.config is not None and new.queue(name) is None:
                log.info("Queue %r removed: stopping its workers.", name)
                pool.config = None
        for queue in new.queues:
            pool = self.pools.get(queue.name)
            if pool is None or pool.config is None:
                log.info("Queue %r added with %d worker(s).", queue.name, queue.workers)
                self.pools.setdefault(queue.name, Pool(queue)).config = queue
            elif pool.config.settings != queue.settings:
                log.info("Queue %r changed: replacing its workers.", queue.name)
                pool.config = queue
            elif pool.config.workers != queue.workers:
                log.info(
                    "Queue %r: %d -> %d worker(s).", queue.name, pool.config.workers, queue.workers
                )
                pool.config = queue
        self.config = new
        self.ready_pending = True
        log.info("Reloaded %s.", self.config_path)

    # Bringing each queue to what it should be.

    def _supervise(self) -> None:
        now = time.monotonic()
        if self.reload is not None and now >= self.reload[0].deadline:
            self.reload[0].kill()  # reaped next, which refuses the reload
        for slot in self._slots():
            if slot.kill_at is not None and now >= slot.kill_at:
                slot.kill_at = None
                log.warning(
                    "%s did not stop within graceful_timeout=%gs; killing it.",
                    slot.describe(),
                    self.config.graceful_timeout,
                )
                self._kill_to_stop(slot)
            self._check_timeout(slot, now)
        if not self.stopping:
            if now >= self.next_memory_check:
                self.next_memory_check = now + MEMORY_CHECK_INTERVAL
                self._check_memory()
            for name, pool in list(self.pools.items()):
                if pool.in_burst and not _forget_old_crashes(pool):
                    pool.in_burst = False
                    log.info(
                        "Queue %r: worker crashes calmed down; replacing at once again.", name
                    )
                self._scale(pool, now)
                if pool.config is None and not pool.slots:
                    del self.pools[name]
        self._notify(now)

    def _check_timeout(self, slot: Slot, now: float) -> None:
        timeout = slot.settings.timeout
        if not timeout or slot.timed_out is not None or slot.pid is None:
            return
        held = slot.board.glance()
        if held is None or now - held.since < timeout:
            return
        slot.timed_out = held.digest
        log.error(
            "%s: task %s (%s) ran longer than timeout=%gs; killing the worker.",
            slot.describe(),
            held.task_id,
            held.func or "not yet decoded",
            timeout,
        )
        self._kill(slot, signal.SIGKILL)
        if slot.state is not State.STOPPING:
            slot.to(State.STOPPING, "killed for overrunning its timeout")

    def _check_memory(self) -> None:
        for pool in self.pools.values():
            for slot in list(pool.slots):
                limit = slot.settings.max_memory
                # A worker still STARTING is judged once it is up: right after the fork
                # its memory is mostly the master's.
                if not limit or slot.pid is None or slot.state is not State.RUNNING:
                    continue
                try:
                    # USS: the memory this worker alone holds. RSS would also count the
                    # pages it still shares with the master (preload) and its siblings.
                    used = psutil.Process(slot.pid).memory_full_info().uss
                except psutil.Error:
                    continue  # gone: the next reap deals with it
                if used > limit:
                    self._retire(
                        pool,
                        slot,
                        f"recycling: its own memory (USS) {used / 2**20:.0f} MiB > max_memory "
                        f"{limit / 2**20:.0f} MiB",
                    )

    def _scale(self, pool: Pool, now: float) -> None:
        wanted = pool.config.workers if pool.config is not None else 0
        live = [slot for slot in pool.slots if slot.state is not State.STOPPING]
        current = [
            slot
            for slot in live
            if pool.config is not None and slot.settings == pool.config.settings
        ]
        outdated = [slot for slot in live if slot not in current]

        # Retire the surplus first, so that nothing is started only to be stopped.
        surplus = []
        if len(current) > wanted:
            surplus = sorted(current, key=_retire_first)[: len(current) - wanted]
        for slot in surplus:
            self._retire(pool, slot, f"scaling down to {wanted} worker(s)")
            current.remove(slot)
        # Replace what died, then start what is missing.
        for slot in current:
            if slot.state is State.EXITED or (
                slot.state is State.BACKOFF and now >= slot.retry_at
            ):
                self._spawn(slot)
        while len(current) < wanted:
            slot = Slot(pool.config.settings, self._free_number(pool))
            pool.slots.append(slot)
            current.append(slot)
            self._spawn(slot)

        # Workers of an older configuration leave as their replacements come up; those
        # without a process leave at once.
        up = sum(1 for slot in current if slot.state is State.RUNNING)
        keep = max(0, wanted - up)
        leaving = []
        if len(outdated) > keep:
            leaving = sorted(outdated, key=_retire_first)[: len(outdated) - keep]
        for slot in outdated:
            if slot in leaving or slot.pid is None:
                self._retire(pool, slot, "replaced after a configuration change")

    @staticmethod
    def _free_number(pool: Pool) -> int:
        taken = {slot.number for slot in pool.slots if slot.state is not State.STOPPING}
        number = 1
        while number in taken:
            number += 1
        return number

    def _retire(self, pool: Pool, slot: Slot, why: str) -> None:
        """Stops a slot's worker gracefully (after its task), or drops a slot without one."""
        if slot.pid is None:
            if slot.state is State.BACKOFF:
                slot.to(State.EXITED, why)
            pool.slots.remove(slot)
            return
        if not slot.term_sent:
            self._kill(slot, signal.SIGTERM)
            slot.term_sent = True
        deadline = time.monotonic() + self.config.graceful_timeout
        slot.kill_at = deadline if slot.kill_at is None else min(slot.kill_at, deadline)
        if slot.state is not State.STOPPING:
            slot.to(State.STOPPING, why)

    def _kill_to_stop(self, slot: Slot) -> None:
        """SIGKILL for a stop that cannot wait: the task it cuts short is requeued as it
        was, with no failed attempt counted."""
        slot.killed_to_stop = True
        self._kill(slot, signal.SIGKILL)

    def _kill(self, slot: Slot, signum: int) -> None:
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass  # dead already; reaped on this turn of the loop

    # Forking.

    def _spawn(self, slot: Slot) -> None:
        """Forks a worker into ``slot``; the child never returns from here."""
        consumer_id = new_consumer_id()
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:  # EMFILE, ENFILE: as good as a failed fork
            self._failed_start(slot, f"cannot create its report pipe: {exc}")
            return
        try:
            board = Board()
        except OSError as exc:  # ENOMEM
            os.close(read_end)
            os.close(write_end)
            self._failed_start(slot, f"cannot map its board: {exc}")
            return
        inherited = [self.wakeup_r, self.wakeup_w, read_end, *self.private_fds]
        inherited += [other.pipe for other in self._slots() if other.pipe is not None]
        if self.notifier.fileno() is not None:
            inherited.append(self.notifier.fileno())
        # Blocked across the fork, so that no signal reaches the child before it has
        # replaced the master's handlers with its own.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            os.close(read_end)
            os.close(write_end)
            board.close()
            self._failed_start(slot, f"cannot fork: {exc}")
            return
        if pid == 0:
            self._become_worker(slot, consumer_id, write_end, inherited, board)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        os.close(write_end)
        os.set_blocking(read_end, False)
        slot.pid, slot.consumer_id, slot.pipe, slot.board = pid, consumer_id, read_end, board
        slot.reader, slot.bad_reports = ReportReader(), 0
        slot.started_at = time.monotonic()
        slot.timed_out, slot.kill_at = None, None
        slot.killed_to_stop, slot.term_sent, slot.eof = False, False, False
        self.by_pid[pid] = slot
        if slot.state is State.BACKOFF:
            slot.to(State.STARTING, slot.retry_why)
        else:
            slot.to(State.STARTING, "forked")

    def _failed_start(self, slot: Slot, why: str) -> None:
        slot.failures += 1
        delay = backoff_delay(slot.failures)
        self._wait_before_retry(slot, delay)
        log.error(
            "Cannot start a worker for queue %r (%s); next try in %gs.",
            slot.settings.queue,
            why,
            delay,
        )
        if slot.state is not State.BACKOFF:
            slot.to(State.STARTING, "start attempted")
            slot.to(State.BACKOFF, f"failed start #{slot.failures}")

    @staticmethod
    def _wait_before_retry(slot: Slot, delay: float) -> None:
        slot.retry_at = time.monotonic() + delay
        slot.retry_why = f"retrying after {delay:g}s"

    def _become_worker(
        self, slot: Slot, consumer_id: str, write_end: int, inherited: list[int], board: Board
    ) -> None:
        status = 1
        try:
            if child.prepare_process(self.pid, inherited, HANDLED_SIGNALS):
                status = child.run(
                    slot.settings,
                    consumer_id,
                    write_end,
                    self.pid,
                    self.config.graceful_timeout,
                    board,
                    self.deaths,
                )
            else:
                status = 0
        except SystemExit as exc:  # outside any task: a task's own is its failure
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            log.exception("Worker for queue %r failed.", slot.settings.queue)
        finally:
            logs.flush()
            os._exit(status)

    # Reaping.

    def _reap(self) -> None:
        requeues: list[Requeue] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.reload is not None and pid == self.reload[0].pid:
                self.reload[0].finished(status)
                self._reload_checked()
                continue
            slot = self.by_pid.pop(pid, None)
            if slot is None:
                continue
            requeues.append(self._settle_exit(slot, status))
        if requeues:
            requeue_tasks(requeues)

    def _settle_exit(self, slot: Slot, status: int) -> Requeue:
        # Everything the worker wrote before it died is in the pipe: read it to the end,
        # so that a worker that got ready just before it died counts as having started.
        self._read_reports(slot, to_end=True)
        os.close(slot.pipe)
        how = describe_exit(status)
        requeue = Requeue(slot.settings, slot.consumer_id, slot.pid)
        self._judge_held_task(slot, how, requeue)
        slot.board.close()
        pool = self.pools.get(slot.settings.queue)
        slot.pipe, slot.board, slot.kill_at = None, None, None
        if slot.state is State.STOPPING or self.stopping:
            if slot.state is not State.STOPPING:
                slot.to(State.STOPPING, "alligatord is stopping")
            slot.to(State.EXITED, how)
            if pool is not None and slot in pool.slots:
                pool.slots.remove(slot)
        elif slot.state is State.STARTING:
            slot.failures += 1
            delay = backoff_delay(slot.failures)
            self._wait_before_retry(slot, delay)
            lived = time.monotonic() - slot.started_at
            slot.to(
                State.BACKOFF,
                f"{how} {lived:.2f}s after its start, before it was ready (failed start "
                f"#{slot.failures}); next try in {delay:g}s",
            )
        elif pool is not None and self._crash_burst(pool, slot.settings.queue):
            self._wait_before_retry(slot, CRASH_PAUSE)
            slot.to(State.BACKOFF, f"{how} unexpectedly; replacing it in {CRASH_PAUSE:g}s")
        else:
            slot.to(State.EXITED, f"{how} unexpectedly; replacing it")
        slot.pid = None
        return requeue

    @staticmethod
    def _crash_burst(pool: Pool, queue: str) -> bool:
        """Counts a crash of one of the pool's workers; says whether crashes come in a burst
        (and logs it once, as a burst begins)."""
        pool.crashes.append(time.monotonic())
        _forget_old_crashes(pool)
        if len(pool.crashes) > CRASH_BURST and not pool.in_burst:
            pool.in_burst = True
            log.warning(
                "Queue %r: %d worker crashes in %gs; each replacement waits %gs until they "
                "calm down.",
                queue,
                len(pool.crashes),
                CRASH_WINDOW,
                CRASH_PAUSE,
            )
        return pool.in_burst

    def _judge_held_task(self, slot: Slot, how: str, requeue: Requeue) -> None:
        """Decides what a dead worker's death means for the task it held. A stop never
        counts. A timeout kill counts as a failed attempt, when the worker had left the
        payload to store for it. Any other death is counted against the task in its queue,
        where the next worker to take it refuses it once it killed ``DEATHS_PER_TASK``."""
        held = slot.held()
        if held is None or slot.killed_to_stop:
            return
        queue = slot.settings.queue
        task = f"Task {held.task_id} ({held.func or 'not yet decoded'}) on queue {queue!r}"
        # A server that returns a dead worker's task itself leaves nothing to settle, and
        # keeps no count but its own: the death table says which tasks to ask it about.
        server_requeues = client_class(slot.settings.dsn).server_requeues_dead_consumers
        if (
            slot.timed_out == held.digest
            and held.payload is not None
            and held.complete_id
            and not server_requeues
        ):
            requeue.failed = held
            requeue.failure = (
                f"Killed by alligatord: the task ran longer than "
                f"timeout={slot.settings.timeout:g}s (worker pid {slot.pid})."
            )
            return
        requeue.death = f"pid {slot.pid} {how} {held.phase}"
        if server_requeues:
            self.deaths.record(held.digest, requeue.death)
        log.warning(
            "%s: its worker (pid %d) died %s (%s); it runs again as it was, with one more death "
            "counted against it (at %d, the next worker to take it moves it to the dead "
            "letters).",
            task,
            slot.pid,
            held.phase,
            how,
            DEATHS_PER_TASK,
        )

    def _read_reports(self, slot: Slot, to_end: bool = False) -> None:
        if slot.pipe is None:
            return
        while True:
            try:
                chunk = os.read(slot.pipe, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("Cannot read the reports of %s: %s", slot.describe(), exc)
                break
            if not chunk:
                slot.eof = True  # not polled again: it would be readable for ever
                break
            for report in slot.reader.feed(chunk):
                if isinstance(report, ReportError):
                    self._on_bad_report(slot, report)
                else:
                    self._on_report(slot, report)
            if not to_end:
                break

    def _on_report(self, slot: Slot, report: Report) -> None:
        if isinstance(report, Ready):
            if slot.state is State.STARTING:
                slot.failures = 0
                slot.to(State.RUNNING, "ready")
        elif isinstance(report, Leaving):
            if slot.state is not State.STOPPING:
                slot.to(
                    State.STOPPING,
                    f"recycling after this task (max_tasks={slot.settings.max_tasks})",
                )
        elif isinstance(report, Refused):
            self.deaths.forget(report.digest)

    @staticmethod
    def _on_bad_report(slot: Slot, error: ReportError) -> None:
        slot.bad_reports += 1
        if slot.bad_reports <= BAD_REPORTS_LOGGED:
            more = (
                "; its further ones go unlogged" if slot.bad_reports == BAD_REPORTS_LOGGED else ""
            )
            log.warning(
                "%s wrote something that is not a report, ignored%s: %s",
                slot.describe(),
                more,
                error,
            )

    # Telling systemd.

    def _notify(self, now: float) -> None:
        status = self._status_line()
        if self.ready_pending and not self.stopping and self._workers_up():
            self.ready_pending = False
            self.status = status
            self.notifier.notify("READY=1", f"STATUS={status}")
            log.info("Ready: %s", status)
        elif status != self.status and not self.stopping:
            self.status = status
            self.notifier.notify(f"STATUS={status}")
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.notifier.notify("WATCHDOG=1")
            self.next_watchdog = now + self.notifier.watchdog_interval

    def _workers_up(self) -> bool:
        """Whether every wanted worker has started (or waits to retry a failed start)."""
        for pool in self.pools.values():
            if pool.config is None:
                continue
            current = [
                slot
                for slot in pool.slots
                if slot.state is not State.STOPPING and slot.settings == pool.config.settings
            ]
            if len(current) < pool.config.workers:
                return False
            if any(slot.state in (State.STARTING, State.EXITED) for slot in current):
                return False
        return True

    def _status_line(self) -> str:
        parts = []
        total = 0
        for name, pool in self.pools.items():
            if pool.config is None:
                continue
            up = sum(
                1
                for slot in pool.slots
                if slot.state in (State.STARTING, State.RUNNING)
                and slot.settings == pool.config.settings
            )
            total += up
            parts.append(f"{name} {up}/{pool.config.workers}")
        return f"{total} worker(s) up; " + ", ".join(parts)


def _forget_old_crashes(pool: Pool) -> bool:
    """Drops the pool's crashes older than ``CRASH_WINDOW``; says whether those left make a
    burst."""
    since = time.monotonic() - CRASH_WINDOW
    while pool.crashes and pool.crashes[0] < since:
        pool.crashes.popleft()
    return len(pool.crashes) > CRASH_BURST


def _retire_first(slot: Slot) -> tuple:
    """Which slots to retire first: no process, then not yet up, then idle, newest first."""
    order = {State.BACKOFF: 0, State.EXITED: 0, State.STARTING: 1, State.RUNNING: 2}
    return (order.get(slot.state, 3), slot.busy_since() is not None, -slot.started_at)
