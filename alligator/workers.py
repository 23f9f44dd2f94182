"""Worker: the consume loop — reserve, run, settle — with a graceful stop."""

import copy
import logging
import os
import signal
import threading
import time
from typing import Any

from .constants import SUCCESS
from .exceptions import AlligatorException, BackendError
from .gator import Gator, new_consumer_id
from .tasks import Task

log = logging.getLogger(__name__)

#: Longest a reserve waits on an idle queue, so a stop request is seen within this time.
RESERVE_TIMEOUT = 1.0
#: Pauses after a backend error, doubling from the first to the last.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


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
        must poll (SQLite); backends that block on the server do not nap
    :param consumer_id: The id the worker's in-flight tasks are held under; a new unique
        id when omitted (a supervisor passes its own, to requeue a dead worker's task)
    """

    def __init__(
        self,
        gator: Gator,
        max_tasks: int = 0,
        to_consume: str | None = None,
        nap_time: float = 0.1,
        consumer_id: str | None = None,
    ) -> None:
        if to_consume is not None and to_consume != gator.queue_name:
            gator = copy.copy(gator)  # shares the backend connection
            gator.queue_name = to_consume
        self.gator = gator
        self.max_tasks = max_tasks
        self.to_consume = gator.queue_name
        self.nap_time = nap_time
        self.consumer_id = consumer_id or new_consumer_id()
        self.tasks_complete = 0
        self.keep_running = False

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
        finishes); a second signal stops it at once, leaving that task to be requeued.
        """
        self.keep_running = True
        self.starting()
        restore_signals = self._install_signal_handlers()
        heartbeat = _Heartbeat(self.gator, self.consumer_id)
        heartbeat.start()
        try:
            backoff = BACKOFF_FIRST
            while self.keep_running and not self._reached_max_tasks():
                try:
                    self._consume_one()
                    backoff = BACKOFF_FIRST
                except BackendError as exc:
                    log.warning("Queue backend unavailable (%s); retrying in %.1fs.", exc, backoff)
                    self._nap(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            heartbeat.stop()
            restore_signals()
            self.stopping()

    def _reached_max_tasks(self) -> bool:
        return bool(self.max_tasks) and self.tasks_complete >= self.max_tasks

    def _consume_one(self) -> None:
        try:
            task = self.gator.reserve(self.consumer_id, RESERVE_TIMEOUT, self.nap_time)
        except BackendError:
            raise
        except AlligatorException as exc:  # an undecodable payload, already dead-lettered
            self.tasks_complete += 1
            log.error("%s", exc)
            return
        if task is None:
            self.idle()
            return
        self.running(task)
        try:
            self.gator.execute(task)
        except BackendError:
            raise
        except Exception:
            log.exception("Task %s (%s) failed.", task.task_id, task.func_path)
        else:
            if task.status == SUCCESS:
                self.result(task.result)
        finally:
            self.tasks_complete += 1
            self.idle()

    def _nap(self, seconds: float) -> None:
        # Short slices, so a stop request ends the pause early.
        deadline = time.monotonic() + seconds
        while self.keep_running and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.getsignal(signum) for signum in signals}

        def handle(signum, frame):
            if not self.keep_running:
                raise SystemExit(128 + signum)
            # Only a flag: the loop notices it between tasks.
            self.keep_running = False

        for signum in signals:
            signal.signal(signum, handle)

        def restore():
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore


class _Heartbeat(threading.Thread):
    """Keeps the worker's lease alive and returns tasks of consumers whose lease expired."""

    def __init__(self, gator: Gator, consumer_id: str) -> None:
        super().__init__(name=f"alligator-heartbeat-{consumer_id}", daemon=True)
        self.gator = gator
        self.consumer_id = consumer_id
        self.interval = gator.backend.lease / 3
        self._stopped = threading.Event()

    def run(self) -> None:
        backend, queue_name = self.gator.backend, self.gator.queue_name
        while True:
            try:
                backend.keepalive(queue_name, self.consumer_id)
                requeued = backend.requeue_expired(queue_name)
                if requeued:
                    log.warning(
                        "Requeued %d task(s) of queue %r whose worker stopped renewing its lease.",
                        requeued,
                        queue_name,
                    )
            except Exception as exc:
                log.warning("Heartbeat for queue %r failed: %s", queue_name, exc)
            if self._stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self._stopped.set()
