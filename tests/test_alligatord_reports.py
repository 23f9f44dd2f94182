"""What a worker reports to its master: every line is checked, and nothing else gets through."""

import pytest

from supervisor.reports import Idle, ReportError, ReportReader, Running, decode


def test_reports_travel_whole():
    running = Running("t1", "myapp.tasks.send", 12.5, last=True, retry_data='{"retries": 0}')
    reader = ReportReader()
    assert reader.feed(running.encode() + Idle().encode()) == [running, Idle()]
    # Split anywhere, they arrive the same.
    data = running.encode() + Idle().encode()
    items = [item for byte in range(len(data)) for item in reader.feed(data[byte : byte + 1])]
    assert items == [running, Idle()]


@pytest.mark.parametrize(
    "line",
    [
        b'{"event":"running","task":"x"}',  # no "func", no "at"
        b'{"event":"running","task":"x","func":"f"}',
        b'{"event":"running","task":"x","func":"f","at":"soon"}',
        b'{"event":"running","task":"x","func":"f","at":NaN}',
        b'{"event":"running","task":"x","func":"f","at":true}',
        b'{"event":"running","task":7,"func":"f","at":1}',
        b'{"event":"running","task":"x","func":"f","at":1,"last":"yes"}',
        b'{"event":"running","task":"x","func":"f","at":1,"retry_data":{}}',
        b'{"event":"finished"}',
        b'["event","idle"]',
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
    items = reader.feed(b"garbage without an end" + Idle().encode())
    assert [type(item) for item in items] == [ReportError, Idle]


def test_a_line_that_never_ends_is_dropped_not_kept():
    reader = ReportReader(max_line=1000)
    errors = [item for _ in range(50) for item in reader.feed(b"x" * 300)]
    assert len(errors) == 1 and isinstance(errors[0], ReportError)
    assert len(reader._buffer) <= 1000
    # The end of the long line goes too; what follows it is read again.
    assert reader.feed(b"x" * 10 + Idle().encode()) == [Idle()]


def test_without_payloads():
    running = Running("t1", "f", 1.0, bury_data="{}")
    assert running.without_payloads() == Running("t1", "f", 1.0)
