"""
What a worker tells its master, over a pipe of its own: the protocol, in one place.

Each report is one JSON object on a line of its own:

- ``{"event": "running", "task": ID, "func": PATH, "at": MONOTONIC}`` just before a task
  runs, with ``"last": true`` when the worker leaves after it (``max_tasks``), and with
  what the master writes to the backend if that run must count as a failed attempt (a
  ``timeout`` kill, or the last death a task may cause): ``"retry_data"``, the payload with
  one retry fewer, or ``"bury_data"``, the payload for the dead letters when none is left.
- ``{"event": "idle"}`` after a task.

A worker writes a newline before each report as well as after it, so that stray bytes on
the pipe (a task writing to a descriptor it should not touch) spoil at most their own
line. The master reads through a ``ReportReader``, which checks every line against the
shapes above, turns it into a ``Running`` or an ``Idle``, and hands back a ``ReportError``
for anything else, a line longer than ``MAX_REPORT_BYTES`` included: the master drops it,
logs it, and goes on.
"""

import json
import math
from dataclasses import dataclass, replace
from typing import Any

#: The longest report line the master keeps; bytes beyond it up to the next newline are
#: dropped. A worker leaves the payloads out of a report that would be longer.
MAX_REPORT_BYTES = 1024 * 1024


class ReportError(ValueError):
    """A line on a worker's pipe that is not a report."""


@dataclass(frozen=True)
class Running:
    """
    The worker starts a task.

    Ex::

        Running(task_id='a1b2', func='myapp.tasks.send_email', at=time.monotonic())
    """

    task_id: str
    func: str
    at: float  # time.monotonic() in the worker, the same clock as the master's
    last: bool = False
    retry_data: str | None = None
    bury_data: str | None = None

    def encode(self) -> bytes:
        fields: dict[str, Any] = {
            "event": "running",
            "task": self.task_id,
            "func": self.func,
            "at": self.at,
        }
        if self.last:
            fields["last"] = True
        if self.retry_data is not None:
            fields["retry_data"] = self.retry_data
        if self.bury_data is not None:
            fields["bury_data"] = self.bury_data
        return _line(fields)

    def without_payloads(self) -> "Running":
        """The same report without ``retry_data`` and ``bury_data``."""
        return replace(self, retry_data=None, bury_data=None)


@dataclass(frozen=True)
class Idle:
    """
    The worker finished its task.

    Ex::

        Idle().encode()  # b'\\n{"event":"idle"}\\n'
    """

    def encode(self) -> bytes:
        return _line({"event": "idle"})


Report = Running | Idle


def _line(fields: dict[str, Any]) -> bytes:
    return b"\n" + json.dumps(fields, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> Report:
    """
    Reads one line (without its newline) into a report.

    Ex::

        decode(b'{"event":"idle"}')  # Idle()

    :raises ReportError: When the line is not one of the reports above
    """
    try:
        fields = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ReportError(f"not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ReportError("not a JSON object")
    event = fields.get("event")
    if event == "idle":
        return Idle()
    if event != "running":
        raise ReportError(f"unknown event {event!r}")
    task_id, func, at = fields.get("task"), fields.get("func"), fields.get("at")
    if not isinstance(task_id, str) or not task_id:
        raise ReportError("'task' must be a task id")
    if not isinstance(func, str):
        raise ReportError("'func' must be a string")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ReportError("'at' must be a finite number")
    last = fields.get("last", False)
    if not isinstance(last, bool):
        raise ReportError("'last' must be true or false")
    payloads = {key: fields.get(key) for key in ("retry_data", "bury_data")}
    for key, value in payloads.items():
        if value is not None and not isinstance(value, str):
            raise ReportError(f"{key!r} must be a string")
    return Running(task_id, func, float(at), last, **payloads)


class ReportReader:
    """
    Splits the bytes read from a worker's pipe into reports.

    Ex::

        reader = ReportReader()
        for item in reader.feed(os.read(fd, 65536)):
            ...  # a Running, an Idle, or a ReportError to log

    :param max_line: The longest line kept
    """

    def __init__(self, max_line: int = MAX_REPORT_BYTES) -> None:
        self.max_line = max_line
        self._buffer = b""
        self._skipping = False  # inside a line that grew too long: drop up to its end

    def feed(self, data: bytes) -> list[Report | ReportError]:
        """Takes the next bytes; returns the reports (and errors) of the lines they end."""
        found: list[Report | ReportError] = []
        *lines, rest = (self._buffer + data).split(b"\n")
        for line in lines:
            if self._skipping:
                self._skipping = False
            elif len(line) > self.max_line:
                found.append(ReportError(f"a line of {len(line)} bytes, over the limit"))
            elif line:
                try:
                    found.append(decode(line))
                except ReportError as exc:
                    found.append(ReportError(f"{exc}: {line[:200]!r}"))
        if len(rest) > self.max_line:
            if not self._skipping:
                found.append(ReportError(f"a line longer than {self.max_line} bytes; dropping it"))
            self._skipping, rest = True, b""
        self._buffer = rest
        return found
