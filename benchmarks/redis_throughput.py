"""
Throughput of the Redis backend, next to raw redis-py LPUSH/RPOP measured in the same run.

Starts its own redis-server on a free loopback port (in a temporary directory), then times:

- enqueue: raw ``LPUSH`` of a task-sized payload; ``Client.push``; ``Gator.task``;
- drain: raw ``RPOP``; ``Client.reserve`` + ``Client.ack``; a ``Worker`` running no-op tasks.

Every step is one call at a time, as an application would make it (no pipelining), so the
ratio shows what the backend's bookkeeping costs over the bare list commands.

Ex::

    python -m benchmarks.redis_throughput --tasks 20000 --seconds 10   # from the checkout
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import redis
from redis.utils import HIREDIS_AVAILABLE

from alligator.backends.redis_backend import Client  # noqa: E402
from alligator.gator import Gator  # noqa: E402
from alligator.workers import Worker  # noqa: E402
from benchmarks.tasks import noop  # noqa: E402

QUEUE = "bench"
# The task the worker runs. (A function of this script would live in __main__, which a
# worker refuses to import.)
TASK = noop
CONSUMER = "bench-host:1:consumer"


class QuietWorker(Worker):
    """A Worker that prints nothing per task (the base one prints every result)."""

    def starting(self) -> None:
        pass

    def stopping(self) -> None:
        pass

    def result(self, result) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed.")
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [binary, *args, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                sys.exit("redis-server did not start.")
            time.sleep(0.02)


def timed(step: Callable[[int], bool], limit: int, seconds: float) -> tuple[int, float]:
    """Calls ``step(n)`` until it returns False, ``limit`` calls, or ``seconds`` pass."""
    started = time.perf_counter()
    deadline = started + seconds
    done = 0
    while done < limit and step(done):
        done += 1
        # Checking the clock every call would cost as much as a short step.
        if done % 256 == 0 and time.perf_counter() > deadline:
            break
    return done, time.perf_counter() - started


def report(label: str, count: int, elapsed: float) -> float:
    rate = count / elapsed if elapsed > 0 else 0.0
    print(f"  {label:<34} {count:>8} in {elapsed:6.2f}s  {rate:>10,.0f}/s")
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per step")
    parser.add_argument("--seconds", type=float, default=10.0, help="longest time per step")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="alligator-bench-") as workdir:
        process, port = start_redis(workdir)
        try:
            return run(port, args.tasks, args.seconds)
        finally:
            process.terminate()
            process.wait(10)


def run(port: int, tasks: int, seconds: float) -> int:
    dsn = f"redis://127.0.0.1:{port}/0"
    raw = redis.Redis("127.0.0.1", port, decode_responses=True)
    client = Client(dsn)
    gator = Gator(dsn, queue_name=QUEUE)
    sample = gator.task_class()
    sample.to_call(TASK, 0)
    payload = sample.serialize()
    parser = "hiredis" if HIREDIS_AVAILABLE else "pure Python"
    print(f"redis-server on 127.0.0.1:{port}; payload {len(payload)} bytes; {parser} parser")

    print("enqueue")
    raw_count, raw_time = timed(lambda n: bool(raw.lpush("raw", payload)), tasks, seconds)
    raw_in = report("raw LPUSH", raw_count, raw_time)
    push_count, push_time = timed(
        lambda n: bool(client.push(QUEUE, f"push-{n}", payload)), tasks, seconds
    )
    push_in = report("Client.push", push_count, push_time)

    print("drain")
    raw_out = report("raw RPOP", *timed(lambda n: raw.rpop("raw") is not None, raw_count, seconds))

    def reserve_and_ack(n: int) -> bool:
        reserved = client.reserve(QUEUE, CONSUMER)
        if reserved is None:
            return False
        client.ack(QUEUE, reserved.task_id, CONSUMER)
        return True

    drain_out = report("Client.reserve + ack", *timed(reserve_and_ack, push_count, seconds))

    print("through the public API")
    task_count, task_time = timed(lambda n: bool(gator.task(TASK, n)), tasks, seconds)
    task_in = report("Gator.task", task_count, task_time)
    worker = QuietWorker(gator, max_tasks=task_count, allowed_tasks=["benchmarks.tasks"])
    started = time.perf_counter()
    worker.run_forever()
    worker_out = report("Worker (reserve, run, ack)", task_count, time.perf_counter() - started)

    print("ratio (raw redis-py rate / Alligator rate; 1.0 would be as fast as bare lists)")
    for label, ours in [
        ("enqueue: Client.push", push_in),
        ("enqueue: Gator.task", task_in),
        ("drain: Client.reserve + ack", drain_out),
        ("drain: Worker", worker_out),
    ]:
        baseline = raw_in if label.startswith("enqueue") else raw_out
        print(f"  {label:<34} {baseline / ours:5.2f}")
    leftover = client.len(QUEUE)
    client.close()
    gator.backend.close()
    if leftover:
        print(f"warning: {leftover} task(s) left in the queue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
