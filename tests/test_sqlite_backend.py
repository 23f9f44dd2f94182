"""What the SQLite backend does beyond the Client contract: its DSN, its file, its locking,
its order, its polling and hot path, its outcomes, and its safety across threads, processes
and fork."""

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alligator.backends import (
    DEAD,
    DELAYED,
    FINISHED,
    HELD,
    INFLIGHT,
    READY,
    Dependencies,
    Located,
    Outcome,
    Reserved,
    sqlite_backend,
)
from alligator.backends.sqlite_backend import (
    HAS_RETURNING,
    SCHEMA_VERSION,
    SWEEP_LIMIT,
    Client,
    Settings,
    dsn_settings,
)
from alligator.constants import CANCELED
from alligator.exceptions import (
    BackendError,
    DuplicateTaskError,
    InvalidDSNError,
    UnknownTaskError,
)

from .servers import wait_for

CONSUMER = "test-host:1:consumer"
REPO = Path(__file__).resolve().parent.parent


def dsn_for(path: Path, **options) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def client(db_path):
    client = Client(dsn_for(db_path))
    yield client
    client.close()


def rows(path: Path, sql: str, *params) -> list[tuple]:
    """Reads the file with a connection of its own, as another program would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def run_python(code: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True, **popen)


# DSN forms and options.


def test_relative_path_is_relative_to_the_current_directory(tmp_path, monkeypatch, queue_name):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    client = Client("sqlite:///data/queue.db")
    # A later chdir (e.g. a daemon's) does not move the queue.
    monkeypatch.chdir("/")
    client.push(queue_name, "t", "payload")
    assert client.path == str(tmp_path / "data" / "queue.db")
    assert rows(tmp_path / "data" / "queue.db", "SELECT task_id FROM alligator_tasks") == [("t",)]
    client.close()


def test_absolute_path_takes_four_slashes(tmp_path, queue_name):
    client = Client(f"sqlite:////{str(tmp_path).lstrip('/')}/abs.db")
    client.push(queue_name, "t", "payload")
    assert client.path == str(tmp_path / "abs.db")
    assert (tmp_path / "abs.db").is_file()
    client.close()


def test_percent_encoded_path(tmp_path):
    (tmp_path / "my dir").mkdir()
    client = Client(f"sqlite:///{tmp_path}/my%20dir/queue.db")
    assert client.path == str(tmp_path / "my dir" / "queue.db")
    client.close()


def test_options(db_path):
    client = Client(dsn_for(db_path, lease=2.5, busy_timeout=0.5, synchronous="full"))
    assert (client.lease, client.busy_timeout) == (2.5, 0.5)
    with client._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    client.close()


def test_default_options(client):
    assert (client.lease, client.busy_timeout) == (60.0, 5.0)
    with client._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


@pytest.mark.parametrize(
    "dsn, words",
    [
        ("sqlite://", "names no database file"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///data/", "names no database file"),
        ("sqlite://localhost/queue.db", "names a host"),
        ("sqlite:///:memory:", "locmem://"),
        ("sqlite:///queue.db?synchronous=off", "'normal' or 'full'"),
        ("sqlite:///queue.db?lease=0", "must be a number > 0"),
        ("sqlite:///queue.db?busy_timeout=soon", "must be a number > 0"),
    ],
)
def test_bad_dsn_is_one_clear_sentence(dsn, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidDSNError) as caught:
        Client(dsn)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_dsn_settings_reads_the_dsn_and_touches_no_file(tmp_path):
    dsn = dsn_for(tmp_path / "queue.db", lease=5, synchronous="FULL")
    assert dsn_settings(dsn) == Settings(str(tmp_path / "queue.db"), 5.0, 5.0, "full")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "dsn",
    [
        "sqlite://app:secret@host/queue.db",
        "sqlite:///queue.db?synchronous=x&password=secret",
        "sqlite:///nowhere/app:secret@x/queue.db",  # the parser takes it all for the path
    ],
)
def test_messages_keep_the_password_of_a_dsn_out(dsn, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidDSNError) as caught:
        Client(dsn)
    assert "secret" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# The file: created on first use, owner-only, with a schema version.


def file_modes(db_path: Path) -> dict[str, int]:
    """The permission bits of the database file and of its -wal and -shm files."""
    return {
        suffix: stat.S_IMODE(os.stat(f"{db_path}{suffix}").st_mode)
        for suffix in ("", "-wal", "-shm")
    }


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_a_new_database_and_its_wal_files_are_owner_only(db_path, queue_name, umask):
    old_umask = os.umask(umask)
    try:
        client = Client(dsn_for(db_path))
        client.push(queue_name, "t", "payload")
        # While a connection is open: closing the last one removes the -wal and -shm files.
        modes = file_modes(db_path)
        client.close()
    finally:
        os.umask(old_umask)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


def test_an_existing_database_file_keeps_its_mode(db_path, queue_name):
    db_path.touch()
    db_path.chmod(0o640)
    client = Client(dsn_for(db_path))
    client.push(queue_name, "t", "payload")
    assert file_modes(db_path) == {"": 0o640, "-wal": 0o640, "-shm": 0o640}
    client.close()


def test_tables_are_created_on_first_use_with_a_schema_version(db_path, queue_name):
    assert not db_path.exists()
    client = Client(dsn_for(db_path))
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    names = {name for (name,) in rows(db_path, "SELECT name FROM sqlite_master")}
    assert {
        "alligator_tasks",
        "alligator_tasks_by_state",
        "alligator_tasks_by_due",
        "alligator_results",
        "alligator_results_by_expiry",
        "alligator_tasks_forget_outcome",
        "alligator_waiters",
        "alligator_waiters_by_task",
        "alligator_waiters_by_held",
    } <= names
    client.push(queue_name, "t", "kept")
    client.close()
    # A second client on the same file keeps what is there.
    again = Client(dsn_for(db_path))
    assert again.reserve(queue_name, CONSUMER).data == "kept"
    again.close()


def test_processes_creating_the_file_at_once(db_path, tmp_path, queue_name):
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from alligator.backends.sqlite_backend import Client\n"
        "dsn, queue, go = sys.argv[1:4]\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(go):\n"
        "    time.sleep(0.002)\n"
        "Client(dsn).push(queue, str(os.getpid()), 'hello')\n"
    )
    processes = [
        run_python(code, dsn_for(db_path), queue_name, str(go), stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    for process in processes:
        process.communicate(timeout=30)
        assert process.returncode == 0
    client = Client(dsn_for(db_path))
    assert client.len(queue_name) == 4
    assert rows(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    # Whichever process made the file, it made it owner-only.
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    client.close()


def test_a_newer_schema_version_is_refused(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BackendError) as caught:
        Client(dsn_for(db_path))
    message = str(caught.value)
    assert "schema version 99" in message and "upgrade Alligator" in message
    assert "\n" not in message
    # Left as it was.
    assert rows(db_path, "SELECT name FROM sqlite_master") == []


# The schema of version 1, as Alligator wrote it before it counted deaths.
SCHEMA_V1 = (
    """CREATE TABLE alligator_tasks (
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
    "CREATE INDEX alligator_tasks_by_state ON alligator_tasks (queue, state, seq)",
    "CREATE INDEX alligator_tasks_by_due ON alligator_tasks (queue, due) WHERE state = 'delayed'",
    "PRAGMA user_version = 1",
)


def test_a_version_1_file_is_upgraded_in_place(db_path, queue_name):
    conn = sqlite3.connect(db_path)
    for statement in SCHEMA_V1:
        conn.execute(statement)
    insert = (
        "INSERT INTO alligator_tasks (queue, task_id, data, state, consumer_id, expires, "
        "error, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    conn.execute(insert, (queue_name, "running", "p0", "inflight", CONSUMER, 1e12, None, None))
    conn.execute(insert, (queue_name, "waiting", "p1", "ready", None, None, None, None))
    conn.execute(insert, (queue_name, "dead", "p2", "dead", None, None, "boom", 1.0))
    conn.commit()
    conn.close()

    client = Client(dsn_for(db_path))
    assert SCHEMA_VERSION == 4
    assert rows(db_path, "PRAGMA user_version") == [(4,)]
    columns = {
        name: (kind, notnull, default)
        for _, name, kind, notnull, default, _ in rows(
            db_path, "PRAGMA table_info(alligator_tasks)"
        )
    }
    assert columns["deaths"] == ("INTEGER", 1, "0")
    assert columns["last_death"] == ("TEXT", 0, None)
    # Every task is still there, with no deaths counted.
    assert rows(
        db_path, "SELECT task_id, state, deaths, last_death FROM alligator_tasks ORDER BY seq"
    ) == [
        ("running", "inflight", 0, None),
        ("waiting", "ready", 0, None),
        ("dead", "dead", 0, None),
    ]
    reserved = client.reserve(queue_name, "other")
    assert reserved == Reserved("waiting", "p1", 0, "")
    assert client.list_dead_letters(queue_name)[0].error == "boom"
    # The task a version-1 worker held when it died counts that death.
    assert client.requeue_inflight(queue_name, CONSUMER, death="pid 1 killed by SIGKILL") == 1
    assert client.reserve(queue_name, "other") == Reserved(
        "running", "p0", 1, "pid 1 killed by SIGKILL"
    )
    client.close()
    # Opened again, it is left as it is.
    again = Client(dsn_for(db_path))
    assert rows(db_path, "PRAGMA user_version") == [(4,)]
    assert again.len(queue_name) == 0
    again.close()


# The schema of version 2, as Alligator wrote it before it kept outcomes.
SCHEMA_V2 = (
    *SCHEMA_V1[:-1],
    "ALTER TABLE alligator_tasks ADD COLUMN deaths INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE alligator_tasks ADD COLUMN last_death TEXT",
    "PRAGMA user_version = 2",
)


def test_a_version_2_file_is_upgraded_in_place(db_path, queue_name):
    conn = sqlite3.connect(db_path)
    for statement in SCHEMA_V2:
        conn.execute(statement)
    insert = (
        "INSERT INTO alligator_tasks (queue, task_id, data, state, consumer_id, expires, "
        "error, failed_at, deaths, last_death) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    conn.execute(
        insert, (queue_name, "running", "p0", "inflight", CONSUMER, 1e12, None, None, 1, "oom")
    )
    conn.execute(insert, (queue_name, "waiting", "p1", "ready", None, None, None, None, 0, None))
    conn.execute(insert, (queue_name, "dead", "p2", "dead", None, None, "boom", 1.0, 0, None))
    conn.commit()
    conn.close()
    tasks = "SELECT task_id, data, state, deaths, last_death FROM alligator_tasks ORDER BY seq"
    before = rows(db_path, tasks)

    client = Client(dsn_for(db_path))
    assert rows(db_path, "PRAGMA user_version") == [(4,)]
    columns = {
        name: (kind, notnull, pk)
        for _, name, kind, notnull, _, pk in rows(db_path, "PRAGMA table_info(alligator_results)")
    }
    assert columns == {
        "queue": ("TEXT", 1, 1),
        "task_id": ("TEXT", 1, 2),
        "record": ("TEXT", 1, 0),
        "expires": ("REAL", 0, 0),
    }
    assert dict(rows(db_path, "SELECT name, type FROM sqlite_master")) == {
        "alligator_tasks": "table",
        "alligator_tasks_by_state": "index",
        "alligator_tasks_by_due": "index",
        "alligator_results": "table",
        "alligator_results_by_expiry": "index",
        "alligator_tasks_forget_outcome": "trigger",
        "alligator_waiters": "table",
        "alligator_waiters_by_task": "index",
        "alligator_waiters_by_held": "index",
        # The automatic indexes of the UNIQUE constraint and of the primary key.
        "sqlite_autoindex_alligator_tasks_1": "index",
        "sqlite_autoindex_alligator_results_1": "index",
    }
    # Every task is still there, as it was.
    assert rows(db_path, tasks) == before
    # The tasks of version 2 end with their outcomes kept, like any other.
    assert client.locate(queue_name, "waiting") == Located(READY, "p1")
    assert client.locate(queue_name, "dead") == Located(DEAD, "p2")
    client.ack(queue_name, "running", CONSUMER, Outcome('{"status":1}', 60))
    assert client.locate(queue_name, "running") == Located(FINISHED, '{"status":1}')
    client.push(queue_name, "running", "p3")  # and the trigger forgets it
    assert client.result(queue_name, "running") is None
    client.close()
    # Opened again, it is left as it is.
    again = Client(dsn_for(db_path))
    assert rows(db_path, "PRAGMA user_version") == [(4,)]
    assert again.len(queue_name) == 2
    again.close()


# The schema of version 3, as Alligator wrote it before it kept dependencies.
SCHEMA_V3 = (
    *SCHEMA_V2[:-1],
    """CREATE TABLE alligator_results (
        queue TEXT NOT NULL,
        task_id TEXT NOT NULL,
        record TEXT NOT NULL,
        expires REAL,
        PRIMARY KEY (queue, task_id)
    )""",
    "CREATE INDEX alligator_results_by_expiry ON alligator_results (expires) "
    "WHERE expires IS NOT NULL",
    """CREATE TRIGGER alligator_tasks_forget_outcome AFTER INSERT ON alligator_tasks
        BEGIN
            DELETE FROM alligator_results WHERE queue = NEW.queue AND task_id = NEW.task_id;
        END""",
    "PRAGMA user_version = 3",
)


def test_a_version_3_file_is_upgraded_in_place(db_path, queue_name):
    conn = sqlite3.connect(db_path)
    for statement in SCHEMA_V3:
        conn.execute(statement)
    running = (7, queue_name, "running", "p1", "inflight", None, CONSUMER, 1e12)
    conn.executemany(
        "INSERT INTO alligator_tasks (seq, queue, task_id, data, state, due, consumer_id, "
        "expires, error, failed_at, deaths, last_death) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?)",
        [
            (-3, queue_name, "requeued", "p0", "ready", None, None, None, None, None, 2, "oom"),
            (*running, None, None, 0, None),
            (8, queue_name, "later", "p2", "delayed", 4e9, None, None, None, None, 0, None),
            (9, queue_name, "dead", "p3", "dead", None, None, None, "boom", 1.0, 0, None),
            (10, queue_name, b"\xff", "p4", "ready", None, None, None, None, None, 0, None),
        ],
    )
    # A dead letter keeps its outcome; another task finished with one.
    conn.executemany(
        "INSERT INTO alligator_results VALUES (?, ?, ?, ?)",
        [(queue_name, "dead", '{"status":2}', None), (queue_name, "done", '{"status":1}', None)],
    )
    conn.commit()
    conn.close()
    tasks = (
        "SELECT seq, queue, task_id, typeof(task_id), data, state, due, consumer_id, expires, "
        "error, failed_at, deaths, last_death FROM alligator_tasks ORDER BY seq"
    )
    outcomes = "SELECT * FROM alligator_results ORDER BY task_id"
    before, kept = rows(db_path, tasks), rows(db_path, outcomes)

    client = Client(dsn_for(db_path))
    assert rows(db_path, "PRAGMA user_version") == [(4,)]
    # Every row is copied as it was, its place in the queue and its BLOB id too, and the
    # copy forgot no outcome.
    assert rows(db_path, tasks) == before
    assert rows(db_path, outcomes) == kept
    columns = {
        name: (kind, notnull)
        for _, name, kind, notnull, _, _ in rows(db_path, "PRAGMA table_info(alligator_tasks)")
    }
    assert columns["pending"] == ("INTEGER", 0) and columns["cancel_ttl"] == ("REAL", 0)
    assert columns["deaths"] == ("INTEGER", 1)
    assert dict(rows(db_path, "SELECT name, type FROM sqlite_master")) == {
        "alligator_tasks": "table",
        "alligator_tasks_by_state": "index",
        "alligator_tasks_by_due": "index",
        "alligator_results": "table",
        "alligator_results_by_expiry": "index",
        "alligator_tasks_forget_outcome": "trigger",
        "alligator_waiters": "table",
        "alligator_waiters_by_task": "index",
        "alligator_waiters_by_held": "index",
        "sqlite_autoindex_alligator_tasks_1": "index",
        "sqlite_autoindex_alligator_results_1": "index",
    }
    # The tasks of version 3 carry on, and new ones may wait for them.
    deps = Dependencies(((queue_name, "running"), (queue_name, "done")), 60)
    client.push(queue_name, "after", "p5", depends_on=deps)
    assert client.locate(queue_name, "after") == Located(HELD, "p5")
    assert client.reserve(queue_name, "other") == Reserved("requeued", "p0", 2, "oom")
    client.ack(queue_name, "running", CONSUMER)
    assert client.reserve(queue_name, "other").task_id == as_text(b"\xff")
    assert client.reserve(queue_name, "other").task_id == "after"
    assert client.result(queue_name, "dead") == '{"status":2}'
    client.push(queue_name, "done", "again")  # and the trigger forgets its outcome
    assert client.result(queue_name, "done") is None
    client.close()
    again = Client(dsn_for(db_path))
    assert rows(db_path, "PRAGMA user_version") == [(4,)]
    assert again.len(queue_name) == 2  # "later" and "done"
    again.close()


def test_missing_directory_is_named_and_not_created(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InvalidDSNError) as caught:
        Client(dsn_for(missing / "queue.db"))
    assert f"{str(missing)!r} for the SQLite database" in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert not missing.exists()


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(BackendError) as caught:
        Client(dsn_for(path))
    assert str(caught.value).startswith(f"{str(path)!r} is not an SQLite database")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert path.read_text().startswith("these are my notes")


def test_a_directory_where_the_file_should_be(tmp_path):
    (tmp_path / "queue.db").mkdir()
    with pytest.raises(BackendError, match="Cannot open the SQLite database") as caught:
        Client(dsn_for(tmp_path / "queue.db"))
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


# Locking: WAL and the busy timeout.


def test_wal_mode(client, db_path):
    assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]


def hold_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_write_waits_for_another_writer(client, db_path, queue_name):
    other = hold_write_lock(db_path)
    release = threading.Timer(0.3, other.execute, ["COMMIT"])
    started = time.monotonic()
    release.start()
    client.push(queue_name, "t", "waited")
    assert time.monotonic() - started >= 0.25
    assert client.len(queue_name) == 1
    release.join()
    other.close()


def test_a_lock_held_beyond_busy_timeout_is_a_backend_error(db_path, queue_name):
    client = Client(dsn_for(db_path, busy_timeout=0.2))
    other = hold_write_lock(db_path)
    started = time.monotonic()
    with pytest.raises(BackendError, match="busy_timeout=0.2s") as caught:
        client.push(queue_name, "t", "blocked")
    assert time.monotonic() - started < 3  # the option, not sqlite3's default of 5 s
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    # With WAL, reads go on while another connection writes.
    assert client.len(queue_name) == 0
    assert client.reserve(queue_name, CONSUMER) is None
    other.execute("ROLLBACK")
    other.close()
    # The client recovers once the lock is gone.
    client.push(queue_name, "t", "through")
    assert client.reserve(queue_name, CONSUMER).data == "through"
    client.close()


# Order, delays, task ids, settling.

# Both ways ``reserve`` can claim: one UPDATE … RETURNING, or a SELECT then an UPDATE in a
# transaction (what SQLite before 3.35 gets).
CLAIMS = pytest.mark.parametrize(
    "returning", [HAS_RETURNING, False], ids=["this-sqlite", "without-returning"]
)


@CLAIMS
def test_a_due_task_joins_the_back_of_the_queue_even_while_busy(
    client, queue_name, monkeypatch, returning
):
    monkeypatch.setattr(sqlite_backend, "HAS_RETURNING", returning)
    due = time.time() + 0.3
    client.push(queue_name, "later", "delayed", delay_until=due)
    client.push(queue_name, "a", "ready")
    client.push(queue_name, "b", "ready")
    assert client.reserve(queue_name, CONSUMER).task_id == "a"  # the queue is busy now
    wait_for(lambda: time.time() > due + 0.05, message="the delay to pass")
    # Pushed before "b", but ready only now: it queues behind "b", and is ahead of
    # whatever is pushed after a reserve found it due.
    assert client.reserve(queue_name, CONSUMER).task_id == "b"
    client.push(queue_name, "c", "ready")
    taken = [client.reserve(queue_name, CONSUMER).task_id for _ in range(2)]
    assert taken == ["later", "c"]


def test_a_delayed_task_is_picked_up_when_due_not_a_poll_interval_later(client, queue_name):
    # Idle looks back off to 0.64 s, then 1.28 s apart: without looking again right when
    # the task falls due, it would be taken about a second late.
    due = time.time() + 1.6
    client.push(queue_name, "t", "delayed", delay_until=due)
    reserved = client.reserve(queue_name, CONSUMER, timeout=10, poll_interval=3.0)
    taken_at = time.time()
    assert reserved.task_id == "t"
    assert due <= taken_at < due + 0.5


def test_a_retried_task_joins_the_back_or_waits_for_its_due_time(client, db_path, queue_name):
    for task_id in ("a", "b"):
        client.push(queue_name, task_id, "first try")
    client.reserve(queue_name, CONSUMER)
    client.retry(queue_name, "a", CONSUMER, "second try")
    taken = [client.reserve(queue_name, CONSUMER) for _ in range(2)]
    assert [(r.task_id, r.data) for r in taken] == [("b", "first try"), ("a", "second try")]

    due = time.time() + 60
    client.retry(queue_name, "a", CONSUMER, "third try", delay_until=due)
    assert rows(
        db_path, "SELECT state, due, data, consumer_id FROM alligator_tasks WHERE task_id = 'a'"
    ) == [("delayed", due, "third try", None)]


def test_a_duplicate_id_is_refused_and_changes_nothing(client, db_path, queue_name):
    client.push(queue_name, "a", "first")
    client.push(queue_name, "b", "second")
    client.reserve(queue_name, CONSUMER)
    everything = "SELECT * FROM alligator_tasks ORDER BY seq"
    before = rows(db_path, everything)
    with pytest.raises(DuplicateTaskError) as caught:
        client.push(queue_name, "b", "again", delay_until=time.time() + 60)
    assert str(caught.value) == (
        f"Queue {queue_name!r} already holds a task with id 'b' (waiting, held, in flight "
        "or dead); give the new task an id of its own."
    )
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    # A dead letter for a task that was never reserved (no consumer) is a new row too.
    with pytest.raises(DuplicateTaskError):
        client.add_dead_letter(queue_name, "a", "first", "boom")
    assert rows(db_path, everything) == before


def test_a_dead_letter_without_a_consumer_is_stored_once(client, queue_name):
    client.add_dead_letter(queue_name, "never-queued", "payload", "InvalidTaskError: bad")
    with pytest.raises(DuplicateTaskError):
        client.add_dead_letter(queue_name, "never-queued", "other", "again")
    dead = client.list_dead_letters(queue_name)
    assert [(d.task_id, d.data, d.error) for d in dead] == [
        ("never-queued", "payload", "InvalidTaskError: bad")
    ]


def test_a_stale_consumer_leaves_the_new_holders_row_untouched(client, db_path, queue_name):
    client.push(queue_name, "t", "data")
    client.reserve(queue_name, CONSUMER)
    client.requeue_inflight(queue_name, CONSUMER)
    client.reserve(queue_name, "new-holder")
    everything = "SELECT * FROM alligator_tasks"
    before = rows(db_path, everything)
    client.retry(queue_name, "t", CONSUMER, "changed", delay_until=time.time() + 60)
    client.add_dead_letter(queue_name, "t", "changed", "boom", CONSUMER)
    client.ack(queue_name, "t", CONSUMER)
    assert rows(db_path, everything) == before  # same seq, state, holder and lease


@CLAIMS
def test_every_claim_reads_the_deaths_with_the_row(
    client, db_path, queue_name, monkeypatch, returning
):
    monkeypatch.setattr(sqlite_backend, "HAS_RETURNING", returning)
    for task_id in ("a", "b", "c"):
        client.push(queue_name, task_id, "payload")
        client.reserve(queue_name, CONSUMER)
    assert client.reserve(queue_name, CONSUMER) is None  # the queue is idle again
    assert client.requeue_inflight(queue_name, CONSUMER, death="pid 1: killed by SIGKILL") == 3
    assert client.requeue_inflight(queue_name, CONSUMER, death="never held a thing") == 0
    assert rows(db_path, "SELECT DISTINCT deaths, last_death FROM alligator_tasks") == [
        (1, "pid 1: killed by SIGKILL")
    ]
    # The idle path (a look, then a claim), then the busy one (a claim without a look).
    taken = [client.reserve(queue_name, CONSUMER) for _ in range(2)]
    assert [(r.task_id, r.deaths, r.last_death) for r in taken] == [
        ("a", 1, "pid 1: killed by SIGKILL"),
        ("b", 1, "pid 1: killed by SIGKILL"),
    ]
    assert client.get(queue_name, "c", CONSUMER).deaths == 1
    # A retry and a dead letter leave no count in the row.
    client.retry(queue_name, "a", CONSUMER, "again")
    client.add_dead_letter(queue_name, "b", "payload", "boom", CONSUMER)
    assert rows(
        db_path,
        "SELECT task_id, deaths, last_death FROM alligator_tasks WHERE task_id != 'c' "
        "ORDER BY task_id",
    ) == [("a", 0, None), ("b", 0, None)]


def test_requeue_named_dead_letters_oldest_first(client, queue_name):
    for task_id in ("a", "b", "c"):
        client.push(queue_name, task_id, task_id)
        client.reserve(queue_name, CONSUMER)
        client.add_dead_letter(queue_name, task_id, task_id, "boom", CONSUMER)
    assert client.requeue_dead_letters(queue_name, ["c", "a", "c", "missing"]) == 2
    assert [d.task_id for d in client.list_dead_letters(queue_name)] == ["b"]
    taken = [client.reserve(queue_name, CONSUMER).task_id for _ in range(2)]
    assert taken == ["a", "c"]


# Bytes that are not UTF-8, written into the file by another program.
RAW_TASKS = [(b"id-\xc3\x28", b'\xff\xfe{"callable": "\x80"}'), (b"id-\xff", b"\x80")]


def as_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@CLAIMS
@pytest.mark.parametrize("stored_as", ["TEXT", "BLOB"])
def test_bytes_that_are_not_utf8_round_trip(
    client, db_path, queue_name, monkeypatch, returning, stored_as
):
    # As TEXT, sqlite3 cannot read such bytes by default; a BLOB it reads as bytes.
    monkeypatch.setattr(sqlite_backend, "HAS_RETURNING", returning)
    value = "CAST(? AS TEXT)" if stored_as == "TEXT" else "?"
    conn = sqlite3.connect(db_path)
    conn.executemany(
        "INSERT INTO alligator_tasks (queue, task_id, data, state) "
        f"VALUES (?, {value}, {value}, 'ready')",
        [(queue_name, raw_id, payload) for raw_id, payload in RAW_TASKS],
    )
    conn.commit()
    conn.close()
    expected = [Reserved(as_text(raw_id), as_text(payload)) for raw_id, payload in RAW_TASKS]

    # The first by a look and a claim, the second by the busy queue's claim.
    reserved = [client.reserve(queue_name, CONSUMER) for _ in expected]
    assert reserved == expected
    for task in reserved:
        client.add_dead_letter(queue_name, task.task_id, task.data, "undecodable", CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    dead = client.list_dead_letters(queue_name)
    assert [(d.task_id, d.data, d.error) for d in dead] == [
        (task.task_id, task.data, "undecodable") for task in expected
    ]
    assert client.requeue_dead_letters(queue_name, [expected[0].task_id]) == 1
    assert client.requeue_dead_letters(queue_name) == 1
    stored = "SELECT CAST(task_id AS BLOB), CAST(data AS BLOB), state FROM alligator_tasks"
    assert sorted(rows(db_path, stored)) == sorted((*raw, "ready") for raw in RAW_TASKS)

    first = expected[0]
    assert client.reserve(queue_name, CONSUMER) == first
    client.retry(queue_name, first.task_id, CONSUMER, first.data)
    assert client.get(queue_name, first.task_id, CONSUMER) == first
    client.ack(queue_name, first.task_id, CONSUMER)
    assert client.cancel(queue_name, expected[1].task_id) == expected[1].data
    assert client.len(queue_name) == 0 and client.requeue_inflight(queue_name, CONSUMER) == 0

    client.push(queue_name, first.task_id, first.data)
    assert rows(db_path, stored) == [(*RAW_TASKS[0], "ready")]
    assert client.reserve(queue_name, CONSUMER) == first


# Polling, and the hot path of a busy queue.


class LookCountingClient(Client):
    """The real backend, noting when ``reserve`` looks at the queue."""

    def __init__(self, conn_string: str) -> None:
        super().__init__(conn_string)
        self.looks: list[float] = []

    def _peek(self, queue_name):
        self.looks.append(time.monotonic())
        return super()._peek(queue_name)


def gaps(looks: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(looks, looks[1:], strict=False)]


def test_idle_polling_starts_short_and_backs_off_to_poll_interval(db_path, queue_name):
    client = LookCountingClient(dsn_for(db_path))
    assert client.reserve(queue_name, CONSUMER, timeout=1.0, poll_interval=0.1) is None
    first_call = gaps(client.looks)
    # A few milliseconds apart at first (5, 10, 20 ms), doubling...
    assert first_call[0] < 0.05 and sum(first_call[:3]) < 0.1
    # ...up to poll_interval, never longer (give or take the sleep's slack).
    assert max(first_call) < 0.18
    assert 6 <= len(client.looks) <= 20  # not a busy loop: ~10 looks a second

    # Still idle: the next call keeps looking every poll_interval.
    client.looks.clear()
    assert client.reserve(queue_name, CONSUMER, timeout=0.5, poll_interval=0.1) is None
    assert min(gaps(client.looks)) >= 0.09
    assert len(client.looks) <= 7

    # Once work was seen, the next idle call looks again within a few milliseconds.
    client.push(queue_name, "t", "work")
    assert client.reserve(queue_name, CONSUMER, timeout=1.0, poll_interval=0.1) is not None
    client.looks.clear()
    assert client.reserve(queue_name, CONSUMER, timeout=0.3, poll_interval=0.1) is None
    assert gaps(client.looks)[0] < 0.05
    client.close()


def test_a_shorter_poll_interval_takes_effect_at_once(db_path, queue_name):
    client = LookCountingClient(dsn_for(db_path))
    assert client.reserve(queue_name, CONSUMER, timeout=0.4, poll_interval=3.0) is None
    client.looks.clear()
    assert client.reserve(queue_name, CONSUMER, timeout=0.3, poll_interval=0.1) is None
    assert gaps(client.looks)[0] < 0.18
    client.close()


def test_an_idle_reserve_picks_up_a_new_task_quickly(db_path, queue_name):
    client = LookCountingClient(dsn_for(db_path))
    producer = Client(dsn_for(db_path))
    result = {}

    def consume():
        result["task"] = client.reserve(queue_name, CONSUMER, timeout=10, poll_interval=0.1)
        result["at"] = time.monotonic()

    consumer = threading.Thread(target=consume)
    consumer.start()
    # Idle long enough to have backed off all the way.
    wait_for(lambda: len(client.looks) >= 12, message="the reserve to back off")
    pushed_at = time.monotonic()
    producer.push(queue_name, "t", "hello")
    consumer.join(15)
    assert result["task"].data == "hello"
    assert result["at"] - pushed_at < 0.5  # about poll_interval; never the timeout
    client.close()
    producer.close()


@CLAIMS
def test_a_busy_queue_is_drained_without_looking_first(
    db_path, queue_name, monkeypatch, returning
):
    monkeypatch.setattr(sqlite_backend, "HAS_RETURNING", returning)
    client = LookCountingClient(dsn_for(db_path))
    for n in range(20):
        client.push(queue_name, f"t{n}", "x")
    taken = []
    while (reserved := client.reserve(queue_name, CONSUMER)) is not None:
        taken.append(reserved.task_id)
        client.ack(queue_name, reserved.task_id, CONSUMER)
    assert taken == [f"t{n}" for n in range(20)]
    # One look to find the work, one to find the queue empty again; none in between.
    assert len(client.looks) == 2
    # Idle now: the next reserve looks before it takes the write lock.
    client.push(queue_name, "t20", "x")
    assert client.reserve(queue_name, CONSUMER).task_id == "t20"
    assert len(client.looks) == 3
    client.close()


@CLAIMS
def test_push_ack_and_a_busy_reserve_are_one_statement_each(
    client, queue_name, monkeypatch, returning
):
    monkeypatch.setattr(sqlite_backend, "HAS_RETURNING", returning)
    client.push(queue_name, "first", "x")
    client.reserve(queue_name, CONSUMER)  # the queue is busy from here on
    statements: list[str] = []
    with client._connection() as conn:
        conn.set_trace_callback(statements.append)
    client.push(queue_name, "second", "x")
    client.ack(queue_name, "first", CONSUMER)
    assert client.reserve(queue_name, CONSUMER).task_id == "second"
    # Without UPDATE … RETURNING the claim is a transaction, but still without a look first.
    claim = ["UPDATE"] if returning else ["BEGIN", "SELECT", "SELECT", "UPDATE", "COMMIT"]
    assert executed(statements) == ["INSERT", "DELETE", *claim]


def executed(statements: list[str]) -> list[str]:
    """
    The first word of each statement a client ran, from a trace. SQLite traces the trigger
    that runs within a push (it forgets the id's old outcome), and each statement of the
    trigger, under the push's own text: those repeats are not statements the client ran.
    """
    return [
        statement.split()[0]
        for at, statement in enumerate(statements)
        if at == 0 or statement != statements[at - 1]
    ]


# Outcomes: kept in the transaction that ends a task, swept lazily, waited for by polling.


def test_an_outcome_costs_one_transaction_and_locate_one_read(client, queue_name):
    client.push(queue_name, "a", "x")
    client.push(queue_name, "b", "x")
    client.reserve(queue_name, CONSUMER)
    client.reserve(queue_name, CONSUMER)
    statements: list[str] = []
    with client._connection() as conn:
        conn.set_trace_callback(statements.append)
    kept = ["BEGIN", "DELETE", "INSERT", "COMMIT"]  # the sweep's DELETE, then the outcome

    client.ack(queue_name, "a", CONSUMER, Outcome('{"status":1}', 60))
    assert executed(statements) == ["BEGIN", "DELETE", *kept[1:]]
    statements.clear()
    client.ack(queue_name, "b", "not-its-holder", Outcome('{"status":1}', 60))
    # Nothing to keep (the second DELETE is the one without the look at the waiters).
    assert executed(statements) == ["BEGIN", "DELETE", "DELETE", "COMMIT"]
    statements.clear()
    client.add_dead_letter(queue_name, "b", "x", "boom", CONSUMER, Outcome('{"status":2}', 60))
    assert executed(statements) == ["BEGIN", "UPDATE", *kept[1:]]
    statements.clear()
    assert client.finish(queue_name, "elsewhere", True, Outcome('{"status":1}', 60)) == []
    assert executed(statements) == [*kept[:-1], "SELECT", "COMMIT"]  # and the waiters
    statements.clear()
    assert client.locate(queue_name, "a") == Located(FINISHED, '{"status":1}')
    assert client.locate(queue_name, "b") == Located(DEAD, "x")
    assert client.result(queue_name, "a") == '{"status":1}'
    assert executed(statements) == ["SELECT", "SELECT", "SELECT"]
    # A push forgets an old outcome within its one statement, and a requeue within its
    # transaction.
    statements.clear()
    client.push(queue_name, "a", "again")
    assert client.requeue_dead_letters(queue_name, ["b"]) == 1
    assert executed(statements) == ["INSERT", "BEGIN", "SELECT", "DELETE", "UPDATE", "COMMIT"]
    with client._connection() as conn:
        conn.set_trace_callback(None)
    assert client.result(queue_name, "a") is None and client.result(queue_name, "b") is None


def outcome_rows(path: Path, queue_name: str) -> list[tuple]:
    return rows(
        path,
        "SELECT task_id, record FROM alligator_results WHERE queue = ? ORDER BY task_id",
        queue_name,
    )


def task_rows(path: Path, queue_name: str) -> list[tuple]:
    return rows(
        path,
        "SELECT task_id, state, consumer_id FROM alligator_tasks WHERE queue = ? ORDER BY seq",
        queue_name,
    )


ENDS_A_TASK = """
import os, signal, sys
from alligator.backends import Outcome
from alligator.backends.sqlite_backend import Client
dsn, queue, operation, consumer, kill_at = sys.argv[1:6]
client = Client(dsn)
started = []

def trace(statement):
    # Dies as the kill_at-th statement starts: what ran before it is all that ran.
    started.append(statement)
    if len(started) == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

with client._connection() as conn:
    conn.set_trace_callback(trace)
outcome = Outcome('{"status":1}', 60)
if operation == "ack":
    client.ack(queue, "t", consumer, outcome)
elif operation == "add_dead_letter":
    client.add_dead_letter(queue, "t", "payload", "boom", consumer, outcome)
else:
    client.cancel(queue, "t", outcome)
"""


@pytest.mark.parametrize("operation", ["ack", "add_dead_letter", "cancel"])
def test_a_task_ends_and_its_outcome_is_kept_together_or_not_at_all(
    client, db_path, queue_name, operation
):
    client.push(queue_name, "t", "payload")
    if operation != "cancel":
        client.reserve(queue_name, CONSUMER)
    before = task_rows(db_path, queue_name)
    after = [("t", "dead", None)] if operation == "add_dead_letter" else []
    # BEGIN, (cancel: the look for the task), the task's change, the sweep, the outcome,
    # COMMIT.
    statements = 6 if operation == "cancel" else 5
    # A process that ends the task is killed as its 1st, 2nd, ... statement starts, until
    # one run is not killed. Read by another program, the file shows either the task as it
    # was and no outcome, or the task ended and its outcome: never one without the other.
    for kill_at in range(1, statements + 2):
        process = run_python(
            ENDS_A_TASK, dsn_for(db_path), queue_name, operation, CONSUMER, str(kill_at)
        )
        if process.wait(timeout=30) == 0:
            break
        assert process.returncode == -signal.SIGKILL
        assert task_rows(db_path, queue_name) == before
        assert outcome_rows(db_path, queue_name) == []
    assert (kill_at, process.returncode) == (statements + 1, 0)  # killed at each statement
    assert task_rows(db_path, queue_name) == after
    assert outcome_rows(db_path, queue_name) == [("t", '{"status":1}')]


def test_each_store_sweeps_a_few_expired_outcomes_by_the_index(client, db_path, queue_name):
    # A backlog of expired outcomes, as stores that stopped long ago leave, and two alive.
    conn = sqlite3.connect(db_path)
    conn.executemany(
        "INSERT INTO alligator_results (queue, task_id, record, expires) VALUES (?, ?, ?, ?)",
        [(queue_name, f"old{n:03}", "{}", 1000.0 + n) for n in range(100)]
        + [(queue_name, "alive", "{}", time.time() + 3600), (queue_name, "forever", "{}", None)],
    )
    conn.commit()
    conn.close()
    expired = "SELECT task_id FROM alligator_results WHERE expires <= ? ORDER BY expires"

    client.finish(queue_name, "new0", True, Outcome("{}", 3600))
    # The oldest SWEEP_LIMIT went, no more: a store's cost does not grow with the backlog.
    assert [name for (name,) in rows(db_path, expired, time.time())] == [
        f"old{n:03}" for n in range(SWEEP_LIMIT, 100)
    ]
    for n in range(1, 100 // SWEEP_LIMIT + 1):
        client.finish(queue_name, f"new{n}", True, Outcome("{}", 3600))
    assert rows(db_path, expired, time.time()) == []
    assert client.result(queue_name, "alive") == "{}"
    assert client.result(queue_name, "forever") == "{}"
    assert len(outcome_rows(db_path, queue_name)) == 2 + 100 // SWEEP_LIMIT + 1

    # A stream of outcomes that expire at once never piles up, acked or stored.
    for n in range(50):
        client.push(queue_name, f"short{n}", "x")
        client.reserve(queue_name, CONSUMER)
        client.ack(queue_name, f"short{n}", CONSUMER, Outcome("{}", 0))
        client.finish(queue_name, f"stored{n}", True, Outcome("{}", 0))
        assert len(rows(db_path, expired, time.time())) <= 2

    # The sweep finds expired rows through the expiry index, in its order: no scan, no sort.
    plan = [
        detail for *_, detail in rows(db_path, f"EXPLAIN QUERY PLAN {sqlite_backend._SWEEP}", 0.0)
    ]
    assert any("USING COVERING INDEX alligator_results_by_expiry" in step for step in plan)
    assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), plan


def test_a_waiting_result_looks_again_at_growing_intervals(client, queue_name):
    looks: list[float] = []
    with client._connection() as conn:
        conn.set_trace_callback(lambda statement: looks.append(time.monotonic()))
    assert client.result(queue_name, "t", timeout=0.6) is None
    # A few milliseconds apart at first (5, 10, 20 ms), doubling up to 0.1 s: a dozen
    # looks in 0.6 s, not a busy loop.
    assert gaps(looks)[0] < 0.05 and sum(gaps(looks)[:3]) < 0.1
    assert max(gaps(looks)) < 0.18
    assert 6 <= len(looks) <= 15

    # With no timeout, it waits until the outcome is there, as long as that takes.
    looks.clear()
    threading.Timer(0.5, client.finish, (queue_name, "t", True, Outcome("{}", 60))).start()
    assert client.result(queue_name, "t", timeout=None) == "{}"
    with client._connection() as conn:
        conn.set_trace_callback(None)
    assert 6 <= len(looks) <= 20  # its looks, and the five statements of the finish


def test_outcomes_of_ids_that_are_not_utf8(client, db_path, queue_name):
    raw_id = RAW_TASKS[0][0]
    task_id = as_text(raw_id)
    client.push(queue_name, task_id, "payload")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, task_id, CONSUMER, Outcome('{"status":1}', 60))
    assert client.result(queue_name, task_id) == '{"status":1}'
    assert client.locate(queue_name, task_id) == Located(FINISHED, '{"status":1}')
    stored = "SELECT CAST(task_id AS BLOB), typeof(task_id) FROM alligator_results"
    assert rows(db_path, stored) == [(raw_id, "text")]
    client.push(queue_name, task_id, "again")  # the trigger matches the same bytes
    assert client.result(queue_name, task_id) is None
    assert client.locate(queue_name, task_id) == Located(READY, "again")

    # A dead letter another program stored under a BLOB id forgets its outcome too.
    blob_id = RAW_TASKS[1][0]
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO alligator_tasks (queue, task_id, data, state, error, failed_at) "
        "VALUES (?, ?, 'x', 'dead', 'boom', 1.0)",
        (queue_name, blob_id),
    )
    conn.commit()
    conn.close()
    client.finish(queue_name, as_text(blob_id), False, Outcome('{"status":2}', 60))
    assert client.requeue_dead_letters(queue_name) == 1
    assert client.result(queue_name, as_text(blob_id)) is None


# Dependencies: held rows, a table of waiters, and the ends that settle them.


def held_on(*dependencies, ttl=60.0, elsewhere=False) -> Dependencies:
    return Dependencies(tuple(dependencies), ttl, elsewhere)


def test_ending_a_task_nothing_waits_for_costs_no_statement_more(client, queue_name):
    for task_id in ("a", "b", "c"):
        client.push(queue_name, task_id, "x")
    client.push(queue_name, "held", "x", depends_on=held_on((queue_name, "c")))
    client.reserve(queue_name, CONSUMER)
    client.reserve(queue_name, CONSUMER)
    statements: list[str] = []
    with client._connection() as conn:
        conn.set_trace_callback(statements.append)
    client.ack(queue_name, "a", CONSUMER)
    client.add_dead_letter(queue_name, "b", "x", "boom", CONSUMER)
    client.add_dead_letter(queue_name, "never-queued", "x", "boom")
    assert executed(statements) == ["DELETE", "UPDATE", "INSERT"]
    # "c" has a task held on it: its ack looks (the DELETE that finds waiters and ends
    # nothing), then ends it and releases "held" in one transaction.
    client.reserve(queue_name, CONSUMER)
    statements.clear()
    client.ack(queue_name, "c", CONSUMER)
    ran = executed(statements)
    assert ran[:2] == ["DELETE", "BEGIN"] and ran[-1] == "COMMIT"
    assert "BEGIN" not in ran[2:] and "COMMIT" not in ran[:-1]
    assert client.locate(queue_name, "held").place == READY
    # A push with dependencies is one transaction.
    statements.clear()
    client.push(queue_name, "d", "x", depends_on=held_on((queue_name, "held")))
    ran = executed(statements)
    assert ran[0] == "BEGIN" and ran[-1] == "COMMIT" and "COMMIT" not in ran[:-1]
    with client._connection() as conn:
        conn.set_trace_callback(None)


def test_the_waiters_are_found_by_their_indexes(db_path, client):
    statements = {
        "the look of an ack": "DELETE FROM alligator_tasks "
        f"{sqlite_backend._IN_FLIGHT_WITH}{sqlite_backend._NOBODY_WAITS}",
        "the waiters of a task": sqlite_backend._WAITERS,
        "the waits of a held task": sqlite_backend._NO_WAITS,
    }
    for name, statement in statements.items():
        params = ["x"] * statement.count("?")
        plan = [detail for *_, detail in rows(db_path, f"EXPLAIN QUERY PLAN {statement}", *params)]
        assert any("INDEX alligator_waiters_by_" in step for step in plan), (name, plan)
        assert not any(step.startswith("SCAN") or "TEMP B-TREE" in step for step in plan), (
            name,
            plan,
        )


ENDS_A_WAITED_TASK = """
import os, signal, sys
from alligator.backends.sqlite_backend import Client
dsn, queue, operation, consumer, kill_at = sys.argv[1:6]
client = Client(dsn)
started = []

def trace(statement):
    started.append(statement)
    if len(started) == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)

with client._connection() as conn:
    conn.set_trace_callback(trace)
if operation == "ack":
    client.ack(queue, "a", consumer)
elif operation == "add_dead_letter":
    client.add_dead_letter(queue, "a", "payload", "boom", consumer)
elif operation == "cancel":
    client.cancel(queue, "a")
elif operation == "drop_all":
    client.drop_all(queue)
else:
    client.finish(queue, "a", False, None)
"""


def dependency_rows(path: Path) -> list[list[tuple]]:
    return [
        rows(path, "SELECT queue, task_id, state, pending FROM alligator_tasks ORDER BY seq"),
        rows(path, "SELECT queue, task_id FROM alligator_results ORDER BY queue, task_id"),
        rows(path, "SELECT * FROM alligator_waiters ORDER BY rowid"),
    ]


@pytest.mark.parametrize("operation", ["ack", "add_dead_letter", "cancel", "drop_all", "finish"])
def test_a_task_ends_with_the_tasks_held_on_it_settled_or_not_at_all(
    client, db_path, queue_name, operation
):
    other = queue_name + "-other"
    if operation == "finish":  # "a" lives in another backend
        deps = held_on((queue_name, "a"), elsewhere=True)
    else:
        client.push(queue_name, "a", "payload")
        deps = held_on((queue_name, "a"))
    client.push(queue_name, "b", "payload", depends_on=deps)
    client.push(other, "c", "payload", depends_on=held_on((queue_name, "b")))
    if operation in ("ack", "add_dead_letter"):
        client.reserve(queue_name, CONSUMER)
    before = dependency_rows(db_path)
    # Killed as its 1st, 2nd, ... statement starts, until one run is not: the file shows
    # the tasks as they were, or the end and everything it settles; nothing in between.
    for kill_at in range(1, 40):
        process = run_python(
            ENDS_A_WAITED_TASK, dsn_for(db_path), queue_name, operation, CONSUMER, str(kill_at)
        )
        if process.wait(timeout=30) == 0:
            break
        assert process.returncode == -signal.SIGKILL
        assert dependency_rows(db_path) == before, kill_at
    assert kill_at > 3  # it took a transaction
    tasks, outcomes, waiters = dependency_rows(db_path)
    if operation == "ack":
        # Released to the back: behind "c", pushed before its release.
        assert tasks == [(other, "c", "held", 1), (queue_name, "b", "ready", None)]
        assert outcomes == []
        assert waiters == [(queue_name, "b", other, "c")]
        return
    dead = [(queue_name, "a", "dead", None)] if operation == "add_dead_letter" else []
    assert tasks == dead and waiters == []
    canceled = [(other, "c")] if operation == "drop_all" else [(queue_name, "b"), (other, "c")]
    assert outcomes == sorted(canceled)
    # Named by the task whose end canceled it: "a", or "b" that drop_all dropped.
    ended = "b" if operation == "drop_all" else "a"
    record = json.loads(client.result(other, "c"))
    assert record["status"] == CANCELED and f"task {ended} of queue" in record["error"]


def test_a_held_task_canceled_leaves_no_waits_behind(client, db_path, queue_name):
    client.push(queue_name, "a", "x")
    client.push(queue_name, "x", "x")
    client.push(queue_name, "b", "first", depends_on=held_on((queue_name, "a")))
    assert client.cancel(queue_name, "b") == "first"
    assert rows(db_path, "SELECT count(*) FROM alligator_waiters") == [(0,)]
    # A new task under the id, held on something else, is not counted down by "a".
    client.push(queue_name, "b", "second", depends_on=held_on((queue_name, "x")))
    run_next(client, queue_name, "a")
    assert client.locate(queue_name, "b") == Located(HELD, "second")
    run_next(client, queue_name, "x")
    assert client.locate(queue_name, "b") == Located(READY, "second")
    assert rows(db_path, "SELECT count(*) FROM alligator_waiters") == [(0,)]


def run_next(client, queue_name, task_id):
    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved is not None and reserved.task_id == task_id
    client.ack(queue_name, task_id, CONSUMER)


def test_what_a_kept_outcome_says_of_a_dependency(client, queue_name):
    records = {
        "succeeded": '{"status":1}',
        "failed": '{"status":2,"error":"x"}',
        "canceled": '{"status":5,"error":"x"}',
        "odd": '{"status":3}',
        "garbled": "not json",
        "moved": '{"status":4,"moved_to":"succeeded"}',
        "circle1": '{"status":4,"moved_to":"circle2"}',
        "circle2": '{"status":4,"moved_to":"circle1"}',
    }
    for task_id, record in records.items():
        client.finish(queue_name, task_id, True, Outcome(record, 60))
    for task_id in ("succeeded", "moved"):
        client.push(queue_name, f"after-{task_id}", "x", depends_on=held_on((queue_name, task_id)))
        assert client.locate(queue_name, f"after-{task_id}").place == READY
    for task_id in ("failed", "canceled"):
        client.push(queue_name, f"after-{task_id}", "x", depends_on=held_on((queue_name, task_id)))
        record = json.loads(client.result(queue_name, f"after-{task_id}"))
        assert record["status"] == CANCELED and f"task {task_id} " in record["error"]
    # A record that says none of these is no news of the task: unknown, or waited for.
    for task_id in ("odd", "garbled"):
        with pytest.raises(UnknownTaskError, match=task_id):
            client.push(queue_name, "after", "x", depends_on=held_on((queue_name, task_id)))
        elsewhere = held_on((queue_name, task_id), elsewhere=True)
        client.push(queue_name, f"after-{task_id}", "x", depends_on=elsewhere)
        assert client.locate(queue_name, f"after-{task_id}").place == HELD
    # Pointers in a circle end the walk: the task waits.
    client.push(queue_name, "after-circle", "x", depends_on=held_on((queue_name, "circle1")))
    assert client.locate(queue_name, "after-circle").place == HELD
    assert client.locate(queue_name, "after") is None


def test_a_released_task_joins_the_back_or_its_delayed_tasks(client, queue_name):
    client.push(queue_name, "a", "x")
    soon = time.time() + 0.3
    client.push(queue_name, "late", "x", soon, depends_on=held_on((queue_name, "a")))
    client.push(queue_name, "now", "x", depends_on=held_on((queue_name, "a")))
    client.push(queue_name, "next", "x")
    run_next(client, queue_name, "a")
    assert client.locate(queue_name, "late").place == DELAYED
    assert client.locate(queue_name, "now").place == READY
    # Released after "next" was pushed, "now" comes after it; "late" when it is due.
    assert client.reserve(queue_name, CONSUMER).task_id == "next"
    assert client.reserve(queue_name, CONSUMER).task_id == "now"
    reserved = client.reserve(queue_name, CONSUMER, timeout=5)
    assert reserved.task_id == "late" and time.time() >= soon
    assert client.locate(queue_name, "late").place == INFLIGHT


# Concurrency: threads sharing a client, processes sharing a file, fork.


def test_threads_sharing_a_client_never_get_the_same_task(client, queue_name):
    expected = {f"t{n}" for n in range(400)}
    for task_id in sorted(expected):
        client.push(queue_name, task_id, "x")
    taken: list[list[str]] = [[] for _ in range(4)]

    def drain(mine: list[str]) -> None:
        while (reserved := client.reserve(queue_name, CONSUMER)) is not None:
            mine.append(reserved.task_id)
            client.ack(queue_name, reserved.task_id, CONSUMER)

    threads = [threading.Thread(target=drain, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    everything = [task_id for mine in taken for task_id in mine]
    assert len(everything) == len(expected)
    assert set(everything) == expected


DRAIN = """
import os, sys, time
from alligator.backends.sqlite_backend import Client
dsn, queue, go = sys.argv[1:4]
client = Client(dsn)
consumer = f"drainer:{os.getpid()}"
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
while (reserved := client.reserve(queue, consumer)) is not None:
    client.ack(queue, reserved.task_id, consumer)
    print(reserved.task_id)
"""


def test_processes_reserving_at_once_never_get_the_same_task(db_path, tmp_path, queue_name):
    client = Client(dsn_for(db_path))
    expected = [f"task-{n}" for n in range(1000)]
    for task_id in expected:
        client.push(queue_name, task_id, "x")
    go = tmp_path / "go"
    processes = [
        run_python(DRAIN, dsn_for(db_path), queue_name, str(go), stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    taken = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        taken.append(out.split())
    everything = [task_id for ids in taken for task_id in ids]
    assert sorted(everything) == sorted(expected)  # every id exactly once
    assert sum(1 for ids in taken if ids) >= 2  # they really did compete
    assert rows(db_path, "SELECT count(*) FROM alligator_tasks") == [(0,)]
    client.close()


def locked_inodes(pid: int) -> set[int]:
    """The inodes on which process ``pid`` holds POSIX locks, as the kernel sees them."""
    held = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "POSIX" and fields[4] == str(pid):
            held.add(int(fields[5].rsplit(":", 1)[1]))
    return held


def test_a_client_survives_fork(client, db_path, queue_name):
    client.push(queue_name, "from-parent", "x")  # the parent's connection is open
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.push(queue_name, "from-child", "y")
            taken = client.reserve(queue_name, "child-consumer")
            # The child's own connection takes real locks on the file and its shared
            # memory; one inherited from the parent would not.
            wanted = {os.stat(db_path).st_ino, os.stat(f"{db_path}-shm").st_ino}
            ok = taken.task_id == "from-parent" and wanted <= locked_inodes(os.getpid())
            code = 0 if ok else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.reserve(queue_name, CONSUMER).task_id == "from-child"
    assert os.stat(db_path).st_ino in locked_inodes(os.getpid())
