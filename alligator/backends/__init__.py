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

A backend counts, per task, the consumers that died holding it, so that a task that kills
whatever runs it can be refused after a few deaths, by any worker on any host. A death is
counted when ``requeue_inflight`` is given the reason a consumer died (``death``), and for
every task ``requeue_expired`` returns (``EXPIRED_LEASE_DEATH``), in the same atomic step
that puts the task back. ``reserve`` (and ``get``) hand the count and the latest reason
out with the task, as ``Reserved.deaths`` and ``Reserved.last_death``. Nothing else
counts: not a ``requeue_inflight`` without a reason (a graceful stop), not a retry, not a
task a backend takes back because the reply that handed it out was lost. The count
belongs to one payload of one task: ``ack``, ``cancel``, ``drop_all`` and
``add_dead_letter`` (with a consumer id) forget it with the task, ``retry`` and
``requeue_dead_letters`` start it again at 0, and a new ``push`` of an id starts at 0. A
backend whose server returns a dead consumer's tasks by itself (beanstalkd) counts
nothing: its tasks always come with 0 deaths, and ``abandoned`` asks the server instead.

A backend that keeps results (``keeps_results``) keeps, per queue and task id, the record
of how a task ended (an ``Outcome``: JSON the Gator writes and reads back) for its ``ttl``:
``ack``, ``add_dead_letter`` and ``cancel`` store the outcome they are given in the same
atomic step that ends the task, so that no crash can leave a task gone and its outcome
untold; ``finish`` stores one on its own (for a Gator whose queue lives elsewhere, e.g. on
beanstalkd, which keeps none). ``result`` reads it back, waiting for it up to a timeout
(blocking on the server where it can); ``locate`` says where a task is: ready, delayed,
held, in flight, dead, or finished with a kept outcome. A ``push`` of an id, and a
``requeue_dead_letters`` that brings one back, forget its old outcome.

A backend that keeps results also keeps dependencies. A task pushed with ``depends_on`` (a
``Dependencies``) is *held*: stored, counted by ``len``, found by ``locate`` (``HELD``) and
removed by ``cancel`` and ``drop_all``, but never reserved, until every task it depends on
succeeded. The push looks at each dependency (in its own queue, of this backend) in the
same atomic step as it stores the task:

- waiting (ready, delayed, held) or in flight: the task waits for it;
- finished with a kept ``SUCCESS`` outcome: done;
- dead, or finished with a kept ``FAILED`` or ``CANCELED`` outcome: the task is canceled at
  once: it is not stored, and its ``CANCELED`` outcome (``outcomes.dependency_canceled``) is kept
  for ``Dependencies.ttl``;
- sent on to a new id by its kept outcome (a pointer ``move`` keeps): that id, in turn;
- unknown: ``UnknownTaskError``, and nothing is stored; unless ``Dependencies.elsewhere``
  says the dependencies live in another backend, whose ends ``finish`` tells: then the
  task waits for it.

A task with nothing to wait for joins the back of its queue (or its delayed tasks, until
its ``delay_until``). The end of a task settles the tasks held on it in the same atomic
step: ``ack`` counts it done for each, and releases those with nothing left to wait for;
``add_dead_letter``, ``cancel`` and ``drop_all`` cancel each, and the tasks held on those
in turn, keeping for each the same ``CANCELED`` record (naming the task that ended) for
its own ttl. For tasks whose queue lives in another backend, ``finish`` does either at
their end, ``move`` carries the tasks held on an id over to a new one, and ``hand_over``
takes a released task out of flight (to push it there) with the tasks held on it kept. A
dependency may live in another queue of the same backend. ``retry``,
``requeue_inflight`` and ``requeue_expired`` settle nothing: the task has not ended.
``requeue_dead_letters`` brings back a task, not the tasks its failure canceled.

Task ids are unique within a queue: pushing an id that is waiting, in flight or dead in
that queue raises ``DuplicateTaskError`` (a backend that assigns its own ids never does).
Only the consumer holding a task settles it: ``ack``, ``retry`` and ``add_dead_letter``
from a consumer that no longer holds the task (its lease ran out and the task went back
to the queue, maybe to another consumer) change nothing.

Payloads and task ids are ``str``, both ways. Bytes in the server that are not UTF-8 (put
there by another program) come back decoded with Python's ``surrogateescape`` error
handler, which loses nothing: each such byte becomes one lone surrogate (U+DC80 to
U+DCFF), and the call never fails because of them. Writing such a ``str`` back (``push``,
``retry``, ``add_dead_letter``) stores the original bytes again, so a dead letter keeps
exactly what was in the queue and ``requeue_dead_letters`` restores it. Whether such a
payload can run is for the caller to decide. A lone surrogate outside that range stands
for no byte: a backend may refuse a payload holding one (``UnicodeEncodeError``), and in
an error text it is stored as a backslash escape (see ``storable_text``).

Each backend module states its own delivery semantics in its docstring.
"""

import importlib
import math
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qs, unquote, unquote_plus, urlsplit

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


#: The reason ``requeue_expired`` gives for each death it counts.
EXPIRED_LEASE_DEATH = "its worker stopped renewing its lease (it died, or hung)"

#: Where ``locate`` finds a task.
READY, DELAYED, INFLIGHT, DEAD, FINISHED = "ready", "delayed", "inflight", "dead", "finished"
#: Where ``locate`` finds a task held until its dependencies succeed.
HELD = "held"


@dataclass(frozen=True)
class Outcome:
    """
    How a task ended, for a backend to keep with that end: ``record``, the JSON the Gator
    reads back (status, value or error, time), for ``ttl`` seconds (``None``: for ever).

    Ex::

        Outcome('{"status":1,"value":42,"finished_at":1767225600.0}', ttl=86400)
    """

    record: str
    ttl: float | None


@dataclass(frozen=True)
class Dependencies:
    """
    What a task pushed with them waits for: each task that must succeed first, as
    ``(queue_name, task_id)`` (``on``, distinct); and how long to keep the task's own
    ``CANCELED`` outcome should one of them fail or be canceled (``ttl``, as
    ``Outcome.ttl``; ``0``: keep none). With ``elsewhere``, they live in another backend
    (their queue is on beanstalkd), which ``finish`` tells of their ends: one this backend
    does not know is waited for, not refused.

    Ex::

        Dependencies((('emails', 'a1'), ('reports', 'b2')), ttl=86400)
    """

    on: tuple[tuple[str, str], ...]
    ttl: float | None
    elsewhere: bool = False


@dataclass(frozen=True)
class Located:
    """
    Where a task is (``READY``, ``DELAYED``, ``HELD``, ``INFLIGHT``, ``DEAD`` or
    ``FINISHED``), and its payload, or its outcome's record when it finished.

    Ex::

        Located('inflight', '{"task_id":"a1",…}')
    """

    place: str
    data: str


@dataclass(frozen=True)
class Reserved:
    """
    A task handed to a consumer: its id, its payload, and how many consumers died holding
    it since it was last pushed, retried or requeued from the dead letters (``deaths``),
    with the reason given for the latest of those deaths (``last_death``, ``""`` when none).

    Ex::

        reserved = client.reserve('emails', 'host:4242:a1b2')
        reserved.deaths, reserved.last_death  # (1, 'pid 4250 killed by SIGKILL while running it')
    """

    task_id: str
    data: str
    deaths: int = 0
    last_death: str = ""


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

    Payloads and task ids are ``str``; bytes in the server that are not UTF-8 come and go
    as surrogate escapes, never as an error (see the module).
    """

    #: Seconds an in-flight task stays with its consumer without a keepalive.
    lease: float = 60.0
    #: True when the server itself returns a consumer's in-flight tasks once its connection
    #: closes (beanstalkd): another client then cannot settle them for a dead consumer.
    server_requeues_dead_consumers: bool = False
    #: True for a backend that stores each push, and each retry, under an id of its own
    #: (beanstalkd): it then offers ``make_ready``.
    assigns_ids: bool = False
    #: False for a backend that keeps no outcomes (beanstalkd): its ``outcome`` arguments
    #: must be ``None``, it takes no ``depends_on``, and ``finish``, ``move``,
    #: ``hand_over`` and ``result`` are not there to call.
    keeps_results: bool = True

    def __init__(self, conn_string: str) -> None:
        self.conn_string = conn_string

    def push(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        delay_until: float | None = None,
        depends_on: Dependencies | None = None,
    ) -> str:
        """
        Adds a task at the back of the queue, or holds it until ``delay_until``, or until
        its dependencies succeeded (see the module). It starts with no deaths counted, even
        under the id of a task that is gone.

        Ex::

            task_id = client.push('emails', task.task_id, task.serialize())

        :param delay_until: Epoch seconds before which the task must not be reserved
        :param depends_on: The tasks that must succeed first (a backend that keeps results)
        :returns: The task id the backend stores it under (a backend may assign its own)
        :raises DuplicateTaskError: The id is already waiting, held, in flight or dead here
        :raises UnknownTaskError: A dependency is unknown here (nothing was stored)
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

        The task comes with how many consumers died holding it and why the last one did
        (``Reserved.deaths``, ``Reserved.last_death``), read in the same step: a backend that
        counts deaths must not spend a round trip more on them.

        Ex::

            reserved = client.reserve('emails', 'host:4242:a1b2', timeout=1.0)
            if reserved is not None and reserved.deaths >= 3:
                ...  # it killed three workers: refuse it

        :returns: A ``Reserved`` or ``None`` when the queue stayed empty
        """
        raise NotImplementedError

    def ack(
        self, queue_name: str, task_id: str, consumer_id: str, outcome: Outcome | None = None
    ) -> None:
        """
        Removes a finished task from ``consumer_id``'s in-flight set, for good, with its
        count of deaths, and keeps its ``outcome`` (if given) and releases the tasks held
        on it (see the module) in the same step. Does nothing if ``consumer_id`` does not
        hold it.

        Ex::

            client.ack('emails', reserved.task_id, 'host:4242:a1b2', Outcome(record, 86400))
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
        Replaces an in-flight task's payload and makes it ready again (or delayed), with
        its count of deaths back at 0. Does nothing if ``consumer_id`` does not hold it.

        Ex::

            client.retry('emails', task_id, consumer_id, task.serialize())

        :returns: The task id it is stored under from now on
        """
        raise NotImplementedError

    def requeue_inflight(self, queue_name: str, consumer_id: str, death: str | None = None) -> int:
        """
        Puts every task ``consumer_id`` holds back at the front of the queue.

        Called for a consumer known to be dead (e.g. a reaped worker process), or one that
        stopped for good without finishing its tasks. With ``death``, one sentence saying
        why the consumer died, each task it held counts one more death, with ``death`` as
        its latest reason, in the same atomic step as its move. Without it (a graceful
        stop) no count changes.

        Ex::

            client.requeue_inflight('emails', 'host:4242:a1b2')
            client.requeue_inflight(
                'emails', 'host:4250:c3d4', death='pid 4250 killed by SIGKILL while running it'
            )

        :param death: Why the consumer died; ``None`` when it did not die
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

        Such a consumer died or hung holding them: each task counts one more death, with
        ``EXPIRED_LEASE_DEATH`` as its latest reason, in the same atomic step as its move.

        Ex::

            client.requeue_expired('emails')

        :returns: How many tasks were requeued
        """
        raise NotImplementedError

    def get(self, queue_name: str, task_id: str, consumer_id: str) -> Reserved | None:
        """
        Like ``reserve``, for one specific ready or delayed task. A backend may leave
        ``deaths`` and ``last_death`` at their defaults here; the ones shipped fill them in.

        Ex::

            reserved = client.get('emails', 'a-task-id', 'host:4242:a1b2')

        :returns: A ``Reserved`` or ``None`` when no such task waits in the queue
        """
        raise NotImplementedError

    def cancel(self, queue_name: str, task_id: str, outcome: Outcome | None = None) -> str | None:
        """
        Removes a ready, delayed or held task before it runs, with its count of deaths, and
        keeps its ``outcome`` (if given) and cancels the tasks held on it in the same step.

        Ex::

            data = client.cancel('emails', 'a-task-id', Outcome(record, 86400))

        :returns: Its payload, or ``None`` when no such task waits in the queue (and then
            nothing is kept)
        """
        raise NotImplementedError

    def len(self, queue_name: str) -> int:
        """
        Counts the tasks waiting in a queue: ready, delayed and held, not in flight or dead.

        Ex::

            client.len('emails')
        """
        raise NotImplementedError

    def drop_all(self, queue_name: str) -> None:
        """
        Removes every ready, delayed and held task of a queue, with their counts of deaths,
        and cancels the tasks held on them. In-flight tasks and dead letters stay, and so
        do the counts of in-flight tasks.

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
        outcome: Outcome | None = None,
    ) -> None:
        """
        Stores a failed task in the queue's dead-letter store with its error text, keeps
        its ``outcome`` (if given) and cancels the tasks held on it.

        With ``consumer_id``, the task leaves that consumer's in-flight set, and its count of
        deaths goes, in the same step; nothing happens (and nothing is kept) if that consumer
        does not hold it.

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
        Moves dead letters (all, or those in ``task_ids``) back to the end of the queue,
        each with its count of deaths at 0.

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

    def finish(
        self, queue_name: str, task_id: str, succeeded: bool, outcome: Outcome | None
    ) -> list[str]:
        """
        Tells of the end of a task whose queue lives in another backend (beanstalkd, which
        keeps no outcomes): keeps its ``outcome`` (if given), wakes whoever waits for it in
        ``result``, and releases (``succeeded``) or cancels the tasks held on it, in one
        step, as ``ack`` or ``add_dead_letter`` would.

        Ex::

            results.finish('emails', '1042', True, Outcome(record, 86400))

        :returns: The queues where held tasks were released to their queue, sorted
        """
        raise NotImplementedError

    def move(self, queue_name: str, old_id: str, new_id: str, outcome: Outcome | None) -> None:
        """
        For a task whose queue lives in another backend, which gave it a new id (a retry
        on beanstalkd): keeps ``outcome`` (a pointer to the new id, if given) under the old
        id, and carries the tasks held on the old id over to the new one, in one step.

        Ex::

            results.move('emails', '1042', '1043', Outcome(pointer, 86400))
        """
        raise NotImplementedError

    def hand_over(
        self,
        queue_name: str,
        task_id: str,
        consumer_id: str,
        new_id: str,
        outcome: Outcome | None,
    ) -> None:
        """
        Takes a task ``consumer_id`` holds out of flight, for good, because it now waits in
        another backend under ``new_id`` (a held task, released, pushed to its queue on
        beanstalkd): unlike ``ack``, the tasks held on it stay held, now on ``new_id``; and
        ``outcome`` (a pointer to the new id, if given; never when the id stays) is kept
        under the old id; in one step. Does nothing if ``consumer_id`` does not hold it.

        Ex::

            results.hand_over('emails', 'a1', consumer_id, '1044', Outcome(pointer, 86400))
        """
        raise NotImplementedError

    def result(self, queue_name: str, task_id: str, timeout: float | None = 0.0) -> str | None:
        """
        The record of a task's kept outcome, waiting up to ``timeout`` seconds for it
        (``None``: for ever; ``0``: not at all), on the server where it can.

        Ex::

            record = client.result('emails', 'a-task-id', timeout=5.0)

        :returns: The record, or ``None`` when none is kept (not yet, no more, or never)
        """
        raise NotImplementedError

    def locate(self, queue_name: str, task_id: str) -> Located | None:
        """
        Where a task is, in one atomic look: ``READY``, ``DELAYED``, ``HELD``, ``INFLIGHT``
        or ``DEAD`` (with its payload), or ``FINISHED`` (with its outcome's record).

        Ex::

            found = client.locate('emails', 'a-task-id')  # Located('inflight', '{…}')

        :returns: A ``Located``, or ``None`` for a task the backend does not know (never
            pushed, gone with no outcome kept, or whose outcome expired)
        """
        raise NotImplementedError

    def make_ready(self, queue_name: str, task_id: str) -> None:
        """
        Makes a delayed task ready at once; does nothing for one that is not delayed.
        Offered by a backend that assigns ids (``assigns_ids``): a Gator pushes a task there
        delayed, learns its id, carries what waits on it over to that id in its result
        backend, and only then lets workers take it.

        Ex::

            client.make_ready('emails', '1043')
        """
        raise NotImplementedError

    def abandoned(self, queue_name: str, task_id: str) -> int | None:
        """
        How many times a task held now was handed to a consumer that never settled it
        (died, lost its connection, ran out of time), for a backend whose server keeps
        count; ``None`` for the others (the default). A supervisor asks only when the
        server returns a dead consumer's task itself (``server_requeues_dead_consumers``),
        maybe before the supervisor counted that death.

        Ex::

            client.abandoned('emails', reserved.task_id)  # 2
        """
        return None

    def close(self) -> None:
        """Releases connections. The client must not be used afterwards."""


# A scheme, as URLs spell it; with its colon, at the start of a DSN that lacks "://".
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_LEADING_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# Query parameters whose value is masked: password, sentinel_password, auth_token, ...
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|auth|credential|(api|access|private)_?key", re.I)
MASK = "***"


def _scheme_end(conn_string: str) -> int:
    """Where the ``scheme://`` of a DSN ends, or -1 when it does not start with one."""
    after_scheme = conn_string.find("://")
    if after_scheme < 0 or not _SCHEME.fullmatch(conn_string[:after_scheme]):
        return -1
    return after_scheme + 3


def _secret_spans(conn_string: str) -> list[tuple[int, int]]:
    """Where a DSN may hold a password: (start, end) index pairs, sorted and merged."""
    spans = []
    at = conn_string.rfind("@")
    userinfo = _scheme_end(conn_string)
    if userinfo >= 0:
        # "scheme://user:password@host": the password runs from the first ":" after "://"
        # to the last "@" (a password may hold "@", or an unescaped "/").
        colon = conn_string.find(":", userinfo, max(at, 0))
        if at >= userinfo and colon >= 0:
            spans.append((colon + 1, at))
    elif at >= 0:
        # Not "scheme://…": everything between a leading "scheme:" and the last "@" may be
        # a password ("redis:/:secret@host", "user:secret@host").
        lead = _LEADING_SCHEME.match(conn_string)
        spans.append((lead.end() if lead and lead.end() <= at else 0, at))
    # The values of password-like query parameters, up to the next "&".
    for separator in re.finditer(r"[?&]", conn_string):
        equals = conn_string.find("=", separator.end())
        if equals < 0:
            break
        key = conn_string[separator.end() : equals]
        if "&" in key or not (_SECRET_KEY.search(key) or _SECRET_KEY.search(unquote_plus(key))):
            continue
        end = conn_string.find("&", equals + 1)
        spans.append((equals + 1, len(conn_string) if end < 0 else end))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def redact_dsn(conn_string: str) -> str:
    """
    Returns the DSN with its password masked, for error messages and logs. Never raises,
    whatever the text: a malformed DSN is masked too, erring on the side of hiding more.

    Masked: in ``scheme://user:password@host``, what follows the user name's colon, up to
    the last ``@``; in a text without ``://``, what lies between a leading ``scheme:``
    and the last ``@``; and the value of any password-like query parameter
    (``?password=…``, ``?sentinel_password=…``).

    Ex::

        redact_dsn('redis://app:secret@db:6379/0')  # 'redis://app:***@db:6379/0'
        redact_dsn('redis:/:secret@db')  # 'redis:***@db'
    """
    conn_string = str(conn_string)
    shown, done = [], 0
    for start, end in _secret_spans(conn_string):
        shown += [conn_string[done:start], MASK]
        done = end
    shown.append(conn_string[done:])
    return "".join(shown)


def _is_ambiguous(conn_string: str) -> bool:
    """
    True when the parts a URL parser finds in a DSN may hold pieces of the password that
    ``redact_dsn`` masks: for instance, when the password holds an unescaped ``/``, the
    parser takes what follows it for the path. Only a ``scheme://user:password@host…``
    whose text up to the last ``@`` has no ``/``, ``?`` or ``#`` keeps its password within
    the user information, where the parser sees it too.
    """
    at = conn_string.rfind("@")
    if at < 0:
        return False
    userinfo = _scheme_end(conn_string)
    if userinfo < 0:
        return True  # masked from a leading "scheme:" to the "@"
    if at < userinfo or ":" not in conn_string[userinfo:at]:
        return False  # no password
    return any(char in conn_string[userinfo:at] for char in "/?#")


def redact_dsn_part(conn_string: str, part: object) -> str:
    """
    Returns a part of a DSN (a host, a path, a query parameter's name or value) for a
    message, or ``'***'`` when it may hold some of the DSN's password. Never raises.

    Ex::

        redact_dsn_part('redis://app:secret@db/0?lease=soon', 'soon')  # 'soon'
        redact_dsn_part('redis://app:sec/ret@db/0', 'ret@db/0')  # '***'
    """
    part, conn_string = str(part), str(conn_string)
    spans = _secret_spans(conn_string)
    if not part or not spans:
        return part
    if _is_ambiguous(conn_string):
        return MASK
    for start, end in spans:
        secret = conn_string[start:end]
        forms = (secret, unquote(secret), unquote_plus(secret))
        if secret and any(form in part for form in forms):
            return MASK
    return part


def split_dsn(conn_string: str) -> SplitResult:
    """
    Splits a network server's DSN into its parts (``urllib.parse.urlsplit``), with its port
    checked, and refuses one whose password the parts would not hold whole: the parser
    would take a piece of it for the host, the port or the path, connect to the wrong
    place, and show that piece in messages.

    Ex::

        split_dsn('redis://db:6379/0').port  # 6379

    :raises InvalidDSNError: The DSN is malformed, e.g. its port is not a number
    """
    shown = redact_dsn(conn_string)
    if _is_ambiguous(conn_string):
        if _scheme_end(conn_string) < 0:
            reason = "it does not start with 'scheme://'"
        else:
            reason = (
                "the text before its last '@' holds '/', '?' or '#': write them as %2F, "
                "%3F and %23 in a user name or password, and an '@' after the host as %40"
            )
        raise InvalidDSNError(f"DSN {shown!r} is malformed: {reason}.")
    try:
        parts = urlsplit(conn_string)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        # The error's own text may quote the whole host part, password included.
        reason = (
            "its port is not a number from 0 to 65535"
            if str(exc).startswith("Port")
            else "it is not a valid URL (check its host part)"
        )
        raise InvalidDSNError(f"DSN {shown!r} is malformed: {reason}.") from None
    return parts


_UNSTORABLE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def storable_text(text: str) -> str:
    """
    Returns a text (e.g. an error) as every backend can store it: unchanged, unless it holds
    lone surrogates that stand for no byte (see the module), which become escapes.

    Ex::

        storable_text('bad value \\ud800')  # 'bad value \\\\ud800'
    """
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return _UNSTORABLE_SURROGATE.sub(lambda found: f"\\u{ord(found[0]):04x}", text)
    return text


def dsn_scheme(conn_string: str) -> str:
    """
    Returns the scheme of a DSN, in lower case.

    Ex::

        dsn_scheme('redis://localhost:6379/0')  # 'redis'
    """
    if not isinstance(conn_string, str) or "://" not in conn_string:
        raise InvalidDSNError(
            f"{redact_dsn(str(conn_string))!r} is not a DSN: expected 'scheme://…', "
            "e.g. 'sqlite:///queue.db'."
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
        shown = redact_dsn_part(conn_string, scheme)
        raise InvalidDSNError(
            f"No backend handles DSN scheme {shown + '://'!r}; supported schemes: {supported}."
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
    except ValueError:
        # The error's own text may quote the whole host part, password included.
        raise InvalidDSNError(
            f"DSN {shown!r} is malformed: it is not a valid URL (check its host part)."
        ) from None
    for key, values in parse_qs(query, keep_blank_values=True).items():
        name = redact_dsn_part(conn_string, key)
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise InvalidDSNError(
                f"Unknown option {name!r} in DSN {shown!r}; known options: {known}."
            )
        raw = values[-1]
        if isinstance(defaults[key], str):
            if not raw:
                raise InvalidDSNError(f"Option {name!r} in DSN {shown!r} is empty.")
            options[key] = raw
            continue
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if not (math.isfinite(value) and value > 0):
            raise InvalidDSNError(
                f"Option {name}={redact_dsn_part(conn_string, raw)!r} in DSN {shown!r} "
                "must be a number > 0."
            )
        options[key] = value
    return options
