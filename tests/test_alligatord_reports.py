"""
What a worker tells its master: events on a pipe, every line checked, nothing else gets
through; and what it holds, on a board in shared memory, readable at any moment.
"""

import os
import select
import signal
import time

import pytest

from alligator.workers import DEATHS_PER_TASK
from supervisor.board import (
    BURY_PAYLOAD,
    HOLDING,
    ID_MAX,
    PAYLOAD_MAX,
    RETRY_PAYLOAD,
    RUNNING,
    TABLE_CAPACITY,
    Board,
    DeathTable,
    task_digest,
)
from supervisor.reports import Leaving, Ready, Refused, ReportError, ReportReader, decode

DIGEST = task_digest("emails", "a1b2")


def test_reports_travel_whole():
    reports = [Ready(), Leaving(), Refused(DIGEST)]
    data = b"".join(report.encode() for report in reports)
    assert ReportReader().feed(data) == reports
    # Split anywhere, they arrive the same.
    reader = ReportReader()
    assert [item for byte in range(len(data)) for item in reader.feed(data[byte : byte + 1])] == (
        reports
    )


@pytest.mark.parametrize(
    "line",
    [
        b'{"event":"refused"}',
        b'{"event":"refused","task":"xyz"}',
        b'{"event":"refused","task":7}',
        b'{"event":"ready","task":"' + DIGEST.hex().encode() + b'"}',
        b'{"event":"ready","extra":1}',
        b'{"event":"running","task":"x","func":"f","at":1}',
        b'{"event":"finished"}',
        b'["event","ready"]',
        b"null",
        b"not json at all",
        b"\xff\xfe",
    ],
)
def test_anything_else_is_a_report_error(line):
    with pytest.raises(ReportError):
        decode(line)
    assert all(isinstance(item, ReportError) for item in ReportReader().feed(line + b"\n"))


def test_stray_bytes_spoil_only_their_own_line():
    reader = ReportReader()
    # A task wrote half a line to the pipe; the worker's next report still gets through.
    items = reader.feed(b"garbage without an end" + Ready().encode())
    assert [type(item) for item in items] == [ReportError, Ready]


def test_a_line_that_never_ends_is_dropped_not_kept():
    reader = ReportReader(max_line=1000)
    errors = [item for _ in range(50) for item in reader.feed(b"x" * 300)]
    assert len(errors) == 1 and isinstance(errors[0], ReportError)
    assert len(reader._buffer) <= 1000
    # The end of the long line goes too; what follows it is read again.
    assert reader.feed(b"x" * 10 + Ready().encode()) == [Ready()]


def test_a_board_says_what_its_worker_holds_from_the_moment_it_took_it():
    board = Board()
    assert board.read() is None
    board.hold(DIGEST, "a1b2")
    held = board.read()
    assert (held.state, held.task_id, held.digest, held.func, held.payload) == (
        HOLDING,
        "a1b2",
        DIGEST,
        "",
        None,
    )
    assert held.phase == "before it could run it (at import or decode)"
    board.run("myapp.tasks.send", '{"retries":0}', RETRY_PAYLOAD)
    running = board.read()
    assert (running.state, running.func, running.payload, running.payload_kind) == (
        RUNNING,
        "myapp.tasks.send",
        '{"retries":0}',
        RETRY_PAYLOAD,
    )
    assert running.since == held.since  # a timeout counts from the moment it was taken
    board.idle()
    assert board.read() is None


def test_a_board_keeps_what_it_can():
    board = Board()
    long_id = "é" * ID_MAX
    board.hold(DIGEST, long_id)
    board.run("f", "x" * (PAYLOAD_MAX + 1), BURY_PAYLOAD)
    held = board.read()
    assert not held.complete_id and long_id.startswith(held.task_id)
    assert held.payload is None  # too long to keep: a timeout then counts a death instead
    board.hold(DIGEST, "bad-\udcff-bytes")  # ids with bytes that are not UTF-8 survive
    assert board.read().task_id == "bad-\udcff-bytes"


def test_a_board_is_shared_with_a_forked_worker():
    board = Board()
    pid = os.fork()
    if pid == 0:
        board.hold(DIGEST, "from the child")
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.read().task_id == "from the child"


def test_the_death_table_counts_and_forgets():
    table = DeathTable()
    other = task_digest("emails", "c3d4")
    assert table.lookup(DIGEST) == (0, "")
    for deaths in range(1, DEATHS_PER_TASK + 1):
        assert table.record(DIGEST, f"death {deaths}") == deaths
    assert table.lookup(DIGEST) == (DEATHS_PER_TASK, f"death {DEATHS_PER_TASK}")
    assert table.lookup(other) == (0, "")
    table.forget(DIGEST)
    assert table.lookup(DIGEST) == (0, "")
    assert table.record(DIGEST, "again") == 1


def test_the_death_table_forgets_the_oldest_when_full():
    table = DeathTable()
    digests = [task_digest("q", str(n)) for n in range(TABLE_CAPACITY + 10)]
    for digest in digests:
        table.record(digest, "x")
    assert table.lookup(digests[0]) == (0, "")
    assert table.lookup(digests[-1]) == (1, "x")
    assert sum(table.lookup(digest)[0] for digest in digests) == TABLE_CAPACITY


def test_a_forked_worker_sees_what_the_master_records_after_the_fork():
    table = DeathTable()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(read_end, 1)  # wait for the parent's record
        os._exit(table.lookup(DIGEST)[0])
    table.record(DIGEST, "killed by SIGSEGV")
    os.write(write_end, b"!")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1


def test_a_board_read_while_its_worker_writes_is_never_torn():
    """A forked writer switches its board between two tasks as fast as it can; every read
    the master makes meanwhile sees one whole task, never the id of one with the digest of
    the other."""
    board = Board()
    tasks = {task_digest("q", task_id): task_id for task_id in ("a" * 300, "b" * 7)}
    pid = os.fork()
    if pid == 0:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for digest, task_id in tasks.items():
                board.hold(digest, task_id)
                board.run(f"run.{task_id[:9]}", task_id * 3, RETRY_PAYLOAD)
            board.idle()
        os._exit(0)
    seen = 0
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        held = board.read()
        if held is None:
            continue
        seen += 1
        if tasks[held.digest] != held.task_id or held.func not in ("", f"run.{held.task_id[:9]}"):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"a torn read: {held}")
        assert held.payload in (None, held.task_id * 3)
    assert seen > 100


def test_a_death_table_lookup_while_the_master_writes_is_never_torn():
    table = DeathTable()
    digests = [task_digest("q", str(n)) for n in range(50)]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker: every count it reads must be one the master wrote for it
        os.close(write_end)
        torn = 0
        while not select.select([read_end], [], [], 0)[0]:
            for n, digest in enumerate(digests):
                deaths, reason = table.lookup(digest)
                if deaths and reason != f"task {n} death {deaths}":
                    torn += 1
        os._exit(min(torn, 100))
    os.close(read_end)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for n, digest in enumerate(digests):
            deaths = table.lookup(digest)[0] + 1
            assert table.record(digest, f"task {n} death {deaths}") == deaths
            if deaths == 3:
                table.forget(digest)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
