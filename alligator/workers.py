"""Worker: the consume loop — reserve, run, settle — with a graceful stop."""

import copy
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .allowlist import AllowedTasks
from .backends import Reserved
from .constants import SUCCESS
from .exceptions import AlligatorException, BackendError, InvalidTaskError, SettleError
from .gator import Gator, LeaseKeeper, new_consumer_id
from .tasks import TASK_ERRORS, Task

log = logging.getLogger(__name__)

#: Longest a reserve waits on an idle queue, so a stop request is seen within this time.
RESERVE_TIMEOUT = 1.0
#: Pauses after a backend error, doubling from the first to the last.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
#: A task whose queue counts this many deaths of workers that held it goes to the dead
#: letters unopened, instead of killing another worker.
DEATHS_PER_TASK = 3


class Worker:
    """
    Consumes a queue: takes each task off it, runs it, and acks it once it finished.

    Ex::

        gator = Gator('redis://localhost:6379/0')
        worker = Worker(gator)
        worker.run_forever()

    :param gator: The ``Gator`` whose backend to consume
    :param max_tasks: Return after this many tasks (success or failure); 0 runs forever
    :param to_consume: The queue to consume; the gator's queue when omitted
    :param nap_time: Longest pause between looks at an empty queue, for backends that
        must poll (SQLite); backends that block on the server do not nap. ``0`` never naps
        longer than the backend's shortest pause
    :param consumer_id: The id the worker's in-flight tasks are held under; a new unique
        id when omitted (a supervisor passes its own, to requeue a dead worker's task)
    :param allowed_tasks: The modules whose functions the worker may run, e.g.
        ``["myapp.tasks", "myapp.billing.*"]`` (see ``AllowedTasks``); they are imported
        before the first task. A task outside the list goes to the dead letters unimported.
        Without a list, any function but those of the standard library, builtins, Alligator
        and its dependencies may run.
    """

    #: Whether a second SIGTERM/SIGINT stops ``run_forever`` at once. A supervisor that
    #: escalates with SIGKILL itself sets it to ``False``: every signal is then graceful.
    second_signal_stops_now = True

    def __init__(
        self,
        gator: Gator,
        max_tasks: int = 0,
        to_consume: str | None = None,
        nap_time: float = 0.1,
        consumer_id: str | None = None,
        allowed_tasks: AllowedTasks | list[str] | None = None,
    ) -> None:
        if isinstance(nap_time, bool) or not isinstance(nap_time, int | float) or nap_time < 0:
            raise AlligatorException(
                f"nap_time must be a number of seconds >= 0, not {nap_time!r}."
            )
        if to_consume is not None and to_consume != gator.queue_name:
            gator = copy.copy(gator)  # shares the backend connection
            gator.queue_name = to_consume
        self.gator = gator
        self.max_tasks = max_tasks
        self.to_consume = gator.queue_name
        self.nap_time = nap_time
        self.consumer_id = consumer_id or new_consumer_id()
        if not isinstance(allowed_tasks, AllowedTasks):
            allowed_tasks = AllowedTasks(allowed_tasks)
        self.allowed_tasks = allowed_tasks
        self.tasks_complete = 0
        # Set once a first call to the backend succeeded: see ``ready``.
        self.is_ready = False
        # Cleared by stop() or a signal; never set again, so a stop asked for before
        # run_forever started (e.g. from another thread) is not lost.
        self.keep_running = True
        self._outage = False
        # Stores the outcome of a task that ran while the backend was unreachable.
        self._unsettled: Callable[[], None] | None = None

    def ident(self) -> str:
        """
        Returns a string identifier for the worker.

        Used in the printed messages & includes the process ID.
        """
        return f"Alligator Worker (#{os.getpid()})"

    def starting(self) -> None:
        """Prints a startup message to stdout."""
        print(f"{self.ident()} starting & consuming {self.to_consume!r}.", flush=True)

    def stopping(self) -> None:
        """Prints a shutdown message to stdout."""
        print(
            f"{self.ident()} for {self.to_consume!r} shutting down. "
            f"Consumed {self.tasks_complete} tasks.",
            flush=True,
        )

    def result(self, result: Any) -> None:
        """
        Prints the received result from a task to stdout.

        :param result: The result of the task
        """
        print(result, flush=True)

    def ready(self) -> None:
        """Called once the worker has imported its allowed task modules and its first call to
        the backend succeeded; override it to report that the worker is up."""

    def screen(self, reserved: Reserved) -> str | None:
        """
        Called with each payload as it comes off the queue, before anything is decoded or
        imported. Returns a reason to move it to the dead letters unopened, or ``None`` to
        run it. Refuses a task that killed ``DEATHS_PER_TASK`` workers (as its queue counts
        them: ``reserved.deaths``); override it, calling this one, to refuse tasks by what
        only you know.

        Ex::

            def screen(self, reserved):
                if reserved.task_id in BLOCKED:
                    return "Blocked by the operator."
                return super().screen(reserved)
        """
        if reserved.deaths >= DEATHS_PER_TASK:
            return (
                f"It killed {reserved.deaths} workers that took it (the last: "
                f"{reserved.last_death}), so it was not run again."
            )
        return None

    def running(self, task: Task) -> None:
        """Called with each task just before it runs; override it to report progress."""

    def idle(self) -> None:
        """Called after each task, and while the queue is empty; override it to report."""

    def stop(self) -> None:
        """Asks ``run_forever`` to return once the task in hand (if any) has finished."""
        self.keep_running = False

    def run_forever(self) -> None:
        """
        Causes the worker to run either forever or until the ``Worker.max_tasks`` are
        reached.

        In the main thread, SIGTERM and SIGINT stop it gracefully (the task in hand
        finishes); a second signal stops it at once (``SystemExit``), leaving that task to
        be requeued.
        """
        self.starting()
        restore_signals = self._install_signal_handlers()
        try:
            self.allowed_tasks.import_modules()
            with LeaseKeeper(self.gator, self.consumer_id):
                self._loop()
        except _StopNow as stop:
            raise SystemExit(128 + stop.signum) from None
        finally:
            restore_signals()
            self.stopping()

    def _loop(self) -> None:
        backoff = BACKOFF_FIRST
        while self.keep_running and not self._reached_max_tasks():
            try:
                if self._unsettled is not None:
                    self._unsettled()
                    self._unsettled = None
                self._consume_one()
            except SettleError as exc:
                self._unsettled = exc.settle
                self._backend_down(exc, backoff)
            except BackendError as exc:
                self._backend_down(exc, backoff)
            else:
                if self._outage:
                    self._outage = False
                    log.info("Queue backend reachable again.")
                backoff = BACKOFF_FIRST
                continue
            self._nap(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        if self._unsettled is not None:  # one last try: a stored outcome is not run again
            try:
                self._unsettled()
            except BackendError as exc:
                log.warning(
                    "Leaving with a task's outcome unstored (%s); that task will run again.", exc
                )

    def _backend_down(self, exc: BackendError, backoff: float) -> None:
        # One line an outage; the retries that follow are only worth a debug line.
        if self._outage:
            log.debug("Queue backend still unavailable (%s); retrying in %.1fs.", exc, backoff)
            return
        self._outage = True
        log.warning(
            "Queue backend unavailable (%s); retrying with backoff up to %gs.", exc, BACKOFF_MAX
        )

    def _reached_max_tasks(self) -> bool:
        return bool(self.max_tasks) and self.tasks_complete >= self.max_tasks

    def _consume_one(self) -> None:
        # The first look does not wait, so that a worker says it is ready at once.
        timeout = RESERVE_TIMEOUT if self.is_ready else 0.0
        reserved = self.gator.take(self.consumer_id, timeout, self.nap_time)
        if not self.is_ready:
            self.is_ready = True
            self.ready()
        if reserved is None:
            self.idle()
            return
        try:
            task = self._accept(reserved)
        except BackendError:  # its refusal could not be stored yet: the loop tries again
            self.idle()
            raise
        if task is None:
            self.tasks_complete += 1
            self.idle()
            return
        self.running(task)
        try:
            self.gator.execute(task)
        except SettleError:
            raise
        except TASK_ERRORS:
            log.exception("Task %s (%s) failed.", task.task_id, task.func_path)
        else:
            if task.status == SUCCESS:
                self.result(task.result)
        finally:
            self.tasks_complete += 1
            self.idle()

    def _accept(self, reserved: Reserved) -> Task | None:
        """The task to run, or ``None`` once a payload that must not run was dead-lettered."""
        reason = self.screen(reserved)
        if reason is not None:
            log.error(
                "Task %s in queue %r was moved to the dead-letter store unopened: %s",
                reserved.task_id,
                self.to_consume,
                reason,
            )
            self.gator.refuse(reserved, self.consumer_id, reason)
            return None
        try:
            return self.gator.decode(reserved, self.consumer_id, self.allowed_tasks)
        except InvalidTaskError as exc:  # already in the dead letters
            log.error("%s", exc)
            return None

    def _nap(self, seconds: float) -> None:
        # Short slices, so a stop request ends the pause early.
        deadline = time.monotonic() + seconds
        while self.keep_running and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.getsignal(signum) for signum in signals}

        def handle(signum, frame):
            if not self.keep_running and self.second_signal_stops_now:
                raise _StopNow(signum)
            # Only a flag: the loop notices it between tasks.
            self.keep_running = False

        for signum in signals:
            signal.signal(signum, handle)

        def restore():
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore


class _StopNow(BaseException):
    """Raised by a second stop signal through whatever the worker is doing, task included.

    Not a ``SystemExit``: a task's own ``sys.exit()`` counts as its failure, this does not.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
