"""
Enqueue and drain throughput of the SQLite backend, next to raw sqlite3 on the same machine.

The baseline does what a queue needs at the least: one autocommitted INSERT per push, and
one autocommitted SELECT + DELETE of the head row per pop, in a WAL file with
synchronous=NORMAL (the backend's defaults). The ratios say what Alligator's bookkeeping
(JSON payloads, in-flight state, acks, transactions) costs on top of that. The drain is
measured twice: ``Client.reserve`` + ``Client.ack`` alone (the backend's hot path), and
``Gator.pop`` (which also decodes and runs each task).

Ex::

    python -m benchmarks.sqlite_throughput --tasks 5000   # from the repository root

Each phase stops at ``--seconds`` even if not all tasks went through; the rates count
what did.
"""

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from alligator import Gator, Task
from benchmarks.tasks import noop


def payload(number: int) -> str:
    """What a push of the benchmark's task stores."""
    task = Task()
    task.to_call(noop, number)
    return task.serialize()


def timed(step: Callable[[int], bool], count: int, seconds: float) -> tuple[int, float]:
    """Runs ``step(n)`` for n in range(count) until it returns False or time runs out."""
    started = time.perf_counter()
    done = 0
    while done < count and time.perf_counter() - started < seconds:
        if not step(done):
            break
        done += 1
    return done, time.perf_counter() - started


def raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE queue (seq INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    return conn


def raw_pop(conn: sqlite3.Connection) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT seq FROM queue ORDER BY seq LIMIT 1").fetchone()
    if row is not None:
        conn.execute("DELETE FROM queue WHERE seq = ?", row)
    conn.execute("COMMIT")
    return row is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per phase")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="alligator-bench-") as tmp:
        gator = Gator(f"sqlite:///{tmp}/gator.db", queue_name="bench")
        pushed, push_time = timed(
            lambda n: gator.task(noop, n) is not None, args.tasks, args.seconds
        )
        popped, pop_time = timed(lambda n: gator.pop() is not None, pushed, args.seconds)

        # Payloads like the backend's, made before the clock starts.
        payloads = [payload(n) for n in range(pushed)]
        client = gator.backend
        for n, data in enumerate(payloads):
            client.push("bench-client", f"task-{n}", data)

        def reserve_and_ack(n: int) -> bool:
            reserved = client.reserve("bench-client", "bench:1:consumer")
            if reserved is None:
                return False
            client.ack("bench-client", reserved.task_id, "bench:1:consumer")
            return True

        acked, ack_time = timed(reserve_and_ack, pushed, args.seconds)
        client.close()

        conn = raw_connection(Path(tmp) / "raw.db")

        def raw_push(n: int) -> bool:
            conn.execute("INSERT INTO queue (data) VALUES (?)", (payloads[n],))
            return True

        raw_pushed, raw_push_time = timed(raw_push, pushed, args.seconds)
        raw_popped, raw_pop_time = timed(lambda n: raw_pop(conn), raw_pushed, args.seconds)
        conn.close()

    rows = [
        ("enqueue", pushed / push_time, raw_pushed / raw_push_time),
        ("reserve+ack", acked / ack_time, raw_popped / raw_pop_time),
        ("drain", popped / pop_time, raw_popped / raw_pop_time),
    ]
    print(f"SQLite {sqlite3.sqlite_version}, {pushed} tasks, payload ~{len(payloads[0])} bytes")
    print(f"{'phase':<12} {'Alligator/s':>12} {'raw sqlite3/s':>14} {'ratio':>7}")
    for phase, rate, raw_rate in rows:
        print(f"{phase:<12} {rate:>12.0f} {raw_rate:>14.0f} {rate / raw_rate:>7.2f}")


if __name__ == "__main__":
    main()
