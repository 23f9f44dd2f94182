"""
No payload stalls a queue, and only allowed, signed tasks run: alligatord against hostile
and unlucky payloads written straight into Redis, SQLite and beanstalkd.
"""

import json
import os
import re
import signal
import sqlite3
import threading
import time
import uuid
from types import SimpleNamespace

import greenstalk
import psutil
import pytest
import redis

from alligator.gator import Gator

from . import alligatord_support as support
from .alligatord_support import lines, sqlite_dsn, write_config
from .servers import wait_for

SECRET = "a-secret-of-at-least-16-characters"


@pytest.fixture(params=["sqlite", "redis", "beanstalk"])
def backend(request, tmp_path):
    """A backend, a queue no other test uses, and a way to write bytes straight into it."""
    queue = f"q{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        dsn = sqlite_dsn(tmp_path)
        Gator(dsn).backend.close()  # creates the file and its tables

        def push_raw(data: bytes) -> None:
            with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
                conn.execute(
                    "INSERT INTO alligator_tasks (queue, task_id, data, state) "
                    "VALUES (?, ?, CAST(? AS TEXT), 'ready')",
                    (queue, uuid.uuid4().hex, data),
                )

    elif request.param == "redis":
        server = request.getfixturevalue("redis")
        dsn = support.redis_dsn(server)
        keys = Gator(dsn).backend.keys(queue)
        raw = redis.Redis(host=server.host, port=server.port)

        def push_raw(data: bytes) -> None:
            task_id = uuid.uuid4().hex
            raw.hset(keys.data, task_id, data)
            raw.rpush(keys.ready, task_id)

    else:
        server = request.getfixturevalue("beanstalkd")
        dsn = f"beanstalk://{server.host}:{server.port}/"

        def push_raw(data: bytes) -> None:
            with greenstalk.Client((server.host, server.port), encoding=None, use=queue) as bs:
                bs.put(data)

    return SimpleNamespace(name=request.param, dsn=dsn, queue=queue, push_raw=push_raw)


def payload(module: str, func: str, *args) -> bytes:
    fields = {"task_id": uuid.uuid4().hex, "retries": 0, "async": True, "module": module}
    fields.update(callable=func, args=list(args), kwargs={})
    return json.dumps(fields).encode()


@pytest.fixture
def app(tmp_path):
    """Task modules that end the process importing them."""
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (directory / "ends_at_import.py").write_text("import os\nos._exit(3)\n")
    return directory


def at_least(found, count: int):
    return found if len(found) >= count else None


def errors_by_kind(gator: Gator) -> dict[str, str]:
    kinds = {
        "sys.exit(3) at import": "exit",
        "It killed 3 workers": "deaths",
        "not valid UTF-8": "utf-8",
        "not valid JSON": "json",
        "Its function os.system is not allowed": "os.system",
        "Its function subprocess.check_call is not allowed": "check_call",
        "Its function builtins.eval is not allowed": "eval",
    }
    found = {}
    for letter in gator.dead_letters():
        [kind] = [kind for text, kind in kinds.items() if text in letter.error] or [letter.error]
        found[kind] = letter.error
    return found


def test_poison_payloads_in_front_of_200_tasks_never_stall_the_queue(
    daemons, backend, tmp_path, app
):
    marker = tmp_path / "pwned"
    for poison in (
        payload("exits_at_import", "run"),
        payload("ends_at_import", "run"),
        b'{"task_id": "x", "retries": 0, "async": true, "module": "\xff\xfe"}',
        b"\x00 not json at all",
        payload("os", "system", f"touch {marker}"),
        payload("subprocess", "check_call", ["touch", str(marker)]),
        payload("builtins", "eval", f"open({str(marker)!r}, 'w')"),
    ):
        backend.push_raw(poison)
    record = tmp_path / "ran.txt"
    gator = Gator(backend.dsn, queue_name=backend.queue)
    for n in range(200):
        gator.task(support.record, str(record), n)

    config = write_config(
        tmp_path / "a.ini",
        backend.dsn,
        {backend.queue: {"workers": 2}},
        graceful_timeout=5,
        pythonpath="app",
    )
    daemon = daemons(config)
    wait_for(lambda: len(lines(record)) >= 200, timeout=30, message="the 200 good tasks")
    assert sorted(map(int, lines(record))) == list(range(200))
    dead = wait_for(lambda: at_least(errors_by_kind(gator), 7), message="seven dead letters")
    assert set(dead) == {"exit", "deaths", "utf-8", "json", "os.system", "check_call", "eval"}
    assert "before it could run it (at import or decode)" in dead["deaths"]
    assert not marker.exists()
    assert gator.len() == 0

    log = daemon.log()
    # The worker that ended at import was known to hold that task, and the third such death
    # was its last: the next worker to take it refused it unopened.
    assert log.count("died before it could run it (at import or decode)") == 3
    assert log.count("with one more death counted against it") == 3
    assert "BACKOFF" not in log  # crashes of ready workers, replaced at once
    daemon.wait_workers({backend.queue: 2})
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def kill_young_workers(daemon: support.Daemon, stop: threading.Event, killed: list[int]):
    """SIGKILLs every worker that is ready but less than a second old, as an OOM killer
    might, until ``stop`` is set."""
    while not stop.is_set():
        for pid, title in daemon.workers().items():
            if not title.endswith(" idle") and " running " not in title:
                continue  # not ready yet: its death would be a failed start
            try:
                if time.time() - psutil.Process(pid).create_time() < 1.0:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (psutil.Error, ProcessLookupError):
                continue
        stop.wait(0.02)


def test_a_storm_of_kills_on_young_workers_does_not_stop_the_drain(daemons, backend, tmp_path):
    record = tmp_path / "ran.txt"
    gator = Gator(backend.dsn, queue_name=backend.queue)
    tasks = [gator.task(support.pause_then_record, str(record), n, 0.01) for n in range(300)]
    config = write_config(
        tmp_path / "a.ini", backend.dsn, {backend.queue: {"workers": 2}}, graceful_timeout=5
    )
    daemon = daemons(config)
    stop, killed = threading.Event(), []
    storm = threading.Thread(target=kill_young_workers, args=(daemon, stop, killed))
    storm.start()
    try:
        wait_for(lambda: len(killed) >= 20, timeout=20, message="a storm of kills")
    finally:
        stop.set()
        storm.join()

    def settled() -> set[int]:
        """Every task that ran, or that the storm made a poison (three deaths; as at-least-
        once allows, it may have run too before the kill that was its third death)."""
        ran = {int(line) for line in lines(record)}
        return ran | {json.loads(letter.data)["args"][1] for letter in gator.dead_letters()}

    wait_for(lambda: len(settled()) == len(tasks) and gator.len() == 0, timeout=30)
    dead = gator.dead_letters()
    # (On beanstalk, the count is the server's own, which may be past three by then.)
    assert all(re.match(r"It killed \d+ workers", letter.error) for letter in dead)
    assert len(dead) < len(killed)
    log = daemon.log()
    assert "failed start" not in log  # every worker it killed had been ready
    # Crashes in a burst only slow the replacements down a little, and say so once.
    assert 1 <= log.count("worker crashes in 10s; each replacement waits 1s") <= 3
    if backend.name == "sqlite":  # once is enough to see the burst's end said too
        calm = "worker crashes calmed down; replacing at once again"
        wait_for(lambda: calm in daemon.log(), timeout=15, message="the calm")
    daemon.wait_workers({backend.queue: 2})
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_signed_queue_refuses_unsigned_and_tampered_tasks(daemons, backend, tmp_path):
    record = tmp_path / "ran.txt"
    producer = Gator(backend.dsn, queue_name=backend.queue, secret=SECRET)
    producer.task(support.record, str(record), "signed")
    backend.push_raw(payload("tests.alligatord_support", "record", str(record), "unsigned"))
    signed = producer.payload(_task(producer, support.record, str(record), "tampered"))
    backend.push_raw(signed.replace("tampered", "hijacked").encode())

    config = write_config(
        tmp_path / "a.ini",
        backend.dsn,
        {backend.queue: {"workers": 1}},
        graceful_timeout=5,
        secret=f"{SECRET}, the-old-secret-being-replaced",
        tasks="tests.alligatord_support",
    )
    os.chmod(config, 0o640)
    daemon = daemons(config)
    dead = wait_for(lambda: at_least(producer.dead_letters(), 2), message="two dead letters")
    assert lines(record) == ["signed"]
    errors = sorted(letter.error for letter in dead)
    assert "It is not signed, and this queue runs only tasks signed with its secret" in errors[0]
    assert "Its signature does not match" in errors[1]
    assert SECRET not in daemon.log()
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def _task(gator: Gator, func, *args):
    task = gator.task_class()
    task.to_call(func, *args)
    return task


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_three_deaths_are_counted_by_the_queue_across_masters(daemons, backend, tmp_path, app):
    """Three alligatord masters (as on three hosts) share a queue: a task that kills every
    worker taking it gets three deaths in all, not three a master."""
    backend.push_raw(payload("ends_at_import", "run"))
    record = tmp_path / "ran.txt"
    gator = Gator(backend.dsn, queue_name=backend.queue)
    for n in range(30):
        gator.task(support.record, str(record), n)
    masters = []
    for host in range(3):
        config = write_config(
            tmp_path / f"host{host}.ini",
            backend.dsn,
            {backend.queue: {"workers": 1}},
            graceful_timeout=5,
            pythonpath="app",
        )
        masters.append(daemons(config))
    [dead] = wait_for(lambda: at_least(gator.dead_letters(), 1), message="the dead letter")
    assert dead.error.startswith("It killed 3 workers that took it (the last: pid")
    wait_for(lambda: len(lines(record)) == 30, message="the other tasks")
    deaths = sum(master.log().count("died before it could run it") for master in masters)
    assert deaths == 3
    for master in masters:
        master.send(signal.SIGTERM)
        assert master.wait_exit() == 0
