"""
``beanstalk://host:port/`` — queues as beanstalkd tubes, spoken to through greenstalk.

A queue is a tube of the same name. beanstalkd assigns every job its own id, so the id a
task is stored under is the server's (``push`` returns it as a string) and a task id given
by the producer is not used. Needs beanstalkd 1.12 or newer (for ``reserve-job``).

Delivery: at-least-once, enforced by beanstalkd itself. A reserved job belongs to the
connection that reserved it; beanstalkd makes it ready again when that connection closes
(the worker process died, or the network dropped) or when its time-to-run (``?ttr=``,
default 3600 seconds) runs out without a ``touch``. A live worker's heartbeat touches the
jobs it holds every ``lease / 3`` seconds. A job is deleted only once its task finished
(``ack``), or after its record was stored in the queue's dead-letter tube. Within a tube,
jobs come out by priority, then by id: first in, first out for tasks pushed alike, with
requeued tasks first. Delays count in whole seconds, rounded up: a task is never early.

Only the consumer holding a task settles it. This client records which consumer reserved
each job through its connection; ``ack``, ``retry`` and ``add_dead_letter`` from any other
consumer (or for a job this client does not hold, e.g. after its connection was lost) do
nothing. ``retry`` and ``add_dead_letter`` also ``touch`` the job first, which beanstalkd
allows only on a job still reserved by this connection, so that a job whose time-to-run ran
out is left to whoever has it now. ``ack`` stays one round trip: it relies on beanstalkd,
which refuses to delete a job another connection reserved.

Task ids are never duplicates: every ``put`` makes a new job, so ``push`` never raises
``DuplicateTaskError``.

Parts of the contract that beanstalkd does not have are built from what it has:

- ``retry`` puts the new payload as a new job, then deletes the old one (a job's body
  cannot change), so a retried task has a new id.
- Dead letters are buried jobs in the companion tube ``<queue>.dead``: each holds a JSON
  line with the task id, error text and time of failure, then the payload.
- ``requeue_inflight`` can only release jobs reserved through this client; the jobs of a
  dead process came back when its connection closed. ``requeue_expired`` has nothing to
  do: beanstalkd itself returns jobs whose time-to-run ran out.

One part is left out: this client counts no deaths. ``Reserved.deaths`` is always 0, and
``requeue_inflight`` ignores its ``death``. beanstalkd returns a dead consumer's jobs by
itself and counts those takes itself, which ``abandoned`` reads.

A job body is bytes. One that is not UTF-8 (put there by another program) comes back as a
``str`` with those bytes as surrogate escapes (Python's ``surrogateescape``), and is put
as the same bytes when written back, e.g. to the dead letters: nothing is lost or changed.
"""

import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import greenstalk

from ..exceptions import BackendError, InvalidDSNError, InvalidQueueError
from . import (
    DELAYED,
    INFLIGHT,
    READY,
    DeadLetter,
    Dependencies,
    Located,
    Outcome,
    Reserved,
    dsn_options,
    redact_dsn,
    redact_dsn_part,
    split_dsn,
    storable_text,
)
from . import Client as BaseClient

log = logging.getLogger(__name__)

DEFAULT_PORT = 11300
#: Priority of pushed tasks; requeued ones get a more urgent (lower) one, to run first.
PRIORITY = 1024
FRONT_PRIORITY = 0
#: Longest single reserve-with-timeout, so that other calls on the shared connection (a
#: heartbeat's touch) wait at most this long for it.
RESERVE_SLICE = 1
#: beanstalkd reads delays and TTRs as unsigned 32-bit numbers of seconds.
MAX_SECONDS = 2**32 - 1
#: A dead-letter record is put delayed by this much, then buried at once: never ready, so
#: no consumer of a tube that happens to be named ``<queue>.dead`` can take it meanwhile.
DEAD_HOLD = 86400
DEAD_SUFFIX = ".dead"
CONNECT_TIMEOUT = 5.0
#: No command waits longer than a reserve slice on the server: silence beyond this means
#: the server or the network hangs.
IO_TIMEOUT = 10.0

# Tube names: up to 200 bytes of these characters, not starting with a hyphen. Queue names
# leave room for the dead-letter suffix.
_TUBE_NAME = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]*")
_MAX_QUEUE_NAME = 200 - len(DEAD_SUFFIX)

# Errors after which the stream may be out of step with the server: the connection goes.
_DESYNC_ERRORS = (
    OSError,
    AssertionError,
    ValueError,
    greenstalk.BadFormatError,
    greenstalk.ExpectedCrlfError,
    greenstalk.UnknownResponseError,
)


def _job_id(task_id: str) -> int | None:
    is_id = isinstance(task_id, str) and task_id.isascii() and task_id.isdigit()
    return int(task_id) if is_id else None


def _handle(job_id: int) -> greenstalk.Job:
    # greenstalk's release/touch/bury want a Job; only its id is sent.
    return greenstalk.Job(job_id, b"")


def _text(body: bytes) -> str:
    # Another program may have put bytes that are not UTF-8: they become surrogate escapes,
    # which _body turns back into the same bytes, so a dead letter keeps exactly the job.
    return body.decode("utf-8", "surrogateescape")


def _body(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _delay_seconds(delay_until: float | None) -> int:
    if delay_until is None:
        return 0
    seconds = delay_until - time.time()
    return 0 if seconds <= 0 else min(math.ceil(seconds), MAX_SECONDS)


class Client(BaseClient):
    """
    The beanstalkd backend. DSN: ``beanstalk://host:port/`` with options ``ttr`` (seconds a
    reserved job may go without a touch; default 3600) and ``lease`` (the heartbeat touches
    held jobs every ``lease / 3`` seconds; default 60, never more than ``ttr``).

    One connection per client, opened on first use and again after it was lost, shared by
    the threads that use the client under a lock.

    Ex::

        client = Client('beanstalk://127.0.0.1:11300/?ttr=600')
    """

    server_requeues_dead_consumers = True
    assigns_ids = True
    keeps_results = False

    def __init__(self, conn_string: str) -> None:
        super().__init__(conn_string)
        parts = split_dsn(conn_string)
        if parts.path not in ("", "/"):
            raise InvalidDSNError(
                f"DSN {redact_dsn(conn_string)!r} has a path, but beanstalkd has no databases: "
                "use 'beanstalk://host:port/' and name the queue (tube) with Gator's queue_name."
            )
        self.host = parts.hostname or "localhost"
        self.port = parts.port or DEFAULT_PORT
        # For messages; split_dsn refused a DSN whose password would end up in either.
        self._shown_address = (
            f"{redact_dsn_part(conn_string, self.host)}:{redact_dsn_part(conn_string, self.port)}"
        )
        options = dsn_options(conn_string, {"ttr": 3600.0, "lease": 60.0})
        #: Seconds a reserved job may go without a touch before beanstalkd takes it back.
        self.ttr = math.ceil(min(options["ttr"], MAX_SECONDS))
        # The heartbeat touches every lease / 3 seconds: at least three times per TTR.
        self.lease = min(options["lease"], float(self.ttr))
        self._lock = threading.Lock()
        self._conn: greenstalk.Client | None = None
        self._conn_pid = 0
        self._using = self._watching = greenstalk.DEFAULT_TUBE
        self._max_job_size: int | None = None
        self._lost = False
        # Jobs reserved through this connection: job id -> (queue name, consumer id). Its own
        # lock, so that a heartbeat finding nothing to touch never waits for a reserve.
        self._held: dict[int, tuple[str, str]] = {}
        self._held_lock = threading.Lock()
        self._valid_names: set[str] = set()

    @property
    def address(self) -> str:
        """``host:port`` of the beanstalkd server, for messages (masked, should either hold
        the DSN's password)."""
        return self._shown_address

    # Connection handling.

    def _connection(self) -> greenstalk.Client:
        if self._conn is not None and self._conn_pid != os.getpid():
            # Inherited through fork: that socket and its reservations are the parent's.
            self._discard()
        if self._conn is None:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
            sock.settimeout(IO_TIMEOUT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._conn = greenstalk.Client(sock, encoding=None)
            self._conn_pid = os.getpid()
            self._using = self._watching = greenstalk.DEFAULT_TUBE
            if self._lost:
                log.info("Reconnected to beanstalkd at %s.", self.address)
                self._lost = False
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._max_job_size = None
        with self._held_lock:
            held = len(self._held)
            self._held.clear()
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if held and self._conn_pid == os.getpid():
            log.warning(
                "%d task(s) reserved through the connection to beanstalkd at %s went back to "
                "their queues when it closed.",
                held,
                self.address,
            )

    @contextmanager
    def _session(self) -> Iterator[greenstalk.Client]:
        """The connection, for one exchange with the server; server errors become
        ``BackendError``, and a connection that may be out of step is dropped."""
        with self._lock:
            try:
                yield self._connection()
            except _DESYNC_ERRORS as exc:
                self._discard()
                self._lost = True
                raise BackendError(
                    f"beanstalkd at {self.address} is unreachable or answered out of turn "
                    f"({type(exc).__name__}: {exc}); the next call reconnects."
                ) from exc
            except greenstalk.UnknownCommandError as exc:
                raise BackendError(
                    f"beanstalkd at {self.address} does not know a command Alligator needs; "
                    f"upgrade it to version 1.12 or newer."
                ) from exc
            except greenstalk.Error as exc:
                raise BackendError(
                    f"beanstalkd at {self.address} refused the command: {type(exc).__name__}."
                ) from exc

    def _use(self, conn: greenstalk.Client, tube: str) -> None:
        # Cached, so that pushes to one queue cost one round trip each.
        if self._using != tube:
            conn.use(tube)
            self._using = tube

    def _watch(self, conn: greenstalk.Client, tube: str) -> None:
        # Exactly one tube watched: a reserve must only take jobs of the queue asked for.
        if self._watching != tube:
            conn.watch(tube)
            conn.ignore(self._watching)
            self._watching = tube

    def _tube(self, queue_name: str) -> str:
        # Checked here, before any round trip: beanstalkd would answer BAD_FORMAT, which
        # looks like a server fault, and a worker would retry it for ever.
        if queue_name not in self._valid_names:
            if (
                not isinstance(queue_name, str)
                or len(queue_name) > _MAX_QUEUE_NAME
                or not _TUBE_NAME.fullmatch(queue_name)
            ):
                raise InvalidQueueError(
                    f"Queue name {queue_name!r} cannot be a beanstalkd tube: use 1 to "
                    f"{_MAX_QUEUE_NAME} ASCII letters, digits and + / ; . $ _ ( ) -, not "
                    f"starting with '-'."
                )
            self._valid_names.add(queue_name)
        return queue_name

    # Jobs this client holds.

    def _hold(self, job_id: int, queue_name: str, consumer_id: str) -> None:
        with self._held_lock:
            self._held[job_id] = (queue_name, consumer_id)

    def _held_by(self, queue_name: str, consumer_id: str) -> list[int]:
        with self._held_lock:
            owner = (queue_name, consumer_id)
            return sorted(job_id for job_id, held in self._held.items() if held == owner)

    def _holds(self, job_id: int, queue_name: str, consumer_id: str) -> bool:
        with self._held_lock:
            return self._held.get(job_id) == (queue_name, consumer_id)

    def _let_go(self, job_id: int, queue_name: str, consumer_id: str) -> bool:
        """Forgets a held job; True if ``consumer_id`` held it in that queue."""
        with self._held_lock:
            if self._held.get(job_id) != (queue_name, consumer_id):
                return False
            del self._held[job_id]
            return True

    def _still_reserved(
        self, conn: greenstalk.Client, job_id: int, queue_name: str, consumer_id: str
    ) -> bool:
        """Touches a held job: beanstalkd answers NOT_FOUND unless this connection still
        has it reserved. A job that ran out of its time-to-run is forgotten."""
        try:
            conn.touch(_handle(job_id))
        except greenstalk.NotFoundError:
            self._let_go(job_id, queue_name, consumer_id)
            log.warning(
                "Task %s of queue %r ran out of its time-to-run (ttr=%ss) before it was "
                "touched; beanstalkd made it ready again.",
                job_id,
                queue_name,
                self.ttr,
            )
            return False
        return True

    def _waits_in(self, conn: greenstalk.Client, job_id: int, tube: str) -> bool:
        try:
            stats = conn.stats_job(job_id)
        except greenstalk.NotFoundError:
            return False
        return stats["tube"] == tube and stats["state"] in ("ready", "delayed")

    # The contract.

    def push(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        delay_until: float | None = None,
        depends_on: Dependencies | None = None,
    ) -> str:
        """
        Puts a job in the tube; ``task_id`` is not used, beanstalkd assigns the id. It
        takes no ``depends_on``: a Gator keeps the dependencies of a beanstalkd queue's
        tasks in its result backend.

        Ex::

            task_id = client.push('emails', task.task_id, task.serialize())

        :returns: The job id beanstalkd assigned, as a string
        """
        if depends_on is not None:
            raise NotImplementedError(
                "beanstalkd keeps no dependencies; give the Gator a result_backend to keep them."
            )
        tube = self._tube(queue_name)
        body = _body(data)
        delay = _delay_seconds(delay_until)
        with self._session() as conn:
            self._use(conn, tube)
            return str(conn.put(body, priority=PRIORITY, delay=delay, ttr=self.ttr))

    def reserve(
        self, queue_name: str, consumer_id: str, timeout: float = 0.0, poll_interval: float = 0.1
    ) -> Reserved | None:
        """
        Reserves the next job of the tube, waiting on the server (``poll_interval`` is not
        used). beanstalkd counts the wait in whole seconds, so a wait for a fraction of a
        second lasts up to one second; ``timeout=0`` only looks.

        Ex::

            reserved = client.reserve('emails', 'host:4242:a1b2', timeout=1.0)
        """
        tube = self._tube(queue_name)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            wait = 0 if remaining <= 0 else min(math.ceil(remaining), RESERVE_SLICE)
            deadline_soon = False
            with self._session() as conn:
                self._watch(conn, tube)
                try:
                    job = conn.reserve(wait)
                except greenstalk.TimedOutError:
                    job = None
                except greenstalk.DeadlineSoonError:
                    # A job held here is in its last second of time-to-run, and beanstalkd
                    # refuses reserves until it is touched or taken back.
                    job, deadline_soon = None, True
                if job is not None:
                    self._hold(job.id, queue_name, consumer_id)
                    return Reserved(str(job.id), _text(job.body))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if deadline_soon:
                # beanstalkd answers at once here: pause instead of asking again in a loop.
                time.sleep(min(remaining, RESERVE_SLICE))

    def ack(
        self, queue_name: str, task_id: str, consumer_id: str, outcome: Outcome | None = None
    ) -> None:
        """
        Deletes a finished task's job, if ``consumer_id`` reserved it through this client;
        otherwise does nothing. One round trip.

        Ex::

            client.ack('emails', reserved.task_id, 'host:4242:a1b2')
        """
        self._tube(queue_name)
        _keep_nothing(outcome)
        job_id = _job_id(task_id)
        if job_id is None or not self._let_go(job_id, queue_name, consumer_id):
            return
        with self._session() as conn:
            try:
                conn.delete(job_id)
            except greenstalk.NotFoundError:
                pass  # Its time-to-run ran out and another connection reserved it.

    def retry(
        self,
        queue_name: str,
        task_id: str,
        consumer_id: str,
        data: str,
        delay_until: float | None = None,
    ) -> str:
        """
        Puts the new payload as a new job, then deletes the old job: beanstalkd cannot
        change a job's body. In that order, so that a crash in between runs the task twice
        rather than never. Does nothing unless ``consumer_id`` reserved the job through this
        client and this connection still has it (a ``touch`` checks, first).

        Ex::

            task_id = client.retry('emails', task_id, consumer_id, task.serialize())

        :returns: The new job's id, or ``task_id`` when nothing was done
        """
        tube = self._tube(queue_name)
        job_id = _job_id(task_id)
        if job_id is None or not self._holds(job_id, queue_name, consumer_id):
            return task_id
        body = _body(data)
        delay = _delay_seconds(delay_until)
        with self._session() as conn:
            if not self._still_reserved(conn, job_id, queue_name, consumer_id):
                return task_id
            self._use(conn, tube)
            new_id = conn.put(body, priority=PRIORITY, delay=delay, ttr=self.ttr)
            self._let_go(job_id, queue_name, consumer_id)
            conn.delete(job_id)
        return str(new_id)

    def requeue_inflight(self, queue_name: str, consumer_id: str, death: str | None = None) -> int:
        """
        Releases the jobs ``consumer_id`` reserved through this client, to the front of the
        queue. Jobs reserved through another connection cannot be released from here; those
        of a dead process went back to their queue when its connection closed.

        ``death`` is accepted and ignored: this backend counts no deaths, and its tasks
        always come with ``deaths == 0``. beanstalkd puts a dead consumer's jobs back by
        itself when its connection closes, so a supervisor's call finds nothing to release
        here; a job's body cannot change, so there is nowhere to keep a count; and the
        server already counts such takes (see ``abandoned``).

        Ex::

            client.requeue_inflight('emails', 'host:4242:a1b2')

        :param death: Why the consumer died; not used
        :returns: How many jobs were released
        """
        self._tube(queue_name)
        held = self._held_by(queue_name, consumer_id)
        released = 0
        if held:
            with self._session() as conn:
                for job_id in held:
                    self._let_go(job_id, queue_name, consumer_id)
                    try:
                        conn.release(_handle(job_id), priority=FRONT_PRIORITY, delay=0)
                    except greenstalk.NotFoundError:
                        continue  # Its time-to-run ran out: beanstalkd took it back already.
                    released += 1
        return released

    def keepalive(self, queue_name: str, consumer_id: str) -> None:
        """
        Touches the jobs ``consumer_id`` holds through this client, restarting their
        time-to-run.

        Ex::

            client.keepalive('emails', 'host:4242:a1b2')
        """
        self._tube(queue_name)
        held = self._held_by(queue_name, consumer_id)
        if not held:
            return
        with self._session() as conn:
            for job_id in held:
                self._still_reserved(conn, job_id, queue_name, consumer_id)

    def requeue_expired(self, queue_name: str) -> int:
        """
        Returns 0: beanstalkd itself makes a job ready again when its time-to-run runs out.

        Ex::

            client.requeue_expired('emails')
        """
        self._tube(queue_name)
        return 0

    def abandoned(self, queue_name: str, task_id: str) -> int | None:
        """
        How many times beanstalkd handed out the job without getting it back (its
        ``reserves``, less its ``releases`` and the reservation that holds it now): each
        one a consumer that died, lost its connection or ran out of its time-to-run.
        ``None`` for a job this server does not know.

        Ex::

            client.abandoned('emails', '1042')  # 2
        """
        self._tube(queue_name)
        job_id = _job_id(task_id)
        if job_id is None:
            return None
        with self._session() as conn:
            try:
                stats = conn.stats_job(job_id)
            except greenstalk.NotFoundError:
                return None
        return max(0, stats["reserves"] - stats["releases"] - 1)

    def locate(self, queue_name: str, task_id: str) -> Located | None:
        """
        Where a job of the tube is (``stats-job``): ready, delayed or reserved (in flight),
        with its body. A finished or dead task is not found here: beanstalkd keeps no
        outcomes, and a dead letter is a record of its own in ``<queue>.dead``.

        Ex::

            client.locate('emails', '1042')  # Located('ready', '{…}')
        """
        tube = self._tube(queue_name)
        job_id = _job_id(task_id)
        if job_id is None:
            return None
        places = {"ready": READY, "delayed": DELAYED, "reserved": INFLIGHT}
        with self._session() as conn:
            try:
                stats = conn.stats_job(job_id)
                if stats["tube"] != tube or stats["state"] not in places:
                    return None
                body = conn.peek(job_id).body
            except greenstalk.NotFoundError:
                return None  # Deleted in the meantime.
        return Located(places[stats["state"]], _text(body))

    def get(self, queue_name: str, task_id: str, consumer_id: str) -> Reserved | None:
        """
        Reserves one ready or delayed job of the tube by its id (``reserve-job``).

        Ex::

            reserved = client.get('emails', '1042', 'host:4242:a1b2')
        """
        tube = self._tube(queue_name)
        job_id = _job_id(task_id)
        if job_id is None:
            return None
        with self._session() as conn:
            if not self._waits_in(conn, job_id, tube):
                return None
            try:
                job = conn.reserve_job(job_id)
            except greenstalk.NotFoundError:
                return None  # Reserved by another consumer in the meantime.
            self._hold(job.id, queue_name, consumer_id)
        return Reserved(str(job.id), _text(job.body))

    def make_ready(self, queue_name: str, task_id: str) -> None:
        """
        Makes a delayed job of the tube ready at once (``kick-job``); does nothing for a
        job that is not delayed there.

        Ex::

            client.make_ready('emails', '1043')
        """
        tube = self._tube(queue_name)
        job_id = _job_id(task_id)
        if job_id is None:
            return
        with self._session() as conn:
            if not self._waits_in(conn, job_id, tube):
                return
            try:
                conn.kick_job(job_id)
            except greenstalk.NotFoundError:
                pass  # ready already, and maybe taken

    def cancel(self, queue_name: str, task_id: str, outcome: Outcome | None = None) -> str | None:
        """
        Deletes one ready or delayed job of the tube by its id.

        Ex::

            data = client.cancel('emails', '1042')
        """
        tube = self._tube(queue_name)
        _keep_nothing(outcome)
        job_id = _job_id(task_id)
        if job_id is None:
            return None
        with self._session() as conn:
            if not self._waits_in(conn, job_id, tube):
                return None
            try:
                body = conn.peek(job_id).body
                conn.delete(job_id)
            except greenstalk.NotFoundError:
                return None  # Reserved by a consumer in the meantime.
        return _text(body)

    def len(self, queue_name: str) -> int:
        """
        Counts the tube's ready and delayed jobs (``stats-tube``).

        Ex::

            client.len('emails')
        """
        tube = self._tube(queue_name)
        with self._session() as conn:
            try:
                stats = conn.stats_tube(tube)
            except greenstalk.NotFoundError:
                return 0  # beanstalkd forgets a tube nobody uses and that holds no job.
        return stats["current-jobs-ready"] + stats["current-jobs-delayed"]

    def drop_all(self, queue_name: str) -> None:
        """
        Deletes the tube's ready and delayed jobs, one command per job: slow on a long queue.

        Ex::

            client.drop_all('emails')
        """
        tube = self._tube(queue_name)
        for peek in ("peek_ready", "peek_delayed"):
            while True:
                # A session per job, so that a heartbeat is not kept waiting meanwhile.
                with self._session() as conn:
                    self._use(conn, tube)
                    try:
                        job_id = getattr(conn, peek)().id
                    except greenstalk.NotFoundError:
                        break
                    try:
                        conn.delete(job_id)
                    except greenstalk.NotFoundError:
                        pass  # Reserved by a consumer in the meantime.

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
        Buries a record of the failure in the tube ``<queue>.dead``. With ``consumer_id``,
        then deletes the task's job; and does nothing at all unless ``consumer_id`` reserved
        it through this client and this connection still has it (a ``touch`` checks, first).
        The error text is shortened (keeping its end) when the record would exceed
        beanstalkd's ``max-job-size``.

        Ex::

            client.add_dead_letter('emails', task_id, data, 'ValueError: bad address', cid)
        """
        _keep_nothing(outcome)
        dead_tube = self._tube(queue_name) + DEAD_SUFFIX
        job_id = None
        if consumer_id is not None:
            job_id = _job_id(task_id)
            if job_id is None or not self._holds(job_id, queue_name, consumer_id):
                return
        with self._session() as conn:
            if job_id is not None and not self._still_reserved(
                conn, job_id, queue_name, consumer_id
            ):
                return
            if self._max_job_size is None:
                self._max_job_size = int(conn.stats()["max-job-size"])
            record = _dead_record(task_id, data, error, self._max_job_size)
            self._use(conn, dead_tube)
            record_id = conn.put(record, priority=PRIORITY, delay=DEAD_HOLD, ttr=self.ttr)
            try:
                conn.reserve_job(record_id)
                conn.bury(_handle(record_id))
            except greenstalk.NotFoundError:
                pass  # A client listing the dead letters buried it already.
            if job_id is not None:
                self._let_go(job_id, queue_name, consumer_id)
                conn.delete(job_id)

    def _dead_records(self, queue_name: str) -> list[tuple[int, DeadLetter]]:
        """The buried records of ``<queue>.dead``, oldest first, with their job ids.

        beanstalkd shows only the first buried job of a tube, so this walks them: each is
        reserved and buried again, which moves it to the end, until the first comes round.
        """
        dead_tube = self._tube(queue_name) + DEAD_SUFFIX
        bodies: dict[int, bytes] = {}
        with self._session() as conn:
            self._use(conn, dead_tube)
            self._bury_strays(conn)
            try:
                count = conn.stats_tube(dead_tube)["current-jobs-buried"]
            except greenstalk.NotFoundError:
                return []
            for _ in range(count):
                try:
                    job = conn.peek_buried()
                except greenstalk.NotFoundError:
                    break
                if job.id in bodies:
                    break
                try:
                    conn.reserve_job(job.id)
                except greenstalk.NotFoundError:
                    continue  # Taken by another client meanwhile.
                conn.bury(_handle(job.id))
                bodies[job.id] = job.body
        records = []
        for record_id in sorted(bodies):  # Ids grow with time: oldest failure first.
            dead = _read_dead_record(bodies[record_id])
            if dead is None:
                log.warning("Job %s in tube %r is not a dead-letter record.", record_id, dead_tube)
            else:
                records.append((record_id, dead))
        return records

    def _bury_strays(self, conn: greenstalk.Client) -> None:
        # A record is ready or delayed only if a client died between putting and burying it
        # (or while walking the buried ones): bury it now, so it is listed.
        for peek in (conn.peek_ready, conn.peek_delayed):
            while True:
                try:
                    job_id = peek().id
                except greenstalk.NotFoundError:
                    break
                try:
                    conn.reserve_job(job_id)
                    conn.bury(_handle(job_id))
                except greenstalk.NotFoundError:
                    continue

    def list_dead_letters(self, queue_name: str) -> list[DeadLetter]:
        """
        Lists the records buried in ``<queue>.dead``, oldest first. Walks them all: three
        round trips per dead letter.

        Ex::

            for dead in client.list_dead_letters('emails'):
                print(dead.task_id, dead.error)
        """
        return [dead for _, dead in self._dead_records(queue_name)]

    def requeue_dead_letters(self, queue_name: str, task_ids: list[str] | None = None) -> int:
        """
        Puts the payloads of dead letters (all, or those whose task id is in ``task_ids``)
        back in the queue as new jobs, and deletes their records.

        Ex::

            client.requeue_dead_letters('emails')

        :returns: How many were requeued
        """
        wanted = None if task_ids is None else set(task_ids)
        tube = self._tube(queue_name)
        requeued = 0
        for record_id, dead in self._dead_records(queue_name):
            if wanted is not None and dead.task_id not in wanted:
                continue
            with self._session() as conn:
                try:
                    # Claim the record first, so that two clients never both requeue it.
                    conn.reserve_job(record_id)
                except greenstalk.NotFoundError:
                    continue
                self._use(conn, tube)
                conn.put(_body(dead.data), priority=PRIORITY, delay=0, ttr=self.ttr)
                conn.delete(record_id)
            requeued += 1
        return requeued

    def purge_dead_letters(self, queue_name: str) -> int:
        """
        Deletes every record in ``<queue>.dead``.

        Ex::

            client.purge_dead_letters('emails')

        :returns: How many were deleted
        """
        dead_tube = self._tube(queue_name) + DEAD_SUFFIX
        deleted = 0
        with self._session() as conn:
            self._use(conn, dead_tube)
            for peek in (conn.peek_buried, conn.peek_ready, conn.peek_delayed):
                while True:
                    try:
                        job_id = peek().id
                    except greenstalk.NotFoundError:
                        break
                    try:
                        conn.delete(job_id)
                    except greenstalk.NotFoundError:
                        continue
                    deleted += 1
        return deleted

    def close(self) -> None:
        """Closes the connection; beanstalkd makes the jobs it held ready again."""
        with self._lock:
            self._discard()


def _keep_nothing(outcome: Outcome | None) -> None:
    if outcome is not None:
        raise NotImplementedError(
            "beanstalkd keeps no outcomes; give the Gator a result_backend to keep them."
        )


def _dead_record(task_id: str, data: str, error: str, max_size: int) -> bytes:
    """A dead-letter record: one JSON line (task id, error, time), then the payload."""
    payload = _body(data)
    failed_at = time.time()
    marker = "[…]"
    error = storable_text(error)
    while True:
        # Surrogate escapes in the id or error text go as the bytes they stand for, like
        # the payload's; _read_dead_record decodes the line the same way.
        header = _body(
            json.dumps(
                {"task_id": task_id, "error": error, "failed_at": failed_at}, ensure_ascii=False
            )
        )
        excess = len(header) + 1 + len(payload) - max_size
        if excess <= 0 or not error:
            return header + b"\n" + payload
        # Keep the end: a traceback's last lines name the error.
        keep = max(len(error) - excess - len(marker), 0)
        error = marker + error[len(error) - keep :] if keep else ""


def _read_dead_record(body: bytes) -> DeadLetter | None:
    header, _, payload = body.partition(b"\n")
    try:
        fields = json.loads(_text(header))
        return DeadLetter(
            str(fields["task_id"]),
            _text(payload),
            str(fields["error"]),
            float(fields["failed_at"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
