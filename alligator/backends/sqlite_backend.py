"""
``sqlite://`` — queues in one SQLite file: durable, no server, for one host.

DSN: ``sqlite:///relative/path.db`` (relative to the current directory when the client is
built) or ``sqlite:////absolute/path.db``, with options ``?lease=SECONDS`` (default 60),
``busy_timeout=SECONDS`` (default 5) and ``synchronous=normal|full`` (default normal).

Delivery: FIFO within a queue, by insertion order; a delayed task is never reserved before
it is due, and joins the back of its queue when a reserve first finds it due; a retried
task joins the back too. At-least-once across processes: ``reserve`` claims a task in one
write transaction, so two consumers never get the same task; a claimed task stays in the
file, owned by its consumer, until ``ack`` (or the dead-letter store) removes it. If the
consumer dies, ``requeue_inflight`` (a supervisor) or ``requeue_expired`` (any worker, once
the consumer's lease ran out) puts the task back at the front of its queue; the deaths
counted for the task (``deaths``, ``last_death``) live in its row, change in the same
transaction as its move, and are read by the statement that claims it. A committed
push survives a process crash; with ``synchronous=normal`` the last commits before a power
cut may be lost, with ``synchronous=full`` they are not.

Task ids are unique within a queue (a UNIQUE constraint): pushing an id that is waiting,
held, in flight or dead there raises ``DuplicateTaskError``. ``ack``, ``retry`` and
``add_dead_letter`` change a row only while it is in flight and held by the consumer that
calls them.

SQLite has no way to wake a waiting reader, so an idle ``reserve`` polls: one indexed read
per look, a few milliseconds apart after work was seen, doubling to ``poll_interval``
while the queue stays empty. While the queue is busy, ``reserve`` claims the next task in
one statement, without looking first.

Outcomes (``keeps_results``) live in a table of their own, one row per queue and task id.
``ack``, ``add_dead_letter`` and ``cancel`` keep the outcome they are given in the write
transaction that ends the task: no crash leaves the task gone and its outcome untold, or
an outcome kept for a task still there. Without an outcome, ``ack`` of a task nothing
waits for stays one autocommitted statement. An outcome past its TTL is absent to every
read; each store deletes the oldest few expired ones (at most ``SWEEP_LIMIT``, found by an
index), so the table does not grow with outcomes nobody reads, and a store costs the same
whatever its size. A push forgets an id's old outcome within its own INSERT (a trigger
does it), a ``requeue_dead_letters`` within its transaction. ``locate`` is one SELECT. As
for ``reserve``, a waiting ``result`` polls: one indexed read per look, 5 ms apart at
first, doubling to ``RESULT_POLL_INTERVAL`` (0.1 s).

Dependencies: a held task is a row in state ``held`` that counts the tasks it still waits
for (``pending``); ``alligator_waiters`` holds a row per held task and task it waits for,
indexed by the latter. A push with ``depends_on`` reads every dependency and stores the
task in one write transaction. The statement that ends a task carries an indexed ``NOT
EXISTS`` on the waiters, so that a task nothing waits for ends in the statements it always
took; one that has waiters ends, and releases (to the back of its queue) or cancels the
tasks held on it, in one write transaction. ``drop_all``, ``finish``, ``move`` and
``hand_over`` are one write transaction each.

The file must sit on a local filesystem (WAL needs shared memory between the processes
that use it). One connection per client and process, guarded by a lock; connections are
closed before ``os.fork`` and reopened on first use, in the parent and in the child.

A new database file is created readable and writable by its owner only (mode 0600, or
stricter if the umask says so); SQLite gives its ``-wal`` and ``-shm`` files the same mode.
The mode of an existing file is left as it is.

Payloads and ids that another program stored as bytes that are not UTF-8 (as TEXT or as a
BLOB) come back as ``str`` with those bytes as surrogate escapes (Python's
``surrogateescape``), and are stored as the same bytes when written back, e.g. to the dead
letters: nothing is lost or changed, and no call fails because of them.
"""

import functools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..constants import CANCELED, FAILED, SUCCESS
from ..exceptions import BackendError, DuplicateTaskError, InvalidDSNError, UnknownTaskError
from ..outcomes import dependency_canceled
from . import (
    DEAD,
    DELAYED,
    EXPIRED_LEASE_DEATH,
    FINISHED,
    HELD,
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
    storable_text,
)
from . import Client as BaseClient

log = logging.getLogger(__name__)

#: The schema this module writes; stored in the file as ``PRAGMA user_version``.
SCHEMA_VERSION = 4

# Indexes and the trigger of ``alligator_tasks``, made again when version 4 rebuilds it.
_TASKS_BY_STATE = (
    "CREATE INDEX IF NOT EXISTS alligator_tasks_by_state ON alligator_tasks (queue, state, seq)"
)
_TASKS_BY_DUE = (
    "CREATE INDEX IF NOT EXISTS alligator_tasks_by_due ON alligator_tasks (queue, due) "
    "WHERE state = 'delayed'"
)
# A new row under a task id (a push, or a dead letter stored without a consumer) forgets
# the outcome of the task that had the id before. A trigger, so that a push stays one
# statement: the lookup runs inside it, with no call of its own.
_FORGET_OUTCOME_TRIGGER = """CREATE TRIGGER IF NOT EXISTS alligator_tasks_forget_outcome
    AFTER INSERT ON alligator_tasks
    BEGIN
        DELETE FROM alligator_results WHERE queue = NEW.queue AND task_id = NEW.task_id;
    END"""

# _MIGRATIONS[n] brings a file from schema version n to n + 1, in one transaction.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # One row per task and queue. ``seq`` (the rowid) orders a queue: a push or a task
        # that becomes due takes max + 1 (the back), a requeued one min - 1 (the front).
        """CREATE TABLE IF NOT EXISTS alligator_tasks (
            seq INTEGER PRIMARY KEY,
            queue TEXT NOT NULL,
            task_id TEXT NOT NULL,
            data TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('ready', 'delayed', 'inflight', 'dead')),
            due REAL,
            consumer_id TEXT,
            expires REAL,
            error TEXT,
            failed_at REAL,
            UNIQUE (queue, task_id)
        )""",
        _TASKS_BY_STATE,
        _TASKS_BY_DUE,
    ),
    (
        # How many consumers died holding the task since it was last pushed, retried or
        # requeued from the dead letters, and the reason given for the latest death.
        "ALTER TABLE alligator_tasks ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE alligator_tasks ADD COLUMN last_death TEXT",
    ),
    (
        # The outcome kept for a task that ended, per queue and task id, until ``expires``
        # (epoch seconds; NULL: for ever). Apart from the tasks, so that a finished task
        # leaves ``alligator_tasks`` (and its indexes) as it did before.
        """CREATE TABLE IF NOT EXISTS alligator_results (
            queue TEXT NOT NULL,
            task_id TEXT NOT NULL,
            record TEXT NOT NULL,
            expires REAL,
            PRIMARY KEY (queue, task_id)
        )""",
        # Finds the first expired outcomes for the sweep, without a scan.
        "CREATE INDEX IF NOT EXISTS alligator_results_by_expiry "
        "ON alligator_results (expires) WHERE expires IS NOT NULL",
        _FORGET_OUTCOME_TRIGGER,
    ),
    (
        # Dependencies. A held task is a row in a new state, 'held' (so that the UNIQUE
        # constraint keeps refusing its id), with the count of tasks it still waits for
        # (``pending``) and the ttl of the CANCELED outcome it keeps should one of them fail
        # (``cancel_ttl``, NULL: for ever). A CHECK constraint cannot change: the table is
        # rebuilt, every row copied as it is, ``seq`` included. The trigger goes first, so
        # that the copy forgets no outcome (a dead letter's).
        "DROP TRIGGER IF EXISTS alligator_tasks_forget_outcome",
        "ALTER TABLE alligator_tasks RENAME TO alligator_tasks_v3",
        """CREATE TABLE alligator_tasks (
            seq INTEGER PRIMARY KEY,
            queue TEXT NOT NULL,
            task_id TEXT NOT NULL,
            data TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('ready', 'delayed', 'held', 'inflight', 'dead')),
            due REAL,
            consumer_id TEXT,
            expires REAL,
            error TEXT,
            failed_at REAL,
            deaths INTEGER NOT NULL DEFAULT 0,
            last_death TEXT,
            pending INTEGER,
            cancel_ttl REAL,
            UNIQUE (queue, task_id)
        )""",
        "INSERT INTO alligator_tasks (seq, queue, task_id, data, state, due, consumer_id, "
        "expires, error, failed_at, deaths, last_death) SELECT seq, queue, task_id, data, "
        "state, due, consumer_id, expires, error, failed_at, deaths, last_death "
        "FROM alligator_tasks_v3",
        "DROP TABLE alligator_tasks_v3",
        _TASKS_BY_STATE,
        _TASKS_BY_DUE,
        _FORGET_OUTCOME_TRIGGER,
        # One row per held task and task it waits for (in any queue, maybe of another
        # backend), found by the task waited for when it ends, and by the held task when
        # it leaves otherwise (its other rows go with it).
        """CREATE TABLE IF NOT EXISTS alligator_waiters (
            queue TEXT NOT NULL,
            task_id TEXT NOT NULL,
            held_queue TEXT NOT NULL,
            held_id TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS alligator_waiters_by_task "
        "ON alligator_waiters (queue, task_id)",
        "CREATE INDEX IF NOT EXISTS alligator_waiters_by_held "
        "ON alligator_waiters (held_queue, held_id)",
    ),
)

#: First pause of an idle ``reserve`` after it saw work; doubles up to ``poll_interval``.
#: A waiting ``result`` starts with it too, and doubles up to ``RESULT_POLL_INTERVAL``.
FIRST_PAUSE = 0.005

#: Longest pause between two looks of a waiting ``result``.
RESULT_POLL_INTERVAL = 0.1

#: Most expired outcomes a store deletes: more than the one row a store adds, so that
#: expired rows cannot pile up, and few, so that a store costs the same however many
#: there are.
SWEEP_LIMIT = 8

_SYNCHRONOUS = ("normal", "full")

#: ``UPDATE … RETURNING`` (SQLite 3.35+) claims a task in one statement.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

#: The options of a ``sqlite://`` DSN and their defaults.
OPTIONS: dict[str, float | str] = {"lease": 60.0, "busy_timeout": 5.0, "synchronous": "normal"}

# TEXT read from the file: bytes that are not UTF-8 become surrogate escapes instead of
# an error. A C callable, so reading stays free of Python frames.
_TEXT_FACTORY = functools.partial(str, encoding="utf-8", errors="surrogateescape")

# Statements bind payloads, task ids and error texts as CAST(? AS TEXT): sqlite3 refuses a
# str holding surrogate escapes, so such a str is bound as its bytes, and the cast stores
# those bytes as TEXT again (for an ordinary str the cast does nothing).
_HEAD = (
    "SELECT seq, task_id, data, deaths, last_death FROM alligator_tasks "
    "WHERE queue = ? AND state = 'ready' ORDER BY seq LIMIT 1"
)
# Claims the head of a queue unless a delayed task is due: that one must join the back
# first (the slow path), or tasks pushed meanwhile would overtake it.
_CLAIM_IF_NONE_DUE = (
    "UPDATE alligator_tasks SET state = 'inflight', consumer_id = ?, expires = ? "
    "WHERE seq = (SELECT seq FROM alligator_tasks WHERE queue = ? AND state = 'ready' "
    "ORDER BY seq LIMIT 1) "
    "AND NOT EXISTS (SELECT 1 FROM alligator_tasks WHERE queue = ? AND state = 'delayed' "
    "AND due <= ?) "
    "RETURNING seq, task_id, data, deaths, last_death"
)
_IN_FLIGHT_WITH = (
    "WHERE queue = ? AND task_id = CAST(? AS TEXT) AND state = 'inflight' AND consumer_id = ?"
)
_WAITING = (
    "SELECT seq, task_id, data, deaths, last_death FROM alligator_tasks WHERE queue = ? "
    "AND task_id = CAST(? AS TEXT) AND state IN ('ready', 'delayed')"
)
_CANCELABLE = (
    "SELECT seq, state, data FROM alligator_tasks WHERE queue = ? "
    "AND task_id = CAST(? AS TEXT) AND state IN ('ready', 'delayed', 'held')"
)
_BACK = "seq = (SELECT max(seq) FROM alligator_tasks) + 1"
_FRONT = "seq = (SELECT min(seq) FROM alligator_tasks) - 1"
_DUE_TO_BACK = f"UPDATE alligator_tasks SET state = 'ready', due = NULL, {_BACK} WHERE seq = ?"
_NO_DEATHS = "deaths = 0, last_death = NULL"
_DEAD_TO_BACK = (
    "UPDATE alligator_tasks SET state = 'ready', error = NULL, failed_at = NULL, "
    f"{_NO_DEATHS}, {_BACK} WHERE seq = ?"
)
_INFLIGHT_TO_FRONT = (
    "UPDATE alligator_tasks SET state = 'ready', consumer_id = NULL, expires = NULL, "
    f"{_FRONT} WHERE seq = ?"
)
# The same, for a consumer that died holding the task: one more death, and its reason.
_DIED_TO_FRONT = (
    "UPDATE alligator_tasks SET state = 'ready', consumer_id = NULL, expires = NULL, "
    f"deaths = deaths + 1, last_death = CAST(? AS TEXT), {_FRONT} WHERE seq = ?"
)
# The outcome of the task in row ``seq``, when it comes back from the dead letters. (Its
# id is read from the row, as TEXT, since another program may have stored it as a BLOB.)
_FORGET_OUTCOME = (
    "DELETE FROM alligator_results WHERE queue = ? "
    "AND task_id = (SELECT CAST(task_id AS TEXT) FROM alligator_tasks WHERE seq = ?)"
)

# Dependencies. Appended to the WHERE clause of a statement that ends a task: true while no
# task is held on it. One probe of the waiters' index, so that ending a task nothing waits
# for (almost every task) costs no statement more than before (see ``_end``).
_NOBODY_WAITS = (
    " AND NOT EXISTS (SELECT 1 FROM alligator_waiters "
    "WHERE queue = ? AND task_id = CAST(? AS TEXT))"
)
_WAITERS = (
    "SELECT held_queue, held_id FROM alligator_waiters "
    "WHERE queue = ? AND task_id = CAST(? AS TEXT) ORDER BY rowid"
)
_NO_WAITERS = "DELETE FROM alligator_waiters WHERE queue = ? AND task_id = CAST(? AS TEXT)"
# The rows of a held task that leaves without being released: the tasks it waited for.
_NO_WAITS = "DELETE FROM alligator_waiters WHERE held_queue = ? AND held_id = CAST(? AS TEXT)"
_HELD = (
    "SELECT seq, pending, due, cancel_ttl FROM alligator_tasks "
    "WHERE queue = ? AND task_id = CAST(? AS TEXT) AND state = 'held'"
)
# A held task with nothing left to wait for joins the back of its queue (ready or delayed).
_RELEASE = (
    "UPDATE alligator_tasks SET state = ?, due = ?, pending = NULL, cancel_ttl = NULL, "
    f"{_BACK} WHERE seq = ?"
)
_STATE = "SELECT state FROM alligator_tasks WHERE queue = ? AND task_id = CAST(? AS TEXT)"

# Outcomes. An outcome whose ``expires`` has come is absent to every read; the sweep
# deletes the first few of those rows, by the expiry index, oldest first.
_UNEXPIRED = "(expires IS NULL OR expires > ?)"
_KEEP = (
    "INSERT OR REPLACE INTO alligator_results (queue, task_id, record, expires) "
    "VALUES (?, CAST(? AS TEXT), CAST(? AS TEXT), ?)"
)
_FORGET = "DELETE FROM alligator_results WHERE queue = ? AND task_id = CAST(? AS TEXT)"
_SWEEP = (
    "DELETE FROM alligator_results WHERE rowid IN (SELECT rowid FROM alligator_results "
    f"WHERE expires <= ? ORDER BY expires LIMIT {SWEEP_LIMIT})"
)
_RESULT = (
    "SELECT record FROM alligator_results "
    f"WHERE queue = ? AND task_id = CAST(? AS TEXT) AND {_UNEXPIRED}"
)
# Where a task is, in one statement (so one snapshot of the file): its row, else its
# unexpired outcome.
_LOCATE = (
    "SELECT 0, state, data FROM alligator_tasks WHERE queue = ? AND task_id = CAST(? AS TEXT) "
    f"UNION ALL SELECT 1, '{FINISHED}', record FROM alligator_results "
    f"WHERE queue = ? AND task_id = CAST(? AS TEXT) AND {_UNEXPIRED} "
    "ORDER BY 1 LIMIT 1"
)
_PLACES = {
    "ready": READY,
    "delayed": DELAYED,
    "held": HELD,
    "inflight": INFLIGHT,
    "dead": DEAD,
    FINISHED: FINISHED,
}


def database_path(conn_string: str) -> str:
    """
    Returns the absolute path of the database file a ``sqlite://`` DSN names. Only reads
    the DSN (and the current directory, for a relative path).

    Ex::

        database_path('sqlite:////var/lib/app/queue.db')  # '/var/lib/app/queue.db'
    """
    shown = redact_dsn(conn_string)
    try:
        parts = urlsplit(conn_string)
    except ValueError:
        # The error's own text may quote the whole host part, password included.
        raise InvalidDSNError(
            f"DSN {shown!r} is malformed: it is not a valid URL (check its host part)."
        ) from None
    if parts.netloc:
        raise InvalidDSNError(
            f"DSN {shown!r} names a host; SQLite needs a file path: "
            "'sqlite:///relative.db' or 'sqlite:////absolute/path.db'."
        )
    path = unquote(parts.path[1:])  # the one slash after the empty host is not the path's
    if not path or path.endswith("/"):
        raise InvalidDSNError(
            f"DSN {shown!r} names no database file; use 'sqlite:///relative.db' or "
            "'sqlite:////absolute/path.db'."
        )
    if path == ":memory:":
        raise InvalidDSNError(
            f"DSN {shown!r} asks for an in-memory SQLite database, which processes "
            "cannot share; use 'locmem://' for queues in memory."
        )
    try:
        if "\0" in path:
            raise ValueError
        os.fsencode(path)
    except ValueError:  # a NUL, or a character no file name can hold
        raise InvalidDSNError(
            f"The path in DSN {shown!r} holds a character no file name can hold "
            "(e.g. a NUL); fix the DSN."
        ) from None
    return os.path.abspath(path)


@dataclass(frozen=True)
class Settings:
    """What a ``sqlite://`` DSN asks for."""

    path: str
    lease: float
    busy_timeout: float
    synchronous: str


def dsn_settings(conn_string: str) -> Settings:
    """
    Reads a ``sqlite://`` DSN: its file and its options. Only reads the DSN (and the
    current directory, for a relative path): it touches no file.

    Ex::

        dsn_settings('sqlite:////var/lib/app/queue.db?lease=120').lease  # 120.0

    :raises InvalidDSNError: The DSN names no usable file, or has a bad option
    """
    options = dsn_options(conn_string, OPTIONS)
    synchronous = str(options["synchronous"]).lower()
    if synchronous not in _SYNCHRONOUS:
        raise InvalidDSNError(
            f"Option synchronous={redact_dsn_part(conn_string, options['synchronous'])!r} in "
            f"DSN {redact_dsn(conn_string)!r} must be 'normal' or 'full'."
        )
    return Settings(
        path=database_path(conn_string),
        lease=float(options["lease"]),
        busy_timeout=float(options["busy_timeout"]),
        synchronous=synchronous,
    )


def _create_owner_only(path: str) -> None:
    """
    Creates an empty database file with mode 0600 (less what the umask takes away) unless
    it exists. SQLite would make it 0644 (less the umask), and it gives the ``-wal`` and
    ``-shm`` files the database file's mode. It takes an empty file for a new database.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return  # made before, maybe by another process just now: its mode stays
    except OSError:
        return  # e.g. no permission: sqlite3.connect fails next, with its own clear error
    os.close(fd)


def _as_text(value: object) -> str:
    """A column's value as ``str``: a BLOB is decoded as TEXT is (``_TEXT_FACTORY``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence) -> sqlite3.Cursor:
    """
    ``conn.execute``, binding a ``str`` that holds surrogate escapes as the bytes they
    stand for (the statement casts them to TEXT). Ordinary text costs nothing extra.
    """
    try:
        return conn.execute(sql, params)
    except (UnicodeEncodeError, sqlite3.InterfaceError, sqlite3.ProgrammingError):
        # sqlite3 refused a str it cannot encode (the error's type depends on the version).
        escaped = [_bindable(param) for param in params]
        if all(new is old for new, old in zip(escaped, params, strict=True)):
            raise
        return conn.execute(sql, escaped)


def _bindable(param: object) -> object:
    if isinstance(param, str):
        try:
            param.encode("utf-8")
        except UnicodeEncodeError:
            return param.encode("utf-8", "surrogateescape")
    return param


def _waiting_state(delay_until: float | None) -> tuple[str, float | None]:
    """The state and due time of a task pushed or retried with ``delay_until``."""
    if delay_until is not None and delay_until > time.time():
        return "delayed", delay_until
    return "ready", None


def _keep(conn: sqlite3.Connection, queue_name: str, task_id: str, outcome: Outcome) -> None:
    """
    Keeps a task's outcome (replacing any it had), and deletes a few expired ones, in the
    caller's write transaction.
    """
    now = time.time()
    conn.execute(_SWEEP, (now,))
    expires = None if outcome.ttl is None else now + outcome.ttl
    _execute(conn, _KEEP, (queue_name, task_id, outcome.record, expires))


@contextmanager
def _unique_task_id(queue_name: str, task_id: str) -> Iterator[None]:
    """Turns the UNIQUE (queue, task_id) violation of an INSERT into ``DuplicateTaskError``."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorname != "SQLITE_CONSTRAINT_UNIQUE":
            raise
        raise _duplicate(queue_name, task_id) from exc


def _duplicate(queue_name: str, task_id: str) -> DuplicateTaskError:
    return DuplicateTaskError(
        f"Queue {queue_name!r} already holds a task with id {task_id!r} (waiting, held, in "
        "flight or dead); give the new task an id of its own."
    )


# Dependencies, in the caller's write transaction.


def _end(
    conn: sqlite3.Connection, statement: str, params: Sequence, queue_name: str, task_id: str
) -> tuple[bool, bool]:
    """
    Runs ``statement`` (a DELETE, UPDATE or INSERT … SELECT whose WHERE clause comes last),
    which ends task ``task_id``; returns whether it ended it, and whether tasks are held on
    it (to settle). It runs with ``_NOBODY_WAITS`` first: for a task nothing waits for, that
    one statement is all.
    """
    if _execute(conn, statement + _NOBODY_WAITS, (*params, queue_name, task_id)).rowcount:
        return True, False
    ended = _execute(conn, statement, params).rowcount > 0
    return ended, ended


def _settle(conn: sqlite3.Connection, queue_name: str, task_id: str, succeeded: bool) -> set[str]:
    """
    Releases (``succeeded``) or cancels, with the tasks held on them in turn, the tasks held
    on a task that ended; returns the queues where it released some.
    """
    released = set()
    record = None if succeeded else dependency_canceled(queue_name, task_id)
    ended = [(queue_name, task_id)]
    while ended:
        end_queue, end_id = ended.pop()
        waiters = _execute(conn, _WAITERS, (end_queue, end_id)).fetchall()
        if not waiters:
            continue
        _execute(conn, _NO_WAITERS, (end_queue, end_id))
        for held_queue, held_id in waiters:
            held = _execute(conn, _HELD, (held_queue, held_id)).fetchone()
            if held is None:
                continue  # gone meanwhile
            seq, pending, due, ttl = held
            if succeeded:
                if pending > 1:
                    conn.execute(
                        "UPDATE alligator_tasks SET pending = pending - 1 WHERE seq = ?", (seq,)
                    )
                else:
                    conn.execute(_RELEASE, (*_waiting_state(due), seq))
                    released.add(held_queue)
                continue
            conn.execute("DELETE FROM alligator_tasks WHERE seq = ?", (seq,))
            _execute(conn, _NO_WAITS, (held_queue, held_id))
            if ttl != 0:
                _keep(conn, held_queue, held_id, Outcome(record, ttl))
            ended.append((held_queue, held_id))
    return released


def _dependency(
    conn: sqlite3.Connection, queue_name: str, task_id: str, elsewhere: bool
) -> tuple[str, str] | str | None:
    """
    What a dependency is: ``(queue, id)`` to wait for (its id may be one a pointer sent it
    on to), ``"done"``, ``"failed"``, or ``None`` when unknown.
    """
    now = time.time()
    seen = set()
    while (queue_name, task_id) not in seen:
        seen.add((queue_name, task_id))
        row = _execute(conn, _STATE, (queue_name, task_id)).fetchone()
        if row is not None:
            return "failed" if row[0] == "dead" else (queue_name, task_id)
        row = _execute(conn, _RESULT, (queue_name, task_id, now)).fetchone()
        fields = None if row is None else _record_fields(_as_text(row[0]))
        moved_to = None if fields is None else fields.get("moved_to")
        if isinstance(moved_to, str):
            task_id = moved_to
            continue
        status = None if fields is None else fields.get("status")
        if status == SUCCESS:
            return "done"
        if status in (FAILED, CANCELED):
            return "failed"
        return (queue_name, task_id) if elsewhere else None
    return queue_name, task_id  # pointers in a circle: wait for the last


def _record_fields(record: str) -> dict | None:
    """A kept record's fields, or ``None`` for one that is not a JSON object."""
    try:
        fields = json.loads(record)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def _move_waiters(conn: sqlite3.Connection, queue_name: str, old_id: str, new_id: str) -> None:
    """Carries the tasks held on ``old_id`` over to ``new_id``."""
    if new_id != old_id:
        _execute(
            conn,
            "UPDATE alligator_waiters SET task_id = CAST(? AS TEXT) "
            "WHERE queue = ? AND task_id = CAST(? AS TEXT)",
            (new_id, queue_name, old_id),
        )


class Client(BaseClient):
    """
    The SQLite backend. DSN: ``sqlite:///relative/path.db`` or ``sqlite:////abs/path.db``.

    Opens the file at once, so a bad path fails here, and creates the tables in a new
    file. The file's directory must exist.

    Ex::

        client = Client('sqlite:////var/lib/app/queue.db?lease=120')

    :param conn_string: The DSN; options ``lease``, ``busy_timeout`` (seconds a write waits
        for another process's write) and ``synchronous`` (``normal`` or ``full``)
    """

    def __init__(self, conn_string: str) -> None:
        super().__init__(conn_string)
        settings = dsn_settings(conn_string)
        self.lease = settings.lease
        self.busy_timeout = settings.busy_timeout
        self.synchronous = settings.synchronous
        self.path = settings.path
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise InvalidDSNError(
                f"The directory {redact_dsn_part(conn_string, directory)!r} for the SQLite "
                f"database of DSN {redact_dsn(conn_string)!r} does not exist; create it or "
                "fix the DSN."
            )
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        # queue name -> pause an idle reserve had reached, so a worker that keeps finding
        # the queue empty keeps looking every poll_interval, not every few milliseconds.
        self._idle_pause: dict[str, float] = {}
        # Queues whose last reserve found work: the next one claims without looking first.
        # A claim takes the write lock even when it finds nothing, a look does not.
        self._busy: set[str] = set()
        _clients.add(self)
        try:
            with self._connection() as conn:
                self._migrate(conn)
        except BaseException:
            self.close()
            raise

    # Connections.

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Yields this process's connection, under the lock; SQLite errors become
        ``BackendError``."""
        with self._lock:
            try:
                if self._conn is None or self._conn_pid != os.getpid():
                    self._open()
                yield self._conn
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
                raise  # a bug here, not a backend that failed
            except sqlite3.DatabaseError as exc:
                raise self._backend_error(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: other writers wait (up to ``busy_timeout``) until it ends."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _open(self) -> None:
        if self._conn is not None and self._conn_pid != os.getpid():
            # Opened before a fork that skipped the at-fork hooks: closing it here could
            # release the parent's locks, so it is only kept from being collected.
            _inherited.append(self._conn)
            self._conn = None
        _create_owner_only(self.path)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,  # self._lock serializes the threads that share it
        )
        conn.text_factory = _TEXT_FACTORY
        try:
            mode = self._use_wal(conn)
            if mode != "wal":
                log.warning(
                    "SQLite database %r stays in journal mode %r, not WAL: readers and "
                    "writers will block each other.",
                    self.path,
                    mode,
                )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        log.debug("Opened SQLite database %r in process %d.", self.path, self._conn_pid)

    def _use_wal(self, conn: sqlite3.Connection) -> str:
        """Switches the file to WAL (a no-op once it is); returns the journal mode."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                # When processes open a new file at once, all but one of them are refused
                # at once, without the busy wait, while that one switches it; retry.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again inside the transaction: another process may have just done it.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise BackendError(
                    f"The SQLite database {self.path!r} has schema version {version}, but this "
                    f"Alligator knows versions up to {SCHEMA_VERSION} only; upgrade Alligator."
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _backend_error(self, exc: sqlite3.DatabaseError) -> BackendError:
        reason = str(exc)
        if "not a database" in reason:
            return BackendError(
                f"{self.path!r} is not an SQLite database ({reason}); point the DSN at a new "
                "file or at an Alligator queue database."
            )
        if "locked" in reason or "busy" in reason:
            return BackendError(
                f"The SQLite database {self.path!r} stayed locked by another connection for "
                f"longer than busy_timeout={self.busy_timeout:g}s ({reason})."
            )
        if "unable to open" in reason:
            return BackendError(
                f"Cannot open the SQLite database {self.path!r} ({reason}); check that it is "
                "a file this process may read and write."
            )
        return BackendError(f"The SQLite database {self.path!r} failed: {reason}.")

    def close(self) -> None:
        with self._lock:
            self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None and self._conn_pid == os.getpid():
            self._conn.close()
        self._conn = None

    # The contract.

    def push(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        delay_until: float | None = None,
        depends_on: Dependencies | None = None,
    ) -> str:
        if depends_on is not None:
            with self._transaction() as conn:
                self._hold(conn, queue_name, task_id, data, delay_until, depends_on)
            return task_id
        state, due = _waiting_state(delay_until)
        with self._connection() as conn, _unique_task_id(queue_name, task_id):
            _execute(
                conn,
                "INSERT INTO alligator_tasks (queue, task_id, data, state, due) "
                "VALUES (?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?)",
                (queue_name, task_id, data, state, due),
            )
        return task_id

    @staticmethod
    def _hold(
        conn: sqlite3.Connection,
        queue_name: str,
        task_id: str,
        data: str,
        delay_until: float | None,
        depends_on: Dependencies,
    ) -> None:
        """Stores a task pushed with dependencies: held, waiting, or canceled at once."""
        if _execute(conn, _STATE, (queue_name, task_id)).fetchone() is not None:
            raise _duplicate(queue_name, task_id)
        pending = []
        for dependency in depends_on.on:
            found = _dependency(conn, *dependency, depends_on.elsewhere)
            if found is None:
                raise UnknownTaskError(task_id, dependency)
            if found == "failed":
                if depends_on.ttl == 0:
                    _execute(conn, _FORGET, (queue_name, task_id))
                else:
                    record = dependency_canceled(*dependency)
                    _keep(conn, queue_name, task_id, Outcome(record, depends_on.ttl))
                return
            if found != "done":
                pending.append(found)
        if pending:
            state, due, ttl = "held", delay_until, depends_on.ttl
        else:
            (state, due), ttl = _waiting_state(delay_until), None
        with _unique_task_id(queue_name, task_id):
            _execute(
                conn,
                "INSERT INTO alligator_tasks (queue, task_id, data, state, due, pending, "
                "cancel_ttl) VALUES (?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?, ?, ?)",
                (queue_name, task_id, data, state, due, len(pending) or None, ttl),
            )
        for dep_queue, dep_id in pending:
            _execute(
                conn,
                "INSERT INTO alligator_waiters (queue, task_id, held_queue, held_id) "
                "VALUES (?, CAST(? AS TEXT), ?, CAST(? AS TEXT))",
                (dep_queue, dep_id, queue_name, task_id),
            )

    def reserve(
        self, queue_name: str, consumer_id: str, timeout: float = 0.0, poll_interval: float = 0.1
    ) -> Reserved | None:
        deadline = time.monotonic() + timeout
        if queue_name in self._busy:
            claim = self._claim_ready if HAS_RETURNING else self._claim
            reserved = claim(queue_name, consumer_id)
            if reserved is not None:
                return reserved
            self._busy.discard(queue_name)  # empty, or a delayed task is due: look
        poll_interval = max(poll_interval, FIRST_PAUSE)  # 0: the shortest pause, not a spin
        pause = min(self._idle_pause.get(queue_name, FIRST_PAUSE), poll_interval)
        while True:
            wait = self._peek(queue_name)
            if wait == 0.0:
                reserved = self._claim(queue_name, consumer_id)
                self._idle_pause.pop(queue_name, None)
                if reserved is not None:
                    self._busy.add(queue_name)
                    return reserved
                pause = FIRST_PAUSE  # another consumer was quicker; more may follow
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._idle_pause[queue_name] = pause
                return None
            nap = min(pause, remaining)
            if wait is not None:  # a delayed task falls due: look again right then
                nap = min(nap, max(wait, 0.001))
            time.sleep(nap)
            pause = min(pause * 2, poll_interval)

    def _peek(self, queue_name: str) -> float | None:
        """One read: 0.0 when a task is ready or due, else seconds until the next delayed
        task is due, or ``None`` when there is none."""
        with self._connection() as conn:
            ready, next_due = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM alligator_tasks "
                "WHERE queue = ? AND state = 'ready'), "
                "(SELECT min(due) FROM alligator_tasks WHERE queue = ? AND state = 'delayed')",
                (queue_name, queue_name),
            ).fetchone()
        if ready:
            return 0.0
        return None if next_due is None else max(next_due - time.time(), 0.0)

    def _claim_ready(self, queue_name: str, consumer_id: str) -> Reserved | None:
        """One statement: claims the head of the queue, or nothing when the queue is empty
        or a delayed task is due (``_claim`` moves that one to the back first)."""
        now = time.time()
        with self._connection() as conn:
            # fetchall: the statement must run to its end for the autocommit to happen.
            claimed = conn.execute(
                _CLAIM_IF_NONE_DUE, (consumer_id, now + self.lease, queue_name, queue_name, now)
            ).fetchall()
            if not claimed:
                return None
            return _reserved(conn, *claimed[0])

    def _claim(self, queue_name: str, consumer_id: str) -> Reserved | None:
        """One transaction: moves due delayed tasks to the back, then claims the head."""
        with self._transaction() as conn:
            now = time.time()
            due = conn.execute(
                "SELECT seq FROM alligator_tasks WHERE queue = ? AND state = 'delayed' "
                "AND due <= ? ORDER BY due, seq",
                (queue_name, now),
            ).fetchall()
            for (seq,) in due:
                conn.execute(_DUE_TO_BACK, (seq,))
            head = conn.execute(_HEAD, (queue_name,)).fetchone()
            if head is None:
                return None
            conn.execute(
                "UPDATE alligator_tasks SET state = 'inflight', consumer_id = ?, expires = ? "
                "WHERE seq = ?",
                (consumer_id, now + self.lease, head[0]),
            )
            return _reserved(conn, *head)

    def ack(
        self, queue_name: str, task_id: str, consumer_id: str, outcome: Outcome | None = None
    ) -> None:
        self._end_task(
            f"DELETE FROM alligator_tasks {_IN_FLIGHT_WITH}",
            (queue_name, task_id, consumer_id),
            queue_name,
            task_id,
            outcome,
            succeeded=True,
        )

    def _end_task(
        self,
        statement: str,
        params: Sequence,
        queue_name: str,
        task_id: str,
        outcome: Outcome | None,
        succeeded: bool,
    ) -> None:
        """
        Ends a task with ``statement`` (see ``_end``), keeps its ``outcome`` and releases
        (``succeeded``) or cancels the tasks held on it, in one step. Without an outcome,
        a task nothing waits for ends in one autocommitted statement.
        """
        if outcome is None:
            with self._connection() as conn:  # the hot path
                unwaited = (*params, queue_name, task_id)
                if _execute(conn, statement + _NOBODY_WAITS, unwaited).rowcount:
                    return
        # Tasks are held on it, an outcome is to be kept, or there is nothing to end.
        with self._transaction() as conn:
            ended, waited = _end(conn, statement, params, queue_name, task_id)
            if ended and outcome is not None:
                _keep(conn, queue_name, task_id, outcome)
            if waited:
                _settle(conn, queue_name, task_id, succeeded)

    def retry(
        self,
        queue_name: str,
        task_id: str,
        consumer_id: str,
        data: str,
        delay_until: float | None = None,
    ) -> str:
        state, due = _waiting_state(delay_until)
        with self._connection() as conn:
            _execute(
                conn,
                "UPDATE alligator_tasks SET data = CAST(? AS TEXT), state = ?, due = ?, "
                f"consumer_id = NULL, expires = NULL, {_NO_DEATHS}, {_BACK} {_IN_FLIGHT_WITH}",
                (data, state, due, queue_name, task_id, consumer_id),
            )
        return task_id

    def _requeue_front(
        self, conn: sqlite3.Connection, where: str, params: tuple, death: str | None
    ) -> int:
        taken = conn.execute(
            f"SELECT seq FROM alligator_tasks WHERE queue = ? AND state = 'inflight' AND {where} "
            "ORDER BY seq DESC",  # the newest goes to the front first, the oldest ends first
            params,
        ).fetchall()
        for (seq,) in taken:
            if death is None:
                conn.execute(_INFLIGHT_TO_FRONT, (seq,))
            else:
                _execute(conn, _DIED_TO_FRONT, (death, seq))
        return len(taken)

    def requeue_inflight(self, queue_name: str, consumer_id: str, death: str | None = None) -> int:
        death = None if death is None else storable_text(str(death))
        with self._transaction() as conn:
            return self._requeue_front(conn, "consumer_id = ?", (queue_name, consumer_id), death)

    def keepalive(self, queue_name: str, consumer_id: str) -> None:
        with self._connection() as conn:
            conn.execute(
                "UPDATE alligator_tasks SET expires = ? "
                "WHERE queue = ? AND state = 'inflight' AND consumer_id = ?",
                (time.time() + self.lease, queue_name, consumer_id),
            )

    def requeue_expired(self, queue_name: str) -> int:
        with self._transaction() as conn:
            return self._requeue_front(
                conn, "expires < ?", (queue_name, time.time()), EXPIRED_LEASE_DEATH
            )

    def get(self, queue_name: str, task_id: str, consumer_id: str) -> Reserved | None:
        with self._transaction() as conn:
            row = _execute(conn, _WAITING, (queue_name, task_id)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE alligator_tasks SET state = 'inflight', due = NULL, consumer_id = ?, "
                "expires = ? WHERE seq = ?",
                (consumer_id, time.time() + self.lease, row[0]),
            )
            return _reserved(conn, *row)

    def cancel(self, queue_name: str, task_id: str, outcome: Outcome | None = None) -> str | None:
        with self._transaction() as conn:
            row = _execute(conn, _CANCELABLE, (queue_name, task_id)).fetchone()
            if row is None:
                return None
            seq, state, data = row
            if state == "held":
                _execute(conn, _NO_WAITS, (queue_name, task_id))
            delete = "DELETE FROM alligator_tasks WHERE seq = ?"
            _, waited = _end(conn, delete, (seq,), queue_name, task_id)
            if outcome is not None:
                _keep(conn, queue_name, task_id, outcome)
            if waited:
                _settle(conn, queue_name, task_id, succeeded=False)
        return _as_text(data)

    def len(self, queue_name: str) -> int:
        with self._connection() as conn:
            return conn.execute(
                "SELECT count(*) FROM alligator_tasks "
                "WHERE queue = ? AND state IN ('ready', 'delayed', 'held')",
                (queue_name,),
            ).fetchone()[0]

    def drop_all(self, queue_name: str) -> None:
        waiting = "queue = ? AND state IN ('ready', 'delayed', 'held')"
        with self._transaction() as conn:
            # The held tasks it drops wait no more; then, the tasks it drops that others
            # (in any queue) are held on, oldest first.
            conn.execute(
                "DELETE FROM alligator_waiters WHERE held_queue = ? AND held_id IN "
                "(SELECT task_id FROM alligator_tasks WHERE queue = ? AND state = 'held')",
                (queue_name, queue_name),
            )
            waited = conn.execute(
                "SELECT CAST(task_id AS TEXT) FROM alligator_tasks "
                f"WHERE {waiting} AND EXISTS (SELECT 1 FROM alligator_waiters "
                "WHERE alligator_waiters.queue = alligator_tasks.queue "
                "AND alligator_waiters.task_id = alligator_tasks.task_id) ORDER BY seq",
                (queue_name,),
            ).fetchall()
            conn.execute(f"DELETE FROM alligator_tasks WHERE {waiting}", (queue_name,))
            for (task_id,) in waited:
                _settle(conn, queue_name, task_id, succeeded=False)

    def add_dead_letter(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        error: str,
        consumer_id: str | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        failed_at = time.time()
        error = storable_text(error)
        if consumer_id is not None:
            # To the back, so that dead letters list in the order they failed.
            statement = (
                "UPDATE alligator_tasks SET data = CAST(? AS TEXT), state = 'dead', "
                "error = CAST(? AS TEXT), failed_at = ?, consumer_id = NULL, "
                f"expires = NULL, {_NO_DEATHS}, {_BACK} {_IN_FLIGHT_WITH}"
            )
            params: tuple = (data, error, failed_at, queue_name, task_id, consumer_id)
        else:
            # INSERT … SELECT, for a WHERE clause that ``_end`` can add to.
            statement = (
                "INSERT INTO alligator_tasks (queue, task_id, data, state, error, failed_at) "
                "SELECT ?, CAST(? AS TEXT), CAST(? AS TEXT), 'dead', CAST(? AS TEXT), ? "
                "WHERE 1"
            )
            params = (queue_name, task_id, data, error, failed_at)
        with _unique_task_id(queue_name, task_id):
            self._end_task(statement, params, queue_name, task_id, outcome, succeeded=False)

    def list_dead_letters(self, queue_name: str) -> list[DeadLetter]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT task_id, data, error, failed_at FROM alligator_tasks "
                "WHERE queue = ? AND state = 'dead' ORDER BY seq",
                (queue_name,),
            ).fetchall()
        return [
            DeadLetter(_as_text(task_id), _as_text(data), _as_text(error), failed_at)
            for task_id, data, error, failed_at in rows
        ]

    def requeue_dead_letters(self, queue_name: str, task_ids: list[str] | None = None) -> int:
        with self._transaction() as conn:
            if task_ids is None:
                dead = conn.execute(
                    "SELECT seq FROM alligator_tasks WHERE queue = ? AND state = 'dead' "
                    "ORDER BY seq",
                    (queue_name,),
                ).fetchall()
            else:
                found = (
                    _execute(
                        conn,
                        "SELECT seq FROM alligator_tasks "
                        "WHERE queue = ? AND task_id = CAST(? AS TEXT) AND state = 'dead'",
                        (queue_name, task_id),
                    ).fetchone()
                    for task_id in dict.fromkeys(task_ids)
                )
                dead = sorted(row for row in found if row is not None)  # oldest first
            for (seq,) in dead:
                conn.execute(_FORGET_OUTCOME, (queue_name, seq))
                conn.execute(_DEAD_TO_BACK, (seq,))
        return len(dead)

    def purge_dead_letters(self, queue_name: str) -> int:
        with self._connection() as conn:
            return conn.execute(
                "DELETE FROM alligator_tasks WHERE queue = ? AND state = 'dead'", (queue_name,)
            ).rowcount

    def finish(
        self, queue_name: str, task_id: str, succeeded: bool, outcome: Outcome | None
    ) -> list[str]:
        with self._transaction() as conn:
            if outcome is not None:
                _keep(conn, queue_name, task_id, outcome)
            return sorted(_settle(conn, queue_name, task_id, succeeded))

    def move(self, queue_name: str, old_id: str, new_id: str, outcome: Outcome | None) -> None:
        with self._transaction() as conn:
            if outcome is not None:
                _keep(conn, queue_name, old_id, outcome)
            _move_waiters(conn, queue_name, old_id, new_id)

    def hand_over(
        self,
        queue_name: str,
        task_id: str,
        consumer_id: str,
        new_id: str,
        outcome: Outcome | None,
    ) -> None:
        with self._transaction() as conn:
            if _execute(
                conn,
                f"DELETE FROM alligator_tasks {_IN_FLIGHT_WITH}",
                (queue_name, task_id, consumer_id),
            ).rowcount:
                if outcome is not None:
                    _keep(conn, queue_name, task_id, outcome)
                _move_waiters(conn, queue_name, task_id, new_id)

    def result(self, queue_name: str, task_id: str, timeout: float | None = 0.0) -> str | None:
        # SQLite cannot wake a reader: look again after 5, 10, 20... ms, up to
        # RESULT_POLL_INTERVAL between looks, and once more when the time is up.
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FIRST_PAUSE
        while True:
            with self._connection() as conn:
                row = _execute(conn, _RESULT, (queue_name, task_id, time.time())).fetchone()
            if row is not None:
                return _as_text(row[0])
            nap = pause
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                nap = min(nap, remaining)
            time.sleep(nap)
            pause = min(pause * 2, RESULT_POLL_INTERVAL)

    def locate(self, queue_name: str, task_id: str) -> Located | None:
        with self._connection() as conn:
            found = _execute(
                conn, _LOCATE, (queue_name, task_id, queue_name, task_id, time.time())
            ).fetchone()
        if found is None:
            return None
        _, place, data = found
        return Located(_PLACES[place], _as_text(data))


def _reserved(
    conn: sqlite3.Connection,
    seq: int,
    task_id: object,
    data: object,
    deaths: int,
    last_death: object,
) -> Reserved:
    """A claimed task, from the columns the claim read."""
    if type(task_id) is str and type(data) is str:
        return Reserved(task_id, data, deaths, _as_text(last_death))
    return _reserved_blob(conn, seq, task_id, data, deaths, last_death)


def _reserved_blob(
    conn: sqlite3.Connection,
    seq: int,
    task_id: object,
    data: object,
    deaths: int,
    last_death: object,
) -> Reserved:
    """
    A claimed task whose id or payload another program stored as a BLOB: both are made
    TEXT (the same bytes), so that settling it by its id finds it.
    """
    try:
        conn.execute(
            "UPDATE alligator_tasks SET task_id = CAST(task_id AS TEXT), "
            "data = CAST(data AS TEXT) WHERE seq = ?",
            (seq,),
        )
    except sqlite3.IntegrityError:
        log.warning(
            "Task %r in the SQLite database is stored as a BLOB, and the same id as TEXT is "
            "taken: it cannot be settled by its id.",
            task_id,
        )
    return Reserved(_as_text(task_id), _as_text(data), deaths, _as_text(last_death))


# Fork safety. SQLite keeps its per-file lock bookkeeping in process memory; a child forked
# while its parent had the file open inherits that bookkeeping, and its own new connection
# then takes no real locks, so another process could checkpoint and delete the WAL under
# it. So every client's connection is closed just before a fork (holding its lock across
# the fork, so no other thread reopens it meanwhile) and reopened on first use afterwards.
_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()
_forking: list[Client] = []
_inherited: list[sqlite3.Connection] = []


def _before_fork() -> None:
    _forking[:] = list(_clients)
    for client in _forking:
        client._lock.acquire()
        with suppress(sqlite3.Error):
            client._close_connection()


def _after_fork() -> None:
    for client in _forking:
        client._lock.release()
    _forking.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
