"""
Shared memory between the master and its workers, so that no task costs a pipe write.

- Each worker's ``Board`` says what it holds: a task id from the moment the task is
  reserved, before anything of it is decoded or imported; then the function it runs; since
  when; and, on a queue with a ``timeout``, the payload the master stores should it kill the
  run. The worker writes it; the master reads it when it must know: as it reaps the worker,
  and to enforce a timeout.
- The ``DeathTable`` lists the tasks that killed this host's workers on a backend whose
  server returns a dead worker's task by itself (beanstalkd), and so keeps no count of
  deaths as the other backends do: the master writes it, and a worker that takes a task
  it names asks the server how often that task was taken and never settled (the one round
  trip that costs, only for such tasks).

Both are anonymous shared mappings the master makes before it forks: only the master and
its workers see them. A writer brackets each update with a sequence number that is odd
while it writes, and a board carries checksums of what it says; a reader retries a read
that overlapped a write or does not match its checksums. Tasks are known by a
digest of their queue and id, so that ids of any length fit.
"""

import hashlib
import mmap
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass

#: What a worker is doing, as its board says.
IDLE, HOLDING, RUNNING = 0, 1, 2
#: What the payload on a board is for, should the run be killed.
NO_PAYLOAD, RETRY_PAYLOAD, BURY_PAYLOAD = 0, 1, 2

DIGEST_SIZE = 16
_SEQUENCE = struct.Struct("<I")
# sequence, state, payload kind, id cut short, since, digest, id/func/payload lengths, the
# CRC-32 of the id and function, and of the payload, and the seconds a retry waits.
_BOARD = struct.Struct("<IBBBxd16sHHIIId")
ID_MAX = 512
FUNC_MAX = 256
_ID_AT = _BOARD.size
_FUNC_AT = _ID_AT + ID_MAX
_PAYLOAD_AT = _FUNC_AT + FUNC_MAX
#: Room for a board; a payload longer than what is left is not kept.
BOARD_SIZE = 1024 * 1024
PAYLOAD_MAX = BOARD_SIZE - _PAYLOAD_AT

#: Tasks the death table remembers, the most recent ones.
TABLE_CAPACITY = 1024
REASON_MAX = 120
_TABLE_HEADER = struct.Struct("<II")  # sequence, entries in use
_DEATHS = struct.Struct("<I")
_DIGESTS_AT = _TABLE_HEADER.size
_DEATHS_AT = _DIGESTS_AT + TABLE_CAPACITY * DIGEST_SIZE
_REASONS_AT = _DEATHS_AT + TABLE_CAPACITY * _DEATHS.size
_TABLE_SIZE = _REASONS_AT + TABLE_CAPACITY * REASON_MAX

_READ_TRIES = 100


def task_digest(queue: str, task_id: str) -> bytes:
    """
    The 16 bytes a task is known by in shared memory.

    Ex::

        task_digest('emails', 'a1b2')  # b'\\x9f…'
    """
    key = f"{queue}\0{task_id}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(key, digest_size=DIGEST_SIZE).digest()


def _encode(text: str, limit: int) -> tuple[bytes, bool]:
    data = text.encode("utf-8", "surrogateescape")
    return data[:limit], len(data) > limit


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Held:
    """
    What a board said a worker held.

    Ex::

        Held(RUNNING, since=1234.5, digest=b'…', task_id='a1b2', complete_id=True,
             func='myapp.tasks.send', payload='{"task_id":…}', payload_kind=RETRY_PAYLOAD)
    """

    state: int
    since: float  # time.monotonic(), the same clock in the master and its workers
    digest: bytes
    task_id: str  # cut short if ``complete_id`` is false
    complete_id: bool
    func: str
    payload: str | None
    payload_kind: int
    retry_in: float = 0.0  # seconds the retry in ``payload`` waits after a kill

    @property
    def phase(self) -> str:
        """When, in its handling, the worker died: for log lines."""
        if self.state == RUNNING:
            return "while running it"
        return "before it could run it (at import or decode)"


class Board:
    """
    One worker's board. The master makes it before the fork; the worker writes, the master
    reads.

    Ex::

        board = Board()             # in the master
        board.hold('emails', 'a1')  # in the worker, once the task is reserved
        board.read()                # in the master: a Held, or None when idle
    """

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, BOARD_SIZE)
        self._sequence = 0
        # The worker's copy of what it holds: since, digest, id bytes, id cut short.
        self._held: tuple[float, bytes, bytes, bool] = (0.0, bytes(DIGEST_SIZE), b"", False)

    def close(self) -> None:
        """Unmaps the board (the master, once the worker is reaped)."""
        self._map.close()

    # The worker's side.

    def _write(
        self,
        state: int,
        func: bytes = b"",
        payload: bytes = b"",
        kind: int = 0,
        retry_in: float = 0.0,
    ) -> None:
        board = self._map
        since, digest, id_bytes, cut = self._held
        odd = self._sequence + 1
        _SEQUENCE.pack_into(board, 0, odd)
        board[_ID_AT : _ID_AT + len(id_bytes)] = id_bytes
        board[_FUNC_AT : _FUNC_AT + len(func)] = func
        board[_PAYLOAD_AT : _PAYLOAD_AT + len(payload)] = payload
        lengths = (len(id_bytes), len(func), len(payload))
        checks = (zlib.crc32(func, zlib.crc32(id_bytes)), zlib.crc32(payload))
        _BOARD.pack_into(
            board, 0, odd, state, kind, cut, since, digest, *lengths, *checks, retry_in
        )
        # Last, so that a reader who sees it even again read all of the above.
        self._sequence = odd + 1
        _SEQUENCE.pack_into(board, 0, self._sequence)

    def hold(self, digest: bytes, task_id: str) -> None:
        """The worker took a task off its queue: from now on its death counts against it."""
        self._held = (time.monotonic(), digest, *_encode(task_id, ID_MAX))
        self._write(HOLDING)

    def run(
        self,
        func: str,
        payload: str | None = None,
        kind: int = NO_PAYLOAD,
        retry_in: float = 0.0,
    ) -> None:
        """The held task starts to run; ``payload`` (if any) is what to store if it is
        killed: the payload to retry (``RETRY_PAYLOAD``), ``retry_in`` seconds after the
        kill, or to bury (``BURY_PAYLOAD``)."""
        data = b"" if payload is None else payload.encode("utf-8", "surrogateescape")
        if not data or len(data) > PAYLOAD_MAX:
            data, kind = b"", NO_PAYLOAD
        self._write(RUNNING, _encode(func, FUNC_MAX)[0], data, kind, retry_in)

    def idle(self) -> None:
        """The worker holds no task."""
        self._held = (time.monotonic(), bytes(DIGEST_SIZE), b"", False)
        self._write(IDLE)

    # The master's side.

    def read(self) -> Held | None:
        """
        What the worker holds, payload included, or ``None`` when it holds nothing (or its
        last write was cut short by its death).
        """
        return self._read(with_payload=True)

    def glance(self) -> Held | None:
        """Like ``read``, without the payload (``None``): cheap enough for every turn of the
        master's loop."""
        return self._read(with_payload=False)

    def _read(self, with_payload: bool) -> Held | None:
        board = self._map
        for _ in range(_READ_TRIES):
            fields = _BOARD.unpack_from(board, 0)
            sequence, state, kind, cut, since, digest, id_len, func_len, payload_len = fields[:9]
            meta_check, payload_check, retry_in = fields[9:]
            if sequence % 2:
                continue
            if state == IDLE or id_len > ID_MAX or func_len > FUNC_MAX:
                return None
            if payload_len > PAYLOAD_MAX:
                return None
            task_id = board[_ID_AT : _ID_AT + id_len]
            func = board[_FUNC_AT : _FUNC_AT + func_len]
            payload = None
            if with_payload and payload_len:
                payload = board[_PAYLOAD_AT : _PAYLOAD_AT + payload_len]
            # The sequence number tells a write that overlapped; the checksums catch what
            # the processor may still have reordered around a copy.
            if _SEQUENCE.unpack_from(board, 0)[0] != sequence:
                continue
            if zlib.crc32(func, zlib.crc32(task_id)) != meta_check:
                continue
            if payload is not None and zlib.crc32(payload) != payload_check:
                continue
            return Held(
                state,
                since,
                digest,
                _decode(task_id),
                not cut,
                _decode(func),
                None if payload is None else _decode(payload),
                kind,
                retry_in,
            )
        return None


class DeathTable:
    """
    The tasks that killed this master's workers, in memory it shares with them all: on a
    backend that keeps no count of its own (see the module), which tasks to ask about.

    Ex::

        table = DeathTable()                            # in the master, before forking
        deaths = table.record(digest, 'killed by SIGSEGV')  # the master, at a reap
        table.lookup(digest)                            # a worker: (deaths, last reason)
    """

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _TABLE_SIZE)
        self._sequence = 0
        # The master's own index: digest -> entry, least recently used first.
        self._entries: OrderedDict[bytes, int] = OrderedDict()
        self._free = list(range(TABLE_CAPACITY - 1, -1, -1))

    def close(self) -> None:
        self._map.close()

    # The master's side.

    def _store(self, index: int, digest: bytes, deaths: int, reason: str) -> None:
        table = self._map
        odd = self._sequence + 1
        _SEQUENCE.pack_into(table, 0, odd)
        _DEATHS.pack_into(table, _DEATHS_AT + index * _DEATHS.size, deaths)
        text = _encode(reason, REASON_MAX)[0].ljust(REASON_MAX, b"\0")
        at = _REASONS_AT + index * REASON_MAX
        table[at : at + REASON_MAX] = text
        at = _DIGESTS_AT + index * DIGEST_SIZE
        table[at : at + DIGEST_SIZE] = digest
        _TABLE_HEADER.pack_into(table, 0, odd, len(self._entries))
        self._sequence = odd + 1
        _SEQUENCE.pack_into(table, 0, self._sequence)

    def record(self, digest: bytes, reason: str) -> int:
        """Counts one more worker death for a task; returns how many it caused."""
        index = self._entries.pop(digest, None)
        if index is None:
            deaths = 1
            if not self._free:  # forget the task whose last death is the oldest
                _, oldest = self._entries.popitem(last=False)
                self._free.append(oldest)
            index = self._free.pop()
        else:
            deaths = _DEATHS.unpack_from(self._map, _DEATHS_AT + index * _DEATHS.size)[0] + 1
        self._entries[digest] = index
        self._store(index, digest, deaths, reason)
        return deaths

    def forget(self, digest: bytes) -> None:
        """Drops a task's count (it went to the dead letters)."""
        index = self._entries.pop(digest, None)
        if index is not None:
            self._free.append(index)
            self._store(index, bytes(DIGEST_SIZE), 0, "")

    # A worker's side.

    def lookup(self, digest: bytes) -> tuple[int, str]:
        """How many workers the task killed (0 for none), and how the last one died."""
        table = self._map
        for _ in range(_READ_TRIES):
            sequence, in_use = _TABLE_HEADER.unpack_from(table, 0)
            if sequence % 2:
                continue
            found = self._find(digest) if in_use else (0, "")
            if _SEQUENCE.unpack_from(table, 0)[0] == sequence:
                return found
        return (0, "")

    def _find(self, digest: bytes) -> tuple[int, str]:
        table = self._map
        start = _DIGESTS_AT
        while (at := table.find(digest, start, _DEATHS_AT)) >= 0:
            index, misaligned = divmod(at - _DIGESTS_AT, DIGEST_SIZE)
            if misaligned:  # straddles two entries: look further
                start = at + 1
                continue
            deaths = _DEATHS.unpack_from(table, _DEATHS_AT + index * _DEATHS.size)[0]
            at = _REASONS_AT + index * REASON_MAX
            return deaths, _decode(table[at : at + REASON_MAX].rstrip(b"\0"))
        return (0, "")
