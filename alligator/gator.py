"""Gator and Options: the API producers and consumers share."""

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from . import outcomes
from .allowlist import AllowedTasks
from .backends import (
    DEAD,
    DELAYED,
    FINISHED,
    HELD,
    INFLIGHT,
    READY,
    Client,
    DeadLetter,
    Dependencies,
    Outcome,
    Reserved,
    client_class,
)
from .constants import ALL, RETRYING, TaskStatus
from .exceptions import (
    AlligatorException,
    BackendError,
    DuplicateTaskError,
    InvalidTaskError,
    SettleError,
    TaskNotFound,
    UnknownTaskError,
)
from .signing import Signer
from .tasks import TASK_ERRORS, Task

log = logging.getLogger(__name__)

#: Seconds a task pushed to a backend that assigns ids waits, delayed, until what waits on it
#: is carried over to its new id; it is made ready as soon as that is done, and only a crash
#: in between leaves it parked this long.
PARKED_FOR = 30.0


def new_consumer_id() -> str:
    """
    Returns an id for a consumer that is unique across hosts and processes.

    Ex::

        new_consumer_id()  # 'web-1:4242:9f8e7d6c'
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Gator:
    """
    The entry point: puts tasks on a queue, and takes them off to run them.

    Ex::

        gator = Gator('sqlite:///queue.db')
        gator.task(send_email, user_id=42)

    :param conn_string: A DSN naming the backend, e.g. ``'redis://localhost:6379/0'``
    :param queue_name: The queue this gator pushes to and pops from
    :param task_class: The ``Task`` class to build tasks with
    :param backend_class: A ``Client`` class to use instead of the one the DSN's scheme names
    :param secret: Sign every task pushed, and run only tasks signed, with this secret (at
        least 16 characters); a list of secrets is accepted for rotation: the first signs,
        any verifies. See ``alligator.signing``.
    :param result_backend: A DSN of another backend to keep tasks' outcomes (for
        ``status`` and ``result``) and dependencies in: needed with ``beanstalk://``, which
        keeps neither; otherwise the queue's own backend keeps them, with each task's end
    """

    def __init__(
        self,
        conn_string: str,
        queue_name: str = ALL,
        task_class: type[Task] = Task,
        backend_class: type[Client] | None = None,
        secret: str | list[str] | None = None,
        result_backend: str | None = None,
    ) -> None:
        self.conn_string = conn_string
        self.queue_name = queue_name
        self.task_class = task_class
        self.backend_class = backend_class
        self.signer = Signer(secret) if secret else None
        self.backend = self.build_backend(conn_string)
        if result_backend is not None and result_backend == conn_string:
            raise AlligatorException(
                f"The result_backend of queue {queue_name!r} is its own backend: leave it out, "
                "that backend keeps the outcomes itself."
            )
        # Outcomes kept elsewhere are stored just before the task's end (a crash in between
        # runs the task again, which stores them again), not with it; so are dependencies.
        self.result_backend = (
            client_class(result_backend)(result_backend) if result_backend else None
        )
        # Whether outcomes are kept at all: if not, none is even built on the hot path.
        self.keeps_outcomes = self.result_backend is not None or self.backend.keeps_results
        # Tasks popped by this gator itself (pop/get) are held in flight under this id.
        self.consumer_id = new_consumer_id()

    def build_backend(self, conn_string: str) -> Client:
        """
        Given a DSN, returns an instantiated backend class.

        Ex::

            backend = gator.build_backend('locmem://')
            # ...or...
            backend = gator.build_backend('redis://127.0.0.1:6379/0')

        :param conn_string: A DSN for connecting to the queue. Passed along to the backend.
        :returns: A backend ``Client`` instance
        """
        backend_class = self.backend_class or client_class(conn_string)
        return backend_class(conn_string)

    def len(self) -> int:
        """
        Returns the number of remaining queued tasks (ready, delayed, or held until their
        dependencies succeed).

        Ex::

            gator.len()

        :returns: An integer count
        """
        held_elsewhere = 0
        if self.result_backend is not None:  # held there, or released on their way here
            held_elsewhere = self.result_backend.len(self.queue_name)
        return self.backend.len(self.queue_name) + held_elsewhere

    def push(self, task: Task, func: Any, *args: Any, **kwargs: Any) -> Task:
        """
        Pushes a configured task onto the queue.

        Typically, you'll favor using the ``Gator.task`` method or ``Gator.options`` context
        manager for creating a task. Call this only if you have specific needs or know what
        you're doing.

        If the ``Task`` has the ``is_async=False`` option, the task will be run immediately
        (in-process). This is useful for development and in testing.

        A task with ``depends_on`` is held, never reserved, until every task it depends on
        succeeded; then it joins the back of its queue. If one of them fails for good or is
        canceled, it is canceled too (its status ``CANCELED``, its result error naming that
        task). One that already succeeded counts as done; one the backend does not know
        raises ``UnknownTaskError``. A synchronous task runs at once: its dependencies,
        synchronous too, ran already.

        Ex::

            task = Task(is_async=False, retries=3)
            finished = gator.push(task, increment, incr_by=2)

            report = gator.task(build_report, 7)
            gator.push(Task(depends_on=[report]), send_report, 7)

        :param task: A mostly-configured task
        :param func: The callable with business logic to execute
        :param args: Positional arguments to pass to the callable task
        :param kwargs: Keyword arguments to pass to the callable task
        :returns: The ``Task`` instance
        :raises UnknownTaskError: A task in ``depends_on`` is unknown to the backend
        """
        task.to_call(func, *args, **kwargs)
        if not task.is_async:
            return self.execute(task)
        depends_on = self._dependencies(task)
        if depends_on is None:
            task.task_id = self.backend.push(
                self.queue_name, task.task_id, self.payload(task), task.delay_until
            )
        elif self.result_backend is not None:
            self._hold_in_results(task, depends_on)
        else:
            task.task_id = self.backend.push(
                self.queue_name,
                task.task_id,
                self.payload(task),
                task.delay_until,
                depends_on=depends_on,
            )
        task.queue_name = self.queue_name
        return task

    def _dependencies(self, task: Task) -> Dependencies | None:
        """A task's ``depends_on`` as the backend takes it: (queue, id) pairs, each once."""
        if not task.depends_on:
            return None
        if not self.keeps_outcomes:
            raise AlligatorException(
                f"The backend of {self.backend.conn_string.split('://', 1)[0]}:// keeps no "
                "dependencies: give the Gator a result_backend (e.g. Gator(dsn, "
                "result_backend='redis://localhost:6379/0')) to use depends_on."
            )
        pairs = (
            (self.queue_name, item) if isinstance(item, str) else tuple(item)
            for item in task.depends_on
        )
        return Dependencies(tuple(dict.fromkeys(pairs)), task.result_ttl)

    def _hold_in_results(self, task: Task, depends_on: Dependencies) -> None:
        """
        Holds a task in the result backend until its dependencies, which live in the
        queue's backend, succeeded. Whether each exists is asked there after the hold is
        stored, so that none can end unseen in between.
        """
        results = self.result_backend
        held_on = Dependencies(depends_on.on, depends_on.ttl, elsewhere=True)
        results.push(self.queue_name, task.task_id, self.payload(task), task.delay_until, held_on)
        for dependency in depends_on.on:
            if results.locate(*dependency) is None and self.backend.locate(*dependency) is None:
                results.cancel(self.queue_name, task.task_id)
                raise UnknownTaskError(task.task_id, dependency)
        self.forward_released(self.queue_name)

    def forward_released(self, queue_name: str) -> int:
        """
        Pushes the tasks a result backend released (their dependencies succeeded) to their
        queue in this gator's backend; each is handed over in the result backend once it
        is there, and the id it got there is followed from its first one. A crash in
        between pushes it again, later (at-least-once).

        Called at the end of a dependency, after a push with dependencies, and by each
        worker's heartbeat (for what a crash left behind). Only with a ``result_backend``.

        Ex::

            gator.forward_released('emails')

        :returns: How many tasks were pushed
        """
        results = self.result_backend
        forwarded = 0
        while (released := results.reserve(queue_name, self.consumer_id)) is not None:
            old_id = released.task_id
            ttl = _payload_field(released.data, "result_ttl", outcomes.DEFAULT_RESULT_TTL)

            def hand_over(new_id: str, old_id: str = old_id, ttl: Any = ttl) -> None:
                pointer = None if new_id == old_id else outcomes.moved(new_id, ttl)
                results.hand_over(queue_name, old_id, self.consumer_id, new_id, pointer)

            try:
                self._push_then(queue_name, old_id, released.data, None, hand_over)
            except DuplicateTaskError:
                hand_over(old_id)  # pushed already, by an attempt that crashed
            forwarded += 1
        return forwarded

    def _push_then(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        delay_until: float | None,
        carry: Callable[[str], None],
    ) -> str:
        """
        Pushes a task to its queue, and calls ``carry`` with the id it is stored under
        before any worker can take it, so that what waits on it in the result backend is
        there first. A backend that assigns ids gets a task due now parked (delayed) until
        then; a task due later waits for its time (at least a second, on beanstalkd).
        """
        parked = self.backend.assigns_ids and delay_until is None
        due = time.time() + PARKED_FOR if parked else delay_until
        new_id = self.backend.push(queue_name, task_id, data, due)
        carry(new_id)
        if parked:
            self.backend.make_ready(queue_name, new_id)
        return new_id

    def payload(self, task: Task) -> str:
        """
        Returns what is stored for a task: its JSON, signed when the gator has a secret.

        Ex::

            data = gator.payload(task)
        """
        data = task.serialize()
        return data if self.signer is None else self.signer.sign(data)

    def task(self, func: Any, *args: Any, **kwargs: Any) -> Task:
        """
        Pushes a task onto the queue.

        This will instantiate a ``Gator.task_class`` instance, configure the callable & its
        arguments, then push it onto the queue.

        You'll typically want to use either this method or the ``Gator.options`` context
        manager (if you need to configure the ``Task`` arguments, such as ``retries``,
        ``is_async``, ``task_id``, etc.)

        Ex::

            on_queue = gator.task(increment, incr_by=2)

        :param func: The callable with business logic to execute
        :param args: Positional arguments to pass to the callable task
        :param kwargs: Keyword arguments to pass to the callable task
        :returns: The ``Task`` instance
        """
        return self.push(self.task_class(), func, *args, **kwargs)

    def options(self, **kwargs: Any) -> "Options":
        """
        Allows specifying advanced ``Task`` options to control how the task runs.

        This returns a context manager which will create ``Task`` instances with the
        supplied options. See ``Task.__init__`` for the available arguments.

        Ex::

            def party_time(task, result):
                # Throw a party in honor of this task completing.
                # ...

            with gator.options(retries=2, on_success=party_time) as opts:
                opts.task(increment, incr_by=2678)

        :param kwargs: Keyword arguments to control the task execution
        :returns: An ``Options`` context manager instance
        """
        return Options(self, **kwargs)

    def execute(self, task: Task) -> Task:
        """
        Given a task instance, this runs it.

        This includes handling retries & re-raising exceptions. A failure with retries left
        runs a synchronous task again at once, and puts an async task back on its queue
        with one fewer retry (status "retrying"), delayed by ``Task.next_retry_delay()``. The
        last failure of an async task (or of any task taken off the queue) puts it in the
        queue's dead-letter store with its error text, then re-raises.

        Ex::

            task = Task(is_async=False, retries=5)
            task.to_call(add, 101, 35)
            finished_task = gator.execute(task)

        :param task: The task to run
        :returns: The completed ``Task`` instance
        :raises SettleError: The task ran, but its outcome could not be stored in the queue
        """
        while True:
            try:
                task.run()
            except TASK_ERRORS as exc:
                if task.retries > 0:
                    task.retries -= 1
                    task.attempts += 1
                    wait = task.next_retry_delay() if task.is_async else 0.0
                    log.warning(
                        "Task %s (%s) failed (%s: %s); %d retries left, the next in %.3gs.",
                        task.task_id,
                        task.func_path,
                        type(exc).__name__,
                        exc,
                        task.retries,
                        wait,
                    )
                    if not task.is_async:
                        continue
                    self._settle(task.task_id, partial(self._retry_later, task, wait))
                    return task
                if task.is_async or task.reserved_by is not None:
                    error = "".join(traceback.format_exception(exc)).strip()
                    bury = partial(self._bury, task, error, type(exc).__name__)
                    self._settle(task.task_id, bury)
                raise
            if task.reserved_by is not None:
                self._settle(task.task_id, partial(self._ack, task))
            return task

    @staticmethod
    def _settle(task_id: str, store: Callable[[], None]) -> None:
        try:
            store()
        except BackendError as exc:
            raise SettleError(
                f"The outcome of task {task_id} could not be stored in the queue: {exc}", store
            ) from exc

    def _with_end(self, task_id: str, succeeded: bool, outcome: Outcome | None) -> Outcome | None:
        """
        The outcome for the queue's backend to keep with a task's end. With a result
        backend, the end is told there first: the outcome kept, the tasks held on it
        released (and forwarded to their queues) or canceled.
        """
        if self.result_backend is None:
            return outcome if self.backend.keeps_results else None
        released = self.result_backend.finish(self.queue_name, task_id, succeeded, outcome)
        for queue_name in released:
            self.forward_released(queue_name)
        return None

    def _ack(self, task: Task) -> None:
        outcome = None
        if self.keeps_outcomes:
            outcome = outcomes.success(task.task_id, task.result, task.result_ttl)
        end = self._with_end(task.task_id, True, outcome)
        self.backend.ack(self.queue_name, task.task_id, task.reserved_by, end)
        task.reserved_by = None

    def _retry_later(self, task: Task, wait: float) -> None:
        data = self.payload(task)
        due = time.time() + wait if wait else None
        if task.reserved_by is None:
            task.task_id = self.backend.push(self.queue_name, task.task_id, data, due)
        elif self.backend.assigns_ids and self.result_backend is not None:
            # The retry gets an id of its own (beanstalkd): whoever follows the old id, or
            # waits for it, is sent on to the new one before a worker can take it, and only
            # then does the old job go.
            old_id, results = task.task_id, self.result_backend

            def move(new_id: str) -> None:
                moved = outcomes.moved(new_id, task.result_ttl)
                results.move(self.queue_name, old_id, new_id, moved)

            task.task_id = self._push_then(self.queue_name, old_id, data, due, move)
            self.backend.ack(self.queue_name, old_id, task.reserved_by)
            task.reserved_by = None
        else:
            task.task_id = self.backend.retry(
                self.queue_name, task.task_id, task.reserved_by, data, due
            )
            task.reserved_by = None

    def _bury(self, task: Task, error: str, exc_type: str) -> None:
        outcome = outcomes.failure(error, exc_type, task.result_ttl)
        self.backend.add_dead_letter(
            self.queue_name,
            task.task_id,
            self.payload(task),
            error,
            consumer_id=task.reserved_by,
            outcome=self._with_end(task.task_id, False, outcome),
        )
        task.reserved_by = None

    def reserve(
        self,
        consumer_id: str,
        timeout: float = 0.0,
        poll_interval: float = 0.1,
        allowed: AllowedTasks | None = None,
    ) -> Task | None:
        """
        Takes the next task off the queue, held in flight for ``consumer_id``, without
        running it. Pass it to ``Gator.execute``, which acks it once it finished.

        A payload that cannot be decoded, is not signed as the gator's secret requires, or
        names a function that is not allowed goes to the dead-letter store, and its error
        is raised.

        Ex::

            task = gator.reserve(consumer_id, timeout=1.0)
            if task is not None:
                gator.execute(task)

        :param consumer_id: Who holds the task (see ``new_consumer_id``)
        :param timeout: Seconds to wait for a task to arrive
        :param poll_interval: Longest pause between looks, for backends that must poll
        :param allowed: The modules whose functions may run (see ``AllowedTasks``)
        :returns: The reserved ``Task``, or ``None`` if the queue stayed empty
        :raises InvalidTaskError: The payload went to the dead letters, for this reason
        """
        reserved = self.take(consumer_id, timeout, poll_interval)
        return None if reserved is None else self.decode(reserved, consumer_id, allowed)

    def take(
        self, consumer_id: str, timeout: float = 0.0, poll_interval: float = 0.1
    ) -> Reserved | None:
        """
        Takes the next payload off the queue, held in flight for ``consumer_id``, without
        looking inside it. ``Gator.decode`` turns it into a task.

        Ex::

            reserved = gator.take(consumer_id, timeout=1.0)

        :returns: A ``Reserved`` (``task_id``, ``data``), or ``None`` if the queue stayed empty
        """
        return self.backend.reserve(self.queue_name, consumer_id, timeout, poll_interval)

    def decode(
        self, reserved: Reserved, consumer_id: str, allowed: AllowedTasks | None = None
    ) -> Task:
        """
        Turns a payload taken off the queue into a task ready to run: checks its signature
        (when the gator has a secret), decodes it and checks that its function may run
        (before importing anything), then imports it. A payload that fails any of these
        goes to the dead-letter store with the reason, which is raised.

        Ex::

            task = gator.decode(reserved, consumer_id, AllowedTasks(["myapp.tasks"]))

        :raises InvalidTaskError: The payload went to the dead letters, for this reason
        """
        try:
            task = self._open(reserved.data, allowed)
        except Exception as exc:  # whatever the payload is, it must not stop a worker
            self.refuse(reserved, consumer_id, str(exc), type(exc).__name__)
            raise InvalidTaskError(
                f"Task {reserved.task_id} in queue {self.queue_name!r} cannot be run and was "
                f"moved to the dead-letter store: {exc}"
            ) from exc
        task.task_id = reserved.task_id
        task.queue_name = self.queue_name
        task.reserved_by = consumer_id
        return task

    def _open(self, data: str, allowed: AllowedTasks | None) -> Task:
        if self.signer is not None:
            data = self.signer.verify(data)
        return self.task_class.deserialize(data, allowed)

    def refuse(
        self, reserved: Reserved, consumer_id: str, reason: str, exc_type: str = "Refused"
    ) -> None:
        """
        Moves a payload taken off the queue to the dead-letter store as it was, unopened;
        its outcome is that failure (kept for the default ``result_ttl``: its own cannot be
        read).

        Ex::

            gator.refuse(reserved, consumer_id, "It killed 3 workers.")

        :raises SettleError: The backend could not store it; ``settle()`` tries again
        """

        def bury() -> None:
            outcome = outcomes.failure(reason, exc_type, outcomes.DEFAULT_RESULT_TTL)
            self.backend.add_dead_letter(
                self.queue_name,
                reserved.task_id,
                reserved.data,
                reason,
                consumer_id,
                self._with_end(reserved.task_id, False, outcome),
            )

        self._settle(reserved.task_id, bury)

    def pop(self) -> Task | None:
        """
        Pops a task off the front of the queue & runs it.

        Typically, you'll favor using a ``Worker`` to handle processing the queue (to
        constantly consume). However, if you need to custom-process the queue in-order,
        this method is useful.

        Ex::

            # Tasks were previously added, maybe by a different process or
            # machine...
            finished_topmost_task = gator.pop()

        :returns: The completed ``Task`` instance, or ``None`` if the queue is empty
        """
        task = self.reserve(self.consumer_id)
        if task is None:
            return None
        with LeaseKeeper(self, self.consumer_id):
            return self.execute(task)

    def get(self, task_id: str) -> Task:
        """
        Gets a specific task, by ``task_id`` off the queue & runs it.

        Using this is not as performant (because it has to search the queue), but can be
        useful if you need to specifically handle a task *right now*.

        Ex::

            # Tasks were previously added, maybe by a different process or
            # machine...
            finished_task = gator.get('a-specific-uuid-here')

        :param task_id: The identifier of the task to process
        :returns: The completed ``Task`` instance
        """
        reserved = self.backend.get(self.queue_name, task_id, self.consumer_id)
        if reserved is None:
            raise TaskNotFound(f"No task {task_id!r} waits in queue {self.queue_name!r}.")
        task = self.decode(reserved, self.consumer_id)
        with LeaseKeeper(self, self.consumer_id):
            return self.execute(task)

    def cancel(self, task_id: str) -> Task:
        """
        Takes an existing task & cancels it before it is processed.

        Returns the canceled task, as that could be useful in creating a new task.

        Ex::

            task = gator.task(add, 18, 9)

            # Whoops, didn't mean to do that.
            gator.cancel(task.task_id)

        Its outcome, ``CANCELED``, is kept for the default ``result_ttl``; the tasks that
        depend on it are canceled too. A task held until its dependencies succeed can be
        canceled as well.

        :param task_id: The identifier of the task to cancel
        :returns: The canceled ``Task`` instance
        """
        outcome = outcomes.canceled("Canceled by Gator.cancel.", outcomes.DEFAULT_RESULT_TTL)
        results = self.result_backend
        if results is None:
            kept_here = outcome if self.backend.keeps_results else None
            data = self.backend.cancel(self.queue_name, task_id, kept_here)
        else:
            data = self.backend.cancel(self.queue_name, task_id)
            if data is not None:
                self._with_end(task_id, False, outcome)
            else:  # maybe held in the result backend, waiting for its dependencies
                data = results.cancel(self.queue_name, task_id, outcome)
        if data is None:
            raise TaskNotFound(f"No task {task_id!r} waits in queue {self.queue_name!r}.")
        try:
            task = self._open(data, None)
        except Exception as exc:
            # Canceled all the same; its payload is kept where a person can look at it.
            reason = f"Canceled, but its payload cannot be decoded: {exc}"
            self.backend.add_dead_letter(self.queue_name, task_id, data, reason)
            raise InvalidTaskError(
                f"Task {task_id} was canceled, but its payload cannot be decoded ({exc}); "
                f"it was moved to the dead-letter store."
            ) from exc
        task.task_id = task_id
        task.to_canceled()
        return task

    def status(self, task_id: str) -> TaskStatus:
        """
        The status of a task of this queue, from any process: ``WAITING``, ``DELAYED``,
        ``RETRYING`` (waiting again after a failed attempt), ``RUNNING`` (a worker holds it),
        ``SUCCESS``, ``FAILED`` (for good) or ``CANCELED``, and ``UNKNOWN`` for a task the
        backend never saw or forgot (its outcome expired, or none was kept).

        Ex::

            gator.status(task.task_id)  # TaskStatus.RUNNING

        :raises AlligatorException: When no backend keeps outcomes (``beanstalk://`` without
            a ``result_backend``)
        """
        results = self._results()
        if results is not self.backend:
            # Kept just before the task's end: a kept outcome is the last word.
            seen: set[str] = set()
            while True:
                record = results.result(self.queue_name, task_id)
                moved_to = _moved_to(record, task_id, seen)
                if moved_to is None:
                    break
                task_id = moved_to
            if record is not None:
                return TaskStatus(outcomes.read(record)["status"])
            held = results.locate(self.queue_name, task_id)
            if held is not None:  # held there, or released and on its way to the queue
                return TaskStatus.DELAYED if held.place == DELAYED else TaskStatus.WAITING
        found = self.backend.locate(self.queue_name, task_id)
        if found is None:
            return TaskStatus.UNKNOWN
        if found.place == FINISHED:
            return TaskStatus(outcomes.read(found.data)["status"])
        if found.place in (READY, DELAYED) and _payload_field(found.data, "status") == RETRYING:
            return TaskStatus.RETRYING
        return _STATUS_OF_PLACE[found.place]

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """
        The value a task of this queue returned, once it finished, from any process: waits
        for it up to ``timeout`` seconds (``None``: as long as it takes; ``0``: not at all),
        on the server where the backend can (Redis), else looking again at growing
        intervals.

        Ex::

            task = gator.task(add, 1, 2)
            gator.result(task.task_id, timeout=30)  # 3

        :raises TaskFailed: The task failed for good; its ``error`` (traceback text) and
            ``exc_type`` are attached
        :raises TaskCanceled: The task was canceled
        :raises ResultTimeout: ``timeout`` passed first (or no outcome is kept for it)
        :raises AlligatorException: When no backend keeps outcomes (``beanstalk://`` without
            a ``result_backend``)
        """
        results = self._results()
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            record = results.result(self.queue_name, task_id, remaining)
            moved_to = _moved_to(record, task_id, seen)
            if moved_to is None:
                return outcomes.value_of(task_id, record)
            task_id = moved_to

    def _results(self) -> Client:
        if self.result_backend is not None:
            return self.result_backend
        if not self.backend.keeps_results:
            raise AlligatorException(
                f"The backend of {self.backend.conn_string.split('://', 1)[0]}:// keeps no "
                "task outcomes: give the Gator a result_backend (e.g. "
                "Gator(dsn, result_backend='redis://localhost:6379/0')) to use status() and "
                "result()."
            )
        return self.backend

    def dead_letters(self) -> list[DeadLetter]:
        """
        Lists the tasks of this queue that failed for good, oldest first.

        Ex::

            for dead in gator.dead_letters():
                print(dead.task_id, dead.error)

        :returns: A list of ``DeadLetter`` (``task_id``, ``data``, ``error``, ``failed_at``)
        """
        return self.backend.list_dead_letters(self.queue_name)

    def requeue_dead_letters(self, task_ids: list[str] | None = None) -> int:
        """
        Puts dead letters (all, or those named) back on the queue to run again.

        Ex::

            gator.requeue_dead_letters()

        :param task_ids: The ids to requeue; all when omitted
        :returns: How many tasks were requeued
        """
        return self.backend.requeue_dead_letters(self.queue_name, task_ids)

    def purge_dead_letters(self) -> int:
        """
        Deletes this queue's dead letters for good.

        Ex::

            gator.purge_dead_letters()

        :returns: How many were deleted
        """
        return self.backend.purge_dead_letters(self.queue_name)


_STATUS_OF_PLACE = {
    HELD: TaskStatus.WAITING,
    READY: TaskStatus.WAITING,
    DELAYED: TaskStatus.DELAYED,
    INFLIGHT: TaskStatus.RUNNING,
    DEAD: TaskStatus.FAILED,
}


def _moved_to(record: str | None, task_id: str, seen: set[str]) -> str | None:
    """The id a retry took, when ``record`` points there (a backend that gives each retry an
    id of its own); never round in a circle."""
    moved_to = None if record is None else outcomes.read(record).get("moved_to")
    if moved_to is None:
        return None
    seen.add(task_id)
    if moved_to in seen:
        raise InvalidTaskError(f"The kept outcomes of task {task_id} point round in a circle.")
    return moved_to


def _payload_field(data: str, name: str, default: Any = None) -> Any:
    """A field a payload holds, without decoding more of it (``default`` if it cannot)."""
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        return default
    return fields.get(name, default) if isinstance(fields, dict) else default


class LeaseKeeper(threading.Thread):
    """
    While it runs, renews a consumer's lease on its in-flight tasks every ``lease / 3``
    seconds, and returns the tasks of consumers whose lease ran out to their queue. With a
    result backend, it also forwards to the queue the tasks released there that a crash
    left behind (see ``Gator.forward_released``).

    Ex::

        with LeaseKeeper(gator, consumer_id):
            gator.execute(task)
    """

    def __init__(self, gator: Gator, consumer_id: str) -> None:
        super().__init__(name=f"alligator-lease-{consumer_id}", daemon=True)
        self.gator = gator
        self.backend, self.queue_name = gator.backend, gator.queue_name
        self.consumer_id = consumer_id
        self.interval = self.backend.lease / 3
        self._stopped = threading.Event()

    def __enter__(self) -> "LeaseKeeper":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stopped.set()

    def run(self) -> None:
        """Renews and sweeps every ``lease / 3`` seconds until the ``with`` block ends."""
        while not self._stopped.wait(self.interval):
            try:
                self.backend.keepalive(self.queue_name, self.consumer_id)
                requeued = self.backend.requeue_expired(self.queue_name)
            except Exception as exc:
                log.warning("Cannot renew the lease on queue %r: %s", self.queue_name, exc)
                continue
            if requeued:
                log.warning(
                    "Requeued %d task(s) of queue %r whose worker stopped renewing its lease.",
                    requeued,
                    self.queue_name,
                )
            if self.gator.result_backend is not None:
                self._forward_left_behind()

    def _forward_left_behind(self) -> None:
        try:
            self.gator.result_backend.requeue_expired(self.queue_name)
            forwarded = self.gator.forward_released(self.queue_name)
        except Exception as exc:
            log.warning(
                "Cannot forward the released tasks of queue %r from its result backend: %s",
                self.queue_name,
                exc,
            )
            return
        if forwarded:
            log.warning(
                "Forwarded %d released task(s) of queue %r that a crash left in its result "
                "backend.",
                forwarded,
                self.queue_name,
            )


class Options:
    """
    A context manager that builds tasks with the same options.

    Ex::

        with gator.options(retries=3, **{"async": False}) as opts:
            opts.task(send_email, user_id=42)

    :param gator: The ``Gator`` to push to
    :param kwargs: ``Task`` options (see ``Task.__init__``)
    """

    def __init__(self, gator: Gator, **kwargs: Any) -> None:
        self.gator = gator
        self.task_kwargs = kwargs
        gator.task_class(**kwargs)  # refuse bad options here, not at the first task

    def __enter__(self) -> "Options":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def task(self, func: Any, *args: Any, **kwargs: Any) -> Task:
        """
        Pushes a task onto the queue (with the specified options).

        This will instantiate a ``Gator.task_class`` instance, configure the task execution
        options, configure the callable & its arguments, then push it onto the queue.

        You'll typically call this method when specifying advanced options.

        Ex::

            with gator.options(retries=2) as opts:
                opts.task(increment, incr_by=2)

        :param func: The callable with business logic to execute
        :param args: Positional arguments to pass to the callable task
        :param kwargs: Keyword arguments to pass to the callable task
        :returns: The ``Task`` instance
        """
        return self.gator.push(self.gator.task_class(**self.task_kwargs), func, *args, **kwargs)
