"""
Queue backends, chosen by the scheme of a DSN, and the contract every backend keeps.

A backend is a ``Client`` class built from a DSN. One client serves many queues, named
by the ``queue_name`` argument of each call. It stores opaque payload strings (the JSON
of ``Task.serialize``) keyed by task id; it never looks inside them.

The life of a task in a backend::

    push ──> ready ──reserve──> in flight ──ack──> (gone)
      │        ▲                   │  │
      │        └──retry / requeue──┘  └──add_dead_letter──> dead letters
      │        ▲                                               │
      └─> delayed (until due)           requeue_dead_letters ──┘

Delivery is at-least-once: a task leaves the backend only when its consumer acks it
after it finished, or when it moves to the dead-letter store. A reserved task belongs
to a consumer id; if that consumer dies, ``requeue_inflight`` (called by a supervisor
that saw it die) or ``requeue_expired`` (called by any live worker once the consumer's
lease ran out) puts the task back at the front of its queue. Live consumers renew their
lease with ``keepalive`` every ``lease / 3`` seconds.

Task ids are unique within a queue: pushing an id that is waiting, in flight or dead in
that queue raises ``DuplicateTaskError`` (a backend that assigns its own ids never does).
Only the consumer holding a task settles it: ``ack``, ``retry`` and ``add_dead_letter``
from a consumer that no longer holds the task (its lease ran out and the task went back
to the queue, maybe to another consumer) change nothing.

Each backend module states its own delivery semantics in its docstring.
"""

import importlib
import math
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ..exceptions import InvalidDSNError

# Scheme -> "module:Class", imported on first use so that a locmem user never needs redis.
BACKENDS = {
    "beanstalk": "alligator.backends.beanstalk_backend:Client",
    "locmem": "alligator.backends.locmem_backend:Client",
    "redis": "alligator.backends.redis_backend:Client",
    "rediss": "alligator.backends.redis_backend:Client",
    "sqlite": "alligator.backends.sqlite_backend:Client",
    "unix": "alligator.backends.redis_backend:Client",
}


@dataclass(frozen=True)
class Reserved:
    """A task handed to a consumer: its id and its payload."""

    task_id: str
    data: str


@dataclass(frozen=True)
class DeadLetter:
    """A task whose last attempt failed (or whose payload could not be decoded)."""

    task_id: str
    data: str
    error: str
    failed_at: float


class Client:
    """
    The contract of a queue backend. Subclass it and implement every method.

    ``conn_string`` is the whole DSN; options travel in its query string
    (e.g. ``?lease=60``). Every backend accepts ``lease``: the seconds a consumer's
    in-flight tasks stay its own without a ``keepalive``.

    Methods raise ``BackendError`` (with the original error as its cause) when the
    server cannot be reached. A client must be safe to call from two threads at once: a
    worker's loop and its heartbeat share it.
    """

    #: Seconds an in-flight task stays with its consumer without a keepalive.
    lease: float = 60.0
    #: True when the server itself returns a consumer's in-flight tasks once its connection
    #: closes (beanstalkd): another client then cannot settle them for a dead consumer.
    server_requeues_dead_consumers: bool = False

    def __init__(self, conn_string: str) -> None:
        self.conn_string = conn_string

    def push(
        self, queue_name: str, task_id: str, data: str, delay_until: float | None = None
    ) -> str:
        """
        Adds a task at the back of the queue, or holds it until ``delay_until``.

        Ex::

            task_id = client.push('emails', task.task_id, task.serialize())

        :param delay_until: Epoch seconds before which the task must not be reserved
        :returns: The task id the backend stores it under (a backend may assign its own)
        :raises DuplicateTaskError: The id is already waiting, in flight or dead here
        """
        raise NotImplementedError

    def reserve(
        self, queue_name: str, consumer_id: str, timeout: float = 0.0, poll_interval: float = 0.1
    ) -> Reserved | None:
        """
        Takes the task at the front of the queue into ``consumer_id``'s in-flight set.

        Waits up to ``timeout`` seconds for one to arrive (blocking on the server where it
        can; ``poll_interval`` is the longest pause between looks for a backend that must
        poll). Due delayed tasks become ready first.

        Ex::

            reserved = client.reserve('emails', 'host:4242:a1b2', timeout=1.0)

        :returns: A ``Reserved`` or ``None`` when the queue stayed empty
        """
        raise NotImplementedError

    def ack(self, queue_name: str, task_id: str, consumer_id: str) -> None:
        """
        Removes a finished task from ``consumer_id``'s in-flight set, for good. Does nothing
        if ``consumer_id`` does not hold it.

        Ex::

            client.ack('emails', reserved.task_id, 'host:4242:a1b2')
        """
        raise NotImplementedError

    def retry(
        self,
        queue_name: str,
        task_id: str,
        consumer_id: str,
        data: str,
        delay_until: float | None = None,
    ) -> str:
        """
        Replaces an in-flight task's payload and makes it ready again (or delayed). Does
        nothing if ``consumer_id`` does not hold it.

        Ex::

            client.retry('emails', task_id, consumer_id, task.serialize())

        :returns: The task id it is stored under from now on
        """
        raise NotImplementedError

    def requeue_inflight(self, queue_name: str, consumer_id: str) -> int:
        """
        Puts every task ``consumer_id`` holds back at the front of the queue.

        Called for a consumer known to be dead (e.g. a reaped worker process).

        Ex::

            client.requeue_inflight('emails', 'host:4242:a1b2')

        :returns: How many tasks were requeued
        """
        raise NotImplementedError

    def keepalive(self, queue_name: str, consumer_id: str) -> None:
        """
        Renews ``consumer_id``'s lease on its in-flight tasks for another ``lease`` seconds.

        Ex::

            client.keepalive('emails', 'host:4242:a1b2')
        """
        raise NotImplementedError

    def requeue_expired(self, queue_name: str) -> int:
        """
        Puts the in-flight tasks of consumers whose lease ran out back at the front.

        Ex::

            client.requeue_expired('emails')

        :returns: How many tasks were requeued
        """
        raise NotImplementedError

    def get(self, queue_name: str, task_id: str, consumer_id: str) -> Reserved | None:
        """
        Like ``reserve``, for one specific ready or delayed task.

        Ex::

            reserved = client.get('emails', 'a-task-id', 'host:4242:a1b2')

        :returns: A ``Reserved`` or ``None`` when no such task waits in the queue
        """
        raise NotImplementedError

    def cancel(self, queue_name: str, task_id: str) -> str | None:
        """
        Removes a ready or delayed task before it runs.

        Ex::

            data = client.cancel('emails', 'a-task-id')

        :returns: Its payload, or ``None`` when no such task waits in the queue
        """
        raise NotImplementedError

    def len(self, queue_name: str) -> int:
        """
        Counts the tasks waiting in a queue: ready and delayed, not in flight or dead.

        Ex::

            client.len('emails')
        """
        raise NotImplementedError

    def drop_all(self, queue_name: str) -> None:
        """
        Removes every ready and delayed task of a queue. In-flight tasks and dead letters
        stay.

        Ex::

            client.drop_all('emails')
        """
        raise NotImplementedError

    def add_dead_letter(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        error: str,
        consumer_id: str | None = None,
    ) -> None:
        """
        Stores a failed task in the queue's dead-letter store with its error text.

        With ``consumer_id``, the task leaves that consumer's in-flight set in the same step,
        and nothing happens if that consumer does not hold it.

        Ex::

            client.add_dead_letter('emails', task_id, data, 'ValueError: bad address', cid)
        """
        raise NotImplementedError

    def list_dead_letters(self, queue_name: str) -> list[DeadLetter]:
        """
        Lists a queue's dead letters, oldest first.

        Ex::

            for dead in client.list_dead_letters('emails'):
                print(dead.task_id, dead.error)
        """
        raise NotImplementedError

    def requeue_dead_letters(self, queue_name: str, task_ids: list[str] | None = None) -> int:
        """
        Moves dead letters (all, or those in ``task_ids``) back to the end of the queue.

        Ex::

            client.requeue_dead_letters('emails')

        :returns: How many were requeued
        """
        raise NotImplementedError

    def purge_dead_letters(self, queue_name: str) -> int:
        """
        Deletes a queue's dead letters for good.

        Ex::

            client.purge_dead_letters('emails')

        :returns: How many were deleted
        """
        raise NotImplementedError

    def close(self) -> None:
        """Releases connections. The client must not be used afterwards."""


def redact_dsn(conn_string: str) -> str:
    """
    Returns the DSN with its password masked, for error messages and logs.

    Ex::

        redact_dsn('redis://app:secret@db:6379/0')  # 'redis://app:***@db:6379/0'
    """
    try:
        parts = urlsplit(conn_string)
        password = parts.password
    except ValueError:  # malformed (e.g. an unclosed IPv6 bracket): show nothing of it
        return f"{conn_string.split('://', 1)[0]}://…"
    if password is None:
        return conn_string
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def dsn_scheme(conn_string: str) -> str:
    """Returns the scheme of a DSN (``'redis'`` for ``'redis://localhost:6379/0'``)."""
    if not isinstance(conn_string, str) or "://" not in conn_string:
        raise InvalidDSNError(
            f"{redact_dsn(str(conn_string))!r} is not a DSN: expected 'scheme://…', e.g. 'sqlite:///queue.db'."
        )
    return conn_string.split("://", 1)[0].lower()


def client_class(conn_string: str) -> type[Client]:
    """
    Returns the ``Client`` class registered for the DSN's scheme.

    Ex::

        client_class('locmem://')  # alligator.backends.locmem_backend.Client
    """
    scheme = dsn_scheme(conn_string)
    if scheme not in BACKENDS:
        supported = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise InvalidDSNError(
            f"No backend handles DSN scheme {scheme + '://'!r}; supported schemes: {supported}."
        )
    module_name, _, class_name = BACKENDS[scheme].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def dsn_options(conn_string: str, defaults: dict[str, float | str]) -> dict[str, float | str]:
    """
    Reads options from a DSN's query string, each of the type of its default.

    Numbers must be > 0 and strings non-empty; an unknown option raises ``InvalidDSNError``.

    Ex::

        dsn_options('redis://localhost/0?lease=30', {'lease': 60.0})  # {'lease': 30.0}
    """
    options = dict(defaults)
    shown = redact_dsn(conn_string)
    try:
        query = urlsplit(conn_string).query
    except ValueError as exc:
        raise InvalidDSNError(f"DSN {shown!r} is malformed: {exc}.") from None
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise InvalidDSNError(
                f"Unknown option {key!r} in DSN {shown!r}; known options: {known}."
            )
        raw = values[-1]
        if isinstance(defaults[key], str):
            if not raw:
                raise InvalidDSNError(f"Option {key!r} in DSN {shown!r} is empty.")
            options[key] = raw
            continue
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if not (math.isfinite(value) and value > 0):
            raise InvalidDSNError(f"Option {key}={raw!r} in DSN {shown!r} must be a number > 0.")
        options[key] = value
    return options
