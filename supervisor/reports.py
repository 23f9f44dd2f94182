"""
What a worker tells its master over a pipe of its own: the few events of its life, in one
place. What it does task by task goes on its board instead (``supervisor.board``).

Each report is one JSON object on a line of its own:

- ``{"event": "ready"}`` once the worker imported its task modules and reached its backend:
  from then on, its death is a crash, not a failed start.
- ``{"event": "leaving"}`` as the worker starts its last task (``max_tasks``), so that its
  replacement starts at the same time.
- ``{"event": "refused", "task": DIGEST}`` when the worker moved a task that killed
  workers to the dead letters: the master forgets its count (hex of its digest).

A worker writes a newline before each report as well as after it, so that stray bytes on
the pipe (a task writing to a descriptor it should not touch) spoil at most their own
line. The master reads through a ``ReportReader``, which checks every line against the
shapes above and hands back a ``ReportError`` for anything else, a line longer than
``MAX_REPORT_BYTES`` included: the master drops it, logs it, and goes on.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

#: The longest report line the master keeps; bytes beyond it up to the next newline are
#: dropped.
MAX_REPORT_BYTES = 4096

_DIGEST_HEX = re.compile(r"^[0-9a-f]{32}$")


class ReportError(ValueError):
    """A line on a worker's pipe that is not a report."""


@dataclass(frozen=True)
class Ready:
    """
    The worker is up: its task modules imported, its backend answered.

    Ex::

        Ready().encode()  # b'\\n{"event":"ready"}\\n'
    """

    def encode(self) -> bytes:
        return _line({"event": "ready"})


@dataclass(frozen=True)
class Leaving:
    """
    The worker starts its last task (``max_tasks``).

    Ex::

        Leaving().encode()  # b'\\n{"event":"leaving"}\\n'
    """

    def encode(self) -> bytes:
        return _line({"event": "leaving"})


@dataclass(frozen=True)
class Refused:
    """
    The worker moved a task that killed workers to the dead letters, unopened.

    Ex::

        Refused(digest).encode()
    """

    digest: bytes

    def encode(self) -> bytes:
        return _line({"event": "refused", "task": self.digest.hex()})


Report = Ready | Leaving | Refused


def _line(fields: dict[str, Any]) -> bytes:
    return b"\n" + json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Report:
    """
    Reads one line (without its newline) into a report.

    Ex::

        decode(b'{"event":"ready"}')  # Ready()

    :raises ReportError: When the line is not one of the reports above
    """
    try:
        fields = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ReportError(f"not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ReportError("not a JSON object")
    event = fields.get("event")
    if set(fields) - {"event", "task"}:
        raise ReportError("unknown fields")
    if event == "ready" and len(fields) == 1:
        return Ready()
    if event == "leaving" and len(fields) == 1:
        return Leaving()
    if event == "refused":
        digest = fields.get("task")
        if not isinstance(digest, str) or not _DIGEST_HEX.match(digest):
            raise ReportError("'task' must be a task digest")
        return Refused(bytes.fromhex(digest))
    raise ReportError(f"unknown event {event!r}")


class ReportReader:
    """
    Splits the bytes read from a worker's pipe into reports.

    Ex::

        reader = ReportReader()
        for item in reader.feed(os.read(fd, 65536)):
            ...  # a Ready, a Leaving, a Refused, or a ReportError to log

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
