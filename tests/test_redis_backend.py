"""The Redis backend beyond the shared contract: DSNs, key layout, blocking, leases, faults."""

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis as redispy
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from alligator.backends import (
    DEAD,
    EXPIRED_LEASE_DEATH,
    FINISHED,
    HELD,
    INFLIGHT,
    READY,
    Dependencies,
    Located,
    Outcome,
    Reserved,
)
from alligator.backends.redis_backend import DONE_MS, Client
from alligator.exceptions import BackendError, DuplicateTaskError, InvalidDSNError
from alligator.gator import Gator
from alligator.outcomes import dependency_canceled

from . import tasks
from .servers import (
    ROOT,
    ServerProcess,
    free_port,
    kill_process,
    redis_server,
    start_latergator,
    wait_for,
)

CONSUMER = "test-host:1:consumer"
OTHER = "test-host:2:other"

# Holds the server for ``ARGV[1]`` milliseconds: replies to others queue up meanwhile.
BUSY_SCRIPT = """
local function ms() local t = redis.call('TIME') return t[1] * 1000 + t[2] / 1000 end
local start = ms()
while ms() - start < tonumber(ARGV[1]) do end
return 1
"""


def dsn_for(server, db=0, **options) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"redis://{server.host}:{server.port}/{db}" + (f"?{query}" if query else "")


def raw(server, db=0, **kwargs) -> redispy.Redis:
    return redispy.Redis(server.host, server.port, db=db, decode_responses=True, **kwargs)


@pytest.fixture
def prefix():
    return f"test{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(redis, prefix):
    client = Client(dsn_for(redis, prefix=prefix))
    yield client
    client.close()


@pytest.fixture
def queue_name():
    return f"q{uuid.uuid4().hex[:12]}"


class CommandLog:
    """What clients send a server, read with MONITOR (with ``scripts``, what scripts run too)."""

    def __init__(self, server, db: int, scripts: bool = False) -> None:
        self.db, self.scripts = db, scripts
        self._talk = raw(server, db)
        self._talk.ping()  # connected now, so its handshake is not logged
        self._monitor = raw(server, db, socket_timeout=10).monitor()

    def __enter__(self) -> "CommandLog":
        self._monitor.__enter__()  # MONITOR is on once this returns
        return self

    def __exit__(self, *exc_info) -> None:
        self._monitor.__exit__(*exc_info)

    def read(self) -> list[str]:
        """The commands sent since the last read."""
        marker = f"ECHO end-{uuid.uuid4().hex}"
        self._talk.execute_command(*marker.split())
        commands = []
        while True:
            entry = self._monitor.next_command()
            if entry["command"] == marker:
                return commands
            if (self.scripts or entry["client_type"] != "lua") and entry["db"] == self.db:
                commands.append(entry["command"])


def names(commands: list[str]) -> list[str]:
    return [command.split()[0].upper() for command in commands]


# DSN forms and options.


def test_defaults_and_options_from_the_dsn():
    client = Client("redis://localhost:6379/0")
    assert (client.lease, client.prefix, client.socket_timeout) == (60.0, "alligator", 5.0)
    assert client.keys("emails").ready == "alligator:{emails}:ready"
    client = Client("redis://localhost/3?lease=2.5&prefix=shop&socket_timeout=1.5")
    assert (client.lease, client.prefix, client.socket_timeout) == (2.5, "shop", 1.5)
    assert client.keys("emails").inflight("c1") == "shop:{emails}:inflight:c1"
    assert client.keys("emails").deaths == "shop:{emails}:deaths"
    assert client.where == "redis://localhost:6379/3"
    # The password stays out of every message.
    assert "secret" not in Client("redis://user:secret@localhost:6379/0").where


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("redis://localhost/0?lease=0", "must be a number > 0"),
        ("redis://localhost/0?prefix=", "is empty"),
        ("redis://localhost/zero", "is not a number"),
        ("redis://localhost/1?db=2", "names the database twice"),
        ("redis://localhost:port/0", "is malformed"),
        ("unix://", "names no socket"),
        ("unix:///tmp/redis.sock?db=x", "is not a number"),
        ("redis://localhost/0?ssl_ca_certs=/ca.pem", "needs TLS: use 'rediss://'"),
        ("rediss://localhost/0?ssl_cert_reqs=maybe", "must be 'required', 'optional'"),
    ],
)
def test_bad_dsns_are_refused_with_one_clear_sentence(dsn, message):
    with pytest.raises(InvalidDSNError, match=message):
        Client(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "redis://app:se/cret@localhost:6379/0",  # the parser takes "se" for the port
        "redis://app:12/cret@localhost:6379/0",  # ... "12" for the port, "cret@…" for the path
        "redis://app:4711#cret@localhost/0",
        "redis://app:se?cret@localhost/0",
    ],
)
def test_a_password_that_the_parser_would_split_is_refused_unseen(dsn):
    with pytest.raises(InvalidDSNError, match="write them as %2F, %3F and %23") as caught:
        Client(dsn)
    message = str(caught.value)
    assert "'redis://app:***@localhost" in message
    assert "cret" not in message and "4711" not in message and "12" not in message


def test_a_percent_encoded_password_is_used_whole():
    client = Client("redis://app:se%2F%3Fcr%23et%40@localhost/0")
    assert client._redis.connection_pool.connection_kwargs["password"] == "se/?cr#et@"
    assert client.where == "redis://localhost:6379/0"


def test_a_host_the_parser_refuses_is_reported_unseen():
    with pytest.raises(InvalidDSNError, match="is malformed") as caught:
        Client("redis://app:secret@local\u2100host/0")  # a host NFKC would change
    assert "secret" not in str(caught.value)


def test_user_password_and_database_in_the_dsn(redis, queue_name):
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = raw(redis)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys="*", commands=["+@all"])
    try:
        client = Client(f"redis://{user}:{password}@{redis.host}:{redis.port}/5?prefix=dsn")
        client.push(queue_name, "t", "payload")
        assert raw(redis, db=5).hexists(client.keys(queue_name).data, "t")
        assert client.reserve(queue_name, CONSUMER).data == "payload"
        client.ack(queue_name, "t", CONSUMER)

        wrong = Client(f"redis://{user}:wrong@{redis.host}:{redis.port}/5")
        with pytest.raises(BackendError) as refused:
            wrong.len(queue_name)
        assert isinstance(refused.value.__cause__, redispy.AuthenticationError)
        assert "wrong" not in str(refused.value)
    finally:
        admin.acl_deluser(user)


def test_unix_socket_dsn(tmp_path, queue_name):
    server = redis_server(tmp_path)
    socket_path = tmp_path / "redis.sock"
    server.argv += ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    server.start()
    try:
        client = Client(f"unix://{socket_path}?db=3")
        client.push(queue_name, "t", "over the socket")
        assert raw(server, db=3).llen(client.keys(queue_name).ready) == 1
        assert client.reserve(queue_name, CONSUMER, timeout=1).data == "over the socket"
        client.close()
    finally:
        server.stop()


def test_tls_dsn(tmp_path, queue_name):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--dir", str(tmp_path)]
    server = ServerProcess("redis-server", args, port, tmp_path)
    server.start()
    try:
        client = Client(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
        client.push(queue_name, "t", "encrypted")
        assert client.reserve(queue_name, CONSUMER, timeout=1).data == "encrypted"

        # The certificate is checked: without its CA the connection is refused.
        with pytest.raises(BackendError, match="certificate verify failed"):
            Client(f"rediss://127.0.0.1:{port}/0").len(queue_name)
        assert Client(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none").len(queue_name) == 0
    finally:
        server.stop()


# Key layout.


def test_every_key_is_under_the_prefix_with_one_hash_tag_per_queue(redis):
    db = 12
    admin = raw(redis, db)
    admin.flushdb()  # this db belongs to this test
    queues = ["emails", "reports.daily:v2"]
    default = Client(dsn_for(redis, db, lease=30))
    custom = Client(dsn_for(redis, db, prefix="shop"))
    task_ids = set()
    for client in (default, custom):
        for queue_name in queues:
            ids = [f"{queue_name}-{n}" for n in range(5)]
            task_ids.update(ids)
            for task_id in ids[:3]:
                client.push(queue_name, task_id, "payload")
            client.push(queue_name, ids[3], "later", delay_until=time.time() + 60)
            client.reserve(queue_name, CONSUMER)
            client.keepalive(queue_name, CONSUMER)
            client.get(queue_name, ids[1], OTHER)
            client.add_dead_letter(queue_name, ids[1], "payload", "boom", OTHER)
            client.retry(queue_name, ids[0], CONSUMER, "again", delay_until=time.time() + 60)
            client.requeue_expired(queue_name)
            client.reserve(queue_name, CONSUMER)
            client.requeue_inflight(queue_name, CONSUMER, death="killed")
            client.finish(queue_name, ids[2], True, Outcome("{}", 60))
            # Held on the delayed task, of the same queue: its keys share the queue's slot.
            depends_on = Dependencies(((queue_name, ids[3]),), 60)
            client.push(queue_name, ids[4], "payload", depends_on=depends_on)

    keys = admin.keys("*")
    assert keys
    by_queue: dict[tuple[str, str], set[int]] = {}
    for key in keys:
        owner = [
            (prefix, queue_name)
            for prefix in ("alligator", "shop")
            for queue_name in queues
            if key.startswith(f"{prefix}:{{{queue_name}}}:")
        ]
        assert len(owner) == 1, f"{key!r} is not under a prefix and queue hash tag"
        by_queue.setdefault(owner[0], set()).add(key_slot(key.encode()))
        assert key not in task_ids
    assert len(by_queue) == 4
    assert "alligator:{emails}:deaths" in keys and "shop:{reports.daily:v2}:deaths" in keys
    assert "alligator:{emails}:result:emails-2" in keys
    assert "shop:{reports.daily:v2}:done:reports.daily:v2-2" in keys
    assert "alligator:{emails}:held" in keys
    assert "shop:{reports.daily:v2}:waiters:reports.daily:v2-3" in keys
    # One Redis Cluster slot per queue: its scripts never cross slots.
    assert all(len(slots) == 1 for slots in by_queue.values())


# Round trips and blocking.


def test_hot_path_is_one_command_per_call(redis, client, queue_name):
    client.push(queue_name, "warm", "up")  # loads the scripts once
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "warm", CONSUMER)
    with CommandLog(redis, 0) as sent:
        client.push(queue_name, "t", "payload")
        assert names(sent.read()) == ["EVALSHA"]
        assert client.reserve(queue_name, CONSUMER, timeout=1).task_id == "t"
        assert names(sent.read()) == ["EVALSHA"]
        client.ack(queue_name, "t", CONSUMER)
        assert names(sent.read()) == ["EVALSHA"]
        client.keepalive(queue_name, CONSUMER)
        assert names(sent.read()) == ["SET"]
        # Refusing an id that is already queued costs no extra round trip either.
        client.push(queue_name, "u", "payload")
        sent.read()
        with pytest.raises(DuplicateTaskError, match="already waiting or in flight"):
            client.push(queue_name, "u", "again")
        assert names(sent.read()) == ["EVALSHA"]


def test_a_busy_consumer_reserves_without_rewriting_its_lease(redis, client, queue_name):
    for n in range(3):
        client.push(queue_name, f"t{n}", "payload")
    client.reserve(queue_name, CONSUMER)  # registers the consumer and starts its lease
    with CommandLog(redis, 0, scripts=True) as sent:
        assert client.reserve(queue_name, CONSUMER).task_id == "t1"
        commands = names(sent.read())
    # The move is the only write: the heartbeat, not each reserve, keeps the lease.
    assert "LMOVE" in commands
    assert not {"SADD", "SET", "PEXPIRE"} & set(commands), commands
    # With less than half the lease left (a consumer without a heartbeat), a reserve renews it.
    lease_key = client.keys(queue_name).lease(CONSUMER)
    raw(redis).pexpire(lease_key, 20_000)
    client.reserve(queue_name, CONSUMER)
    assert raw(redis).pttl(lease_key) > 50_000


def test_a_swept_consumer_that_resumes_is_swept_again_when_it_dies(redis, prefix, queue_name):
    client = Client(dsn_for(redis, prefix=prefix, lease=0.3))
    client.push(queue_name, "t", "payload")
    assert client.reserve(queue_name, CONSUMER).task_id == "t"
    # CONSUMER stalls past its lease (a paused VM, say) and a sweep takes its task back.
    wait_for(lambda: client.requeue_expired(queue_name) == 1, message="CONSUMER's lease to end")
    # It resumes: its heartbeat renews the lease, its late ack changes nothing, and it
    # reserves the task again.
    client.keepalive(queue_name, CONSUMER)
    client.ack(queue_name, "t", CONSUMER)
    assert client.len(queue_name) == 1
    assert client.reserve(queue_name, CONSUMER).task_id == "t"
    # Then it dies for good: a sweep must still find the task it holds.
    wait_for(lambda: client.requeue_expired(queue_name) == 1, message="CONSUMER's lease to end")
    assert client.reserve(queue_name, OTHER).task_id == "t"


def test_idle_reserve_waits_on_the_server_not_in_a_polling_loop(redis, client, queue_name):
    client.reserve(queue_name, CONSUMER)  # loads the scripts once
    with CommandLog(redis, 0) as sent:
        started = time.monotonic()
        assert client.reserve(queue_name, CONSUMER, timeout=2.0) is None
        assert time.monotonic() - started >= 1.9
        commands = names(sent.read())
    # Per second at most: one reserve script, one BLMOVE, one fetch riding with it.
    assert "BLMOVE" in commands
    assert len(commands) <= 8, commands


def test_idle_waits_stay_inside_a_short_socket_timeout(redis, prefix, queue_name):
    client = Client(dsn_for(redis, prefix=prefix, socket_timeout=0.4))
    # Each wait on the server must end before the socket gives up on its reply.
    assert client.reserve(queue_name, CONSUMER, timeout=1.5) is None


def test_idle_reserve_gets_a_pushed_task_at_once(redis, client, queue_name):
    producer = Client(dsn_for(redis, prefix=client.prefix))
    got = {}

    def consume():
        got["task"] = client.reserve(queue_name, CONSUMER, timeout=5)
        got["at"] = time.monotonic()

    consumer = threading.Thread(target=consume)
    consumer.start()
    admin = raw(redis)
    wait_for(
        lambda: any(c["cmd"] == "blmove" for c in admin.client_list()),
        message="the reserve to block on the server",
    )
    pushed_at = time.monotonic()
    producer.push(queue_name, "t", "payload")
    consumer.join(10)
    assert got["task"].task_id == "t"
    # About one round trip; the bound only rules out waiting out a timeout or a poll.
    assert got["at"] - pushed_at < 0.1


def test_delayed_task_starts_on_time_while_reserve_is_blocked(redis, client, queue_name):
    producer = Client(dsn_for(redis, prefix=client.prefix))
    got = {}

    def consume():
        got["task"] = client.reserve(queue_name, CONSUMER, timeout=5)
        got["at"] = time.time()

    consumer = threading.Thread(target=consume)
    consumer.start()
    admin = raw(redis)
    wait_for(lambda: any(c["cmd"] == "blmove" for c in admin.client_list()))
    # Pushed after the consumer started waiting: no new push will wake it.
    due = time.time() + 0.6
    producer.push(queue_name, "later", "payload", delay_until=due)
    consumer.join(10)
    assert got["task"].task_id == "later"
    assert due <= got["at"] < due + 1.2


def test_reserve_wakes_for_a_known_delayed_task_at_its_time(client, queue_name):
    due = time.time() + 0.4
    client.push(queue_name, "later", "payload", delay_until=due)
    # The wait on the server ends when the task is due, not when a whole slice is over.
    assert client.reserve(queue_name, CONSUMER, timeout=5).task_id == "later"
    assert due <= time.time() < due + 0.3


# Deaths.


def test_deaths_live_in_one_hash_per_queue_as_count_and_reason(redis, client, queue_name):
    keys = client.keys(queue_name)
    admin = raw(redis, encoding_errors="surrogateescape")
    client.push(queue_name, "t", "payload")
    client.reserve(queue_name, CONSUMER)
    reason = "pid 7: killed by SIGKILL while running it, \u00e9t\u00e9 \udcff"
    client.requeue_inflight(queue_name, CONSUMER, death=reason)
    assert admin.hgetall(keys.deaths) == {"t": f"1:{reason}"}
    client.reserve(queue_name, CONSUMER)
    client.requeue_inflight(queue_name, CONSUMER, death="pid 8 hung")
    assert admin.hgetall(keys.deaths) == {"t": "2:pid 8 hung"}
    client.reserve(queue_name, CONSUMER)
    client.requeue_inflight(queue_name, CONSUMER, death=reason)
    reserved = client.reserve(queue_name, CONSUMER)
    assert (reserved.deaths, reserved.last_death) == (3, reason)
    client.ack(queue_name, "t", CONSUMER)
    assert admin.exists(keys.deaths) == 0


def test_a_counted_task_comes_back_in_one_round_trip(redis, client, queue_name):
    client.push(queue_name, "warm", "up")  # loads the scripts once
    raw(redis).script_load(client._fetch.script)  # the one only a BLMOVE that got a task runs
    client.reserve(queue_name, CONSUMER)
    client.requeue_inflight(queue_name, CONSUMER, death="pid 1 killed by SIGKILL")
    with CommandLog(redis, 0) as sent:
        reserved = client.reserve(queue_name, CONSUMER)
        assert names(sent.read()) == ["EVALSHA"]
    assert (reserved.deaths, reserved.last_death) == (1, "pid 1 killed by SIGKILL")
    client.requeue_inflight(queue_name, CONSUMER, death="pid 2 killed by SIGKILL")
    client.reserve(queue_name, CONSUMER)  # CONSUMER holds the task while OTHER waits
    got = {}
    waiting = threading.Thread(
        target=lambda: got.update(task=client.reserve(queue_name, OTHER, timeout=5))
    )
    admin = raw(redis)
    admin.ping()
    with CommandLog(redis, 0) as sent:
        waiting.start()
        wait_for(
            lambda: any(c["cmd"] == "blmove" for c in admin.client_list()),
            message="the reserve to block on the server",
        )
        # CONSUMER dies: its task goes to the waiting BLMOVE, and the fetch script riding
        # with it reads the task's deaths.
        client.requeue_inflight(queue_name, CONSUMER, death="pid 3 killed by SIGKILL")
        waiting.join(10)
        commands = [name for name in names(sent.read()) if name != "HELLO"]  # new connections
    assert got["task"].task_id == "warm"
    assert (got["task"].deaths, got["task"].last_death) == (3, "pid 3 killed by SIGKILL")
    # The reserve script, the BLMOVE and its fetch script; the requeue script. Nothing more.
    assert sorted(commands) == ["BLMOVE", "EVALSHA", "EVALSHA", "EVALSHA"], commands


def test_an_expired_sweep_counts_the_tasks_of_each_dead_consumer(redis, prefix, queue_name):
    client = Client(dsn_for(redis, prefix=prefix, lease=0.5))
    consumers = [f"host:{n}:c" for n in range(5)]
    for n, consumer_id in enumerate(consumers):
        client.push(queue_name, f"t{n}", "payload")
        client.reserve(queue_name, consumer_id)
    alive = consumers[1::2]

    def swept() -> int:
        for consumer_id in alive:
            client.keepalive(queue_name, consumer_id)
        return client.requeue_expired(queue_name)

    wait_for(lambda: swept() == 3, message="three leases to end")
    deaths = raw(redis).hgetall(client.keys(queue_name).deaths)
    assert deaths == {f"t{n}": f"1:{EXPIRED_LEASE_DEATH}" for n in (0, 2, 4)}
    assert client.requeue_inflight(queue_name, alive[0]) == 1  # a graceful stop: no death
    assert raw(redis).hlen(client.keys(queue_name).deaths) == 3


# Outcomes.


def outcome(value="42", ttl: float | None = 60.0) -> Outcome:
    return Outcome(f'{{"status":1,"value":{value}}}', ttl)


def test_an_ack_keeps_its_outcome_in_the_script_that_ends_the_task(redis, client, queue_name):
    keys = client.keys(queue_name)
    for task_id in ("warm", "kept", "plain", "lost"):
        client.push(queue_name, task_id, "payload")
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "warm", CONSUMER, outcome())  # loads the script once
    for _ in range(3):
        client.reserve(queue_name, CONSUMER)
    with CommandLog(redis, 0) as sent:
        client.ack(queue_name, "kept", CONSUMER, outcome(ttl=90))
        assert names(sent.read()) == ["EVALSHA"]
    with CommandLog(redis, 0, scripts=True) as sent:
        client.ack(queue_name, "kept", CONSUMER, outcome())  # acked already: keeps nothing
        assert names(sent.read()) == ["EVALSHA", "LREM"]
        # Without an outcome, an ack runs what it ran before outcomes existed, and one look
        # for tasks held on it.
        client.ack(queue_name, "plain", CONSUMER)
        assert names(sent.read()) == ["EVALSHA", "LREM", "HDEL", "HDEL", "EXISTS"]
        client.ack(queue_name, "lost", CONSUMER, outcome(ttl=90))
        commands = sent.read()
    # The task leaves the in-flight list, its record is kept and its waiters woken: one step.
    assert names(commands) == [
        "EVALSHA",
        "LREM",
        "HDEL",
        "HDEL",
        "SET",
        "LPUSH",
        "PEXPIRE",
        "EXISTS",
    ]
    assert commands[4] == f'SET {keys.result("lost")} {{"status":1,"value":42}} PX 90000'
    assert commands[5:] == [
        f"LPUSH {keys.done('lost')} 1",
        f"PEXPIRE {keys.done('lost')} {DONE_MS}",
        f"EXISTS {keys.waiters('lost')}",
    ]
    assert client.result(queue_name, "kept") == '{"status":1,"value":42}'


def test_an_outcome_expires_by_the_ttl_on_its_key(redis, client, queue_name):
    admin = raw(redis)
    keys = client.keys(queue_name)
    client.finish(queue_name, "day", True, outcome(ttl=86400))
    assert 86_000_000 < admin.pttl(keys.result("day")) <= 86_400_000
    client.finish(queue_name, "forever", True, outcome(ttl=None))
    assert admin.pttl(keys.result("forever")) == -1
    # Stored again without a ttl, a record loses the one it had.
    client.finish(queue_name, "day", True, outcome(ttl=None))
    assert admin.pttl(keys.result("day")) == -1
    # A tiny ttl still expires (PX 0 is an error; no PX would keep it for ever).
    client.finish(queue_name, "tiny", True, outcome(ttl=0.0001))
    wait_for(lambda: admin.exists(keys.result("tiny")) == 0, timeout=2)
    # The ttl a task's cancel and dead letter give is on its key too.
    client.push(queue_name, "canceled", "payload")
    client.cancel(queue_name, "canceled", outcome(ttl=30))
    assert 25_000 < admin.pttl(keys.result("canceled")) <= 30_000
    client.add_dead_letter(queue_name, "failed", "payload", "boom", outcome=outcome(ttl=30))
    assert 25_000 < admin.pttl(keys.result("failed")) <= 30_000


def test_the_done_list_expires_and_a_wait_leaves_no_key(redis, client, queue_name):
    admin = raw(redis)
    keys = client.keys(queue_name)
    client.finish(queue_name, "t", True, outcome(ttl=None))
    assert admin.lrange(keys.done("t"), 0, -1) == ["1"]
    assert 0 < admin.pttl(keys.done("t")) <= DONE_MS
    # A waiter woken by it passes the token on, with the list's expiry renewed.
    admin.delete(keys.result("t"), keys.done("t"))
    threading.Timer(0.2, client.finish, (queue_name, "t", True, outcome(ttl=None))).start()
    assert client.result(queue_name, "t", timeout=5) is not None
    assert 0 < admin.pttl(keys.done("t")) <= DONE_MS
    # Waiting for an outcome that never comes writes nothing.
    assert client.result(queue_name, "never", timeout=0.2) is None
    assert admin.keys(f"{client.prefix}:*never*") == []


def test_a_waiting_result_blocks_on_the_server_not_in_a_polling_loop(redis, client, queue_name):
    raw(redis).script_load(client._after_wake.script)  # the one a waiting result runs
    client.result(queue_name, "t")  # connected now, so its handshake is not logged
    with CommandLog(redis, 0) as sent:
        started = time.monotonic()
        assert client.result(queue_name, "t", timeout=2.0) is None
        assert time.monotonic() - started >= 1.9
        commands = names(sent.read())
    # One GET, then per second at most one BLPOP and the script riding with it.
    assert commands[0] == "GET" and "BLPOP" in commands
    assert commands.count("GET") == 1 and len(commands) <= 7, commands
    got = {}

    def wait() -> None:
        got["record"] = client.result(queue_name, "t", timeout=5)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    admin = raw(redis)
    wait_for(
        lambda: any(c["cmd"] == "blpop" for c in admin.client_list()),
        message="the result to block on the server",
    )
    stored_at = time.monotonic()
    Client(dsn_for(redis, prefix=client.prefix)).finish(queue_name, "t", True, outcome())
    waiter.join(10)
    assert got["record"] == '{"status":1,"value":42}'
    # About one round trip; the bound only rules out waiting out a slice or a poll.
    assert got["at"] - stored_at < 0.2


def test_every_waiter_wakes_for_one_outcome(redis, client, queue_name):
    waiters = [Client(dsn_for(redis, prefix=client.prefix)) for _ in range(4)]
    got: dict[int, tuple] = {}

    def wait(n: int) -> None:
        got[n] = (waiters[n].result(queue_name, "t", timeout=10), time.monotonic())

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(len(waiters))]
    for thread in threads:
        thread.start()
    admin = raw(redis)
    wait_for(
        lambda: sum(c["cmd"] == "blpop" for c in admin.client_list()) == len(waiters),
        message="every waiter to block on the server",
    )
    stored_at = time.monotonic()
    client.finish(queue_name, "t", True, outcome())
    for thread in threads:
        thread.join(15)
    assert [record for record, _ in got.values()] == ['{"status":1,"value":42}'] * len(waiters)
    # One token woke them all, each passing it on: none waited out its one-second slice.
    assert max(at for _, at in got.values()) - stored_at < 0.5
    for waiter in waiters:
        waiter.close()


def test_a_waiting_result_survives_a_script_flush(redis, client, queue_name):
    raw(redis).script_flush()  # as after a restart: the script riding with BLPOP is gone
    assert client.result(queue_name, "t", timeout=0.1) is None
    raw(redis).script_flush()
    threading.Timer(0.3, client.finish, (queue_name, "t", True, outcome())).start()
    assert client.result(queue_name, "t", timeout=5) == '{"status":1,"value":42}'


def test_a_push_and_a_dead_letter_requeue_forget_the_outcome_in_their_scripts(
    redis, client, queue_name
):
    admin = raw(redis)
    keys = client.keys(queue_name)
    client.push(queue_name, "warm", "up")  # loads the scripts once
    client.requeue_dead_letters(queue_name)
    client.requeue_dead_letters(queue_name, ["warm"])
    client.finish(queue_name, "t", True, outcome())
    with CommandLog(redis, 0) as sent:
        client.push(queue_name, "t", "payload")
        assert names(sent.read()) == ["EVALSHA"]
    assert admin.exists(keys.result("t"), keys.done("t")) == 0
    for requeue in ([], ["t"]):
        client.reserve(queue_name, CONSUMER)  # "warm", then "t"
        client.reserve(queue_name, CONSUMER)
        client.add_dead_letter(queue_name, "t", "payload", "boom", CONSUMER, outcome())
        client.ack(queue_name, "warm", CONSUMER)
        client.push(queue_name, "warm", "up")
        assert admin.exists(keys.result("t"), keys.done("t")) == 2
        with CommandLog(redis, 0) as sent:
            assert client.requeue_dead_letters(queue_name, requeue or None) == 1
            assert names(sent.read()) == ["EVALSHA"]
        assert admin.exists(keys.result("t"), keys.done("t")) == 0
        assert client.locate(queue_name, "t") == Located(READY, "payload")
        client.cancel(queue_name, "warm")
        client.push(queue_name, "warm", "up")


def test_locate_is_one_script_that_looks_in_each_consumer_list(redis, client, queue_name):
    keys = client.keys(queue_name)
    for n in range(200):
        client.push(queue_name, f"t{n}", f"p{n}")
    consumers = [f"host:{n}:c" for n in range(3)]
    for consumer_id in consumers:
        client.reserve(queue_name, consumer_id)
    client.locate(queue_name, "t0")  # loads the script once
    with CommandLog(redis, 0) as sent:
        assert client.locate(queue_name, "t150") == Located(READY, "p150")
        assert names(sent.read()) == ["EVALSHA"]
    with CommandLog(redis, 0, scripts=True) as sent:
        assert client.locate(queue_name, "t150") == Located(READY, "p150")
        commands = sent.read()
    # One LPOS per consumer's in-flight list; the ready list is never searched.
    looked_in = sorted(command.split()[1] for command in commands if command.startswith("LPOS"))
    assert looked_in == sorted(keys.inflight(consumer_id) for consumer_id in consumers)
    assert not any(keys.ready in command for command in commands), commands
    assert client.locate(queue_name, "t1") == Located(INFLIGHT, "p1")
    # A place wins over a kept outcome: a dead task whose failure was kept is dead.
    client.add_dead_letter(queue_name, "t2", "p2", "boom", consumers[2], outcome())
    assert client.locate(queue_name, "t2") == Located(DEAD, "p2")
    client.purge_dead_letters(queue_name)
    assert client.locate(queue_name, "t2") == Located(FINISHED, '{"status":1,"value":42}')


# Dependencies.


def on(*dependencies, ttl=60.0, elsewhere=False) -> Dependencies:
    return Dependencies(tuple(dependencies), ttl, elsewhere)


def test_a_plain_push_runs_what_it_ran_before_dependencies(redis, client, queue_name):
    client.push(queue_name, "warm", "up")  # loads the script once
    with CommandLog(redis, 0, scripts=True) as sent:
        client.push(queue_name, "t", "payload")
        commands = names(sent.read())
    assert commands == ["EVALSHA", "HEXISTS", "HEXISTS", "HSET", "RPUSH", "DEL"]


def test_a_held_task_lives_in_the_held_hash_and_the_waiters_lists(redis, client, queue_name):
    admin = raw(redis)
    keys = client.keys(queue_name)
    other_queue = queue_name + "-other"
    other = client.keys(other_queue)
    client.push(queue_name, "a", "payload")
    client.push(other_queue, "b", "payload")
    client.push(queue_name, "warm", "up", depends_on=on())  # loads the script once
    with CommandLog(redis, 0) as sent:
        client.push(
            queue_name, "c", "payload-c", depends_on=on((queue_name, "a"), (other_queue, "b"))
        )
        assert names(sent.read()) == ["EVALSHA"]
    # Its payload is where every task's is, so a push of its id is refused as any other.
    assert admin.hget(keys.data, "c") == "payload-c"
    held = json.loads(admin.hget(keys.held, "c"))
    assert held == {"pending": 2, "due": "", "ttl": "60000", "token": held["token"]}
    entry = [queue_name, "c", held["token"]]
    assert [json.loads(e) for e in admin.lrange(keys.waiters("a"), 0, -1)] == [entry]
    assert [json.loads(e) for e in admin.lrange(other.waiters("b"), 0, -1)] == [entry]
    assert client.locate(queue_name, "c") == Located(HELD, "payload-c")
    client.reserve(queue_name, CONSUMER)  # "warm"
    client.reserve(queue_name, CONSUMER)  # "a"
    client.ack(queue_name, "a", CONSUMER)
    assert json.loads(admin.hget(keys.held, "c"))["pending"] == 1
    assert admin.exists(keys.waiters("a")) == 0
    client.reserve(other_queue, CONSUMER)
    # The ack that ends the last dependency releases the task, in its one script.
    with CommandLog(redis, 0, scripts=True) as sent:
        client.ack(other_queue, "b", CONSUMER)
        commands = sent.read()
    assert names(commands)[0] == "EVALSHA" and names(commands).count("EVALSHA") == 1
    assert f"RPUSH {keys.ready} c" in commands
    assert admin.hlen(keys.held) == 0 and admin.exists(other.waiters("b")) == 0
    assert client.reserve(queue_name, CONSUMER).task_id == "c"


def test_a_task_pushed_again_is_not_released_by_its_canceled_holding(client, queue_name):
    for task_id in ("a", "b"):
        client.push(queue_name, task_id, "payload")
    client.push(queue_name, "c", "payload", depends_on=on((queue_name, "a")))
    client.cancel(queue_name, "c")  # leaves its entry on the waiters list of "a"
    client.push(queue_name, "c", "payload", depends_on=on((queue_name, "b")))
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "a", CONSUMER)
    assert client.locate(queue_name, "c").place == HELD
    client.reserve(queue_name, CONSUMER)
    client.ack(queue_name, "b", CONSUMER)
    assert client.locate(queue_name, "c").place == READY


def test_a_circle_of_pointers_is_waited_on_not_followed_for_ever(client, queue_name):
    client.finish(queue_name, "1", True, Outcome('{"status":4,"moved_to":"2"}', 60))
    client.finish(queue_name, "2", True, Outcome('{"status":4,"moved_to":"1"}', 60))
    client.push(queue_name, "b", "payload", depends_on=on((queue_name, "1")))
    assert client.locate(queue_name, "b").place == HELD


def test_drop_all_drops_every_held_task_and_names_each_in_the_records(redis, client, queue_name):
    other_queue = queue_name + "-other"
    keys = client.keys(queue_name)
    # More held tasks than one slice of the script, on a dependency that lives elsewhere.
    for n in range(1500):
        client.push(queue_name, f"h{n}", "p", depends_on=on((other_queue, "x"), elsewhere=True))
    odd = 'q"/\\' + b"\xff".decode("utf-8", "surrogateescape")
    client.push(queue_name, odd, "p")
    for task_id in ("h7", odd):
        client.push(other_queue, f"after-{task_id}", "p", depends_on=on((queue_name, task_id)))
    assert client.len(queue_name) == 1501
    client.drop_all(queue_name)
    assert client.len(queue_name) == 0
    assert raw(redis).hlen(keys.data) == 0 and raw(redis).exists(keys.held) == 0
    for task_id in ("h7", odd):
        record = json.loads(client.result(other_queue, f"after-{task_id}"))
        expected = json.loads(dependency_canceled(queue_name, task_id))
        assert record["status"] == expected["status"] and record["error"] == expected["error"]
    assert client.len(other_queue) == 0
    assert client.finish(other_queue, "x", True, None) == []


# Leases, requeues and the lost-reply rescue.


def test_requeued_tasks_go_to_the_front_oldest_first(redis, prefix, queue_name):
    client = Client(dsn_for(redis, prefix=prefix, lease=0.3))
    for n in range(4):
        client.push(queue_name, f"t{n}", f"p{n}")
    for _ in range(3):
        client.reserve(queue_name, CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 3
    order = [client.reserve(queue_name, OTHER).task_id for _ in range(4)]
    assert order == ["t0", "t1", "t2", "t3"]

    client.push(queue_name, "t4", "p4")
    # OTHER never renews its lease: the sweep returns its four tasks ahead of t4.
    wait_for(lambda: client.requeue_expired(queue_name) == 4, message="OTHER's lease to end")
    order = [client.reserve(queue_name, CONSUMER).task_id for _ in range(5)]
    assert order == ["t0", "t1", "t2", "t3", "t4"]


def test_a_lost_reserve_reply_does_not_strand_the_task(redis, prefix, queue_name):
    client = Client(dsn_for(redis, prefix=prefix, socket_timeout=0.3))
    client.push(queue_name, "kept", "p0")
    client.push(queue_name, "lost", "p1")
    assert client.reserve(queue_name, CONSUMER).task_id == "kept"

    admin = raw(redis)
    probe = raw(redis, socket_timeout=0.05, retry=Retry(NoBackoff(), 0))
    busy = threading.Thread(target=lambda: admin.eval(BUSY_SCRIPT, 0, 1000))
    busy.start()

    def server_is_busy():
        try:
            probe.ping()
        except redispy.TimeoutError:
            return True
        return False

    wait_for(server_is_busy, message="the server to be busy")
    with pytest.raises(BackendError, match="Timeout"):
        client.reserve(queue_name, CONSUMER)
    busy.join(10)
    # The server ran the reserve after all: the task sits with a live consumer that never
    # saw it, and whose lease its heartbeat would keep renewing.
    inflight = client.keys(queue_name).inflight(CONSUMER)
    wait_for(lambda: raw(redis).lrange(inflight, 0, -1) == ["lost", "kept"])

    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved.task_id == "lost"
    # Its consumer is alive: returning it was no death.
    assert (reserved.deaths, reserved.last_death) == (0, "")
    assert raw(redis).exists(client.keys(queue_name).deaths) == 0
    # The task the caller did get stays with it.
    assert client.requeue_inflight(queue_name, CONSUMER) == 2


def test_one_client_shared_by_a_consumer_and_its_heartbeat(redis, prefix, queue_name):
    client = Client(dsn_for(redis, prefix=prefix, lease=0.5))
    count = 300
    for n in range(count):
        client.push(queue_name, f"t{n}", f"p{n}")
    done = threading.Event()
    errors = []

    def heartbeat():
        while not done.is_set():
            try:
                client.keepalive(queue_name, CONSUMER)
                client.keepalive(queue_name, OTHER)
                client.requeue_expired(queue_name)
            except Exception as exc:  # reported below, not lost in the thread
                errors.append(exc)

    def consume(consumer_id, seen):
        while (reserved := client.reserve(queue_name, consumer_id, timeout=0.2)) is not None:
            seen.append(reserved.task_id)
            client.ack(queue_name, reserved.task_id, consumer_id)

    beat = threading.Thread(target=heartbeat)
    beat.start()
    seen_here, seen_there = [], []
    other = threading.Thread(target=consume, args=(OTHER, seen_there))
    other.start()
    consume(CONSUMER, seen_here)
    other.join(30)
    done.set()
    beat.join(10)
    assert errors == []
    assert sorted(seen_here + seen_there) == sorted(f"t{n}" for n in range(count))
    assert client.len(queue_name) == 0
    assert raw(redis).hlen(client.keys(queue_name).data) == 0


def test_drop_all_keeps_inflight_and_dead_letters(redis, client, queue_name):
    client.push(queue_name, "running", "p")
    client.reserve(queue_name, CONSUMER)
    client.add_dead_letter(queue_name, "dead", "d", "boom")
    pipe = raw(redis).pipeline()
    keys = client.keys(queue_name)
    for n in range(2500):  # more than one slice of the script
        pipe.hset(keys.data, f"t{n}", "p").rpush(keys.ready, f"t{n}")
    pipe.execute()
    client.push(queue_name, "later", "p", delay_until=time.time() + 60)
    client.drop_all(queue_name)
    assert client.len(queue_name) == 0
    assert raw(redis).hkeys(keys.data) == ["running"]
    client.ack(queue_name, "running", CONSUMER)
    assert [d.task_id for d in client.list_dead_letters(queue_name)] == ["dead"]


def test_dead_letters_keep_any_text(client, queue_name):
    payload = '{"args": ["h\u00e9llo \u2713 \U0001f40a", "a\\"quote"]}'
    client.add_dead_letter(queue_name, "t", payload, "ValueError: caf\u00e9")
    [dead] = client.list_dead_letters(queue_name)
    assert (dead.data, dead.error) == (payload, "ValueError: caf\u00e9")
    assert client.requeue_dead_letters(queue_name) == 1
    assert client.reserve(queue_name, CONSUMER).data == payload


# Bytes that are not UTF-8, written straight into Redis by another program.
RAW_ID = b"id-\xc3\x28"
RAW_PAYLOAD = b'\xff\xfe{"callable": "\x80"}'


def check_bytes_that_are_not_utf8_round_trip(host: str, port: int, queue_name: str) -> None:
    """
    A task whose id and payload are not UTF-8 is reserved, dead-lettered, listed,
    requeued, retried and acked; Redis holds the same bytes all along. Also run in a
    process without hiredis.
    """
    client = Client(f"redis://{host}:{port}/0?prefix=test{uuid.uuid4().hex[:12]}")
    server = redispy.Redis(host, port)  # bytes in, bytes out
    keys = client.keys(queue_name)
    task_id = RAW_ID.decode("utf-8", "surrogateescape")
    data = RAW_PAYLOAD.decode("utf-8", "surrogateescape")
    server.hset(keys.data, RAW_ID, RAW_PAYLOAD)
    server.rpush(keys.ready, RAW_ID)

    reserved = client.reserve(queue_name, CONSUMER)
    assert reserved == Reserved(task_id, data)
    client.add_dead_letter(queue_name, reserved.task_id, reserved.data, "undecodable", CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    [dead] = client.list_dead_letters(queue_name)
    assert (dead.task_id, dead.data, dead.error) == (task_id, data, "undecodable")
    assert client.requeue_dead_letters(queue_name, [task_id]) == 1
    assert server.hgetall(keys.data) == {RAW_ID: RAW_PAYLOAD}
    assert server.lrange(keys.ready, 0, -1) == [RAW_ID]

    assert client.reserve(queue_name, CONSUMER) == reserved
    client.retry(queue_name, task_id, CONSUMER, data)
    assert server.hgetall(keys.data) == {RAW_ID: RAW_PAYLOAD}
    assert client.get(queue_name, task_id, CONSUMER) == reserved
    client.ack(queue_name, task_id, CONSUMER)
    assert client.requeue_inflight(queue_name, CONSUMER) == 0
    assert server.hlen(keys.data) == 0

    client.push(queue_name, task_id, data)
    assert server.hgetall(keys.data) == {RAW_ID: RAW_PAYLOAD}
    assert client.cancel(queue_name, task_id) == data

    # Outcomes, and where a task is, keep the same bytes.
    record = RAW_PAYLOAD.decode("utf-8", "surrogateescape")
    client.push(queue_name, task_id, data)
    assert client.locate(queue_name, task_id) == Located(READY, data)
    client.reserve(queue_name, CONSUMER)
    assert client.locate(queue_name, task_id) == Located(INFLIGHT, data)
    client.add_dead_letter(queue_name, task_id, data, "boom", CONSUMER, Outcome(record, 60))
    assert client.locate(queue_name, task_id) == Located(DEAD, data)
    assert server.get(keys.result(task_id)) == RAW_PAYLOAD
    assert client.result(queue_name, task_id) == record
    client.purge_dead_letters(queue_name)
    assert client.locate(queue_name, task_id) == Located(FINISHED, record)
    client.close()
    server.close()


def test_bytes_that_are_not_utf8_round_trip_with_hiredis(redis, queue_name):
    # hiredis reads replies and writes commands: both must cope.
    assert redispy.utils.HIREDIS_AVAILABLE, "the test extra installs hiredis"
    check_bytes_that_are_not_utf8_round_trip(redis.host, redis.port, queue_name)


def test_bytes_that_are_not_utf8_round_trip_without_hiredis(redis, queue_name):
    # redis-py's own parser and command packer, in a process where hiredis cannot load.
    code = (
        "import sys\n"
        "sys.modules['hiredis'] = None\n"
        "import redis.utils\n"
        "assert not redis.utils.HIREDIS_AVAILABLE\n"
        "from tests.test_redis_backend import check_bytes_that_are_not_utf8_round_trip\n"
        "check_bytes_that_are_not_utf8_round_trip(sys.argv[1], int(sys.argv[2]), sys.argv[3])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, redis.host, str(redis.port), queue_name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_an_idle_reserve_gets_bytes_that_are_not_utf8(redis, client, queue_name):
    # Through the blocking path: BLMOVE, then the fetch script riding with it.
    got = {}
    consumer = threading.Thread(
        target=lambda: got.update(task=client.reserve(queue_name, CONSUMER, timeout=5))
    )
    consumer.start()
    admin = raw(redis)
    wait_for(
        lambda: any(c["cmd"] == "blmove" for c in admin.client_list()),
        message="the reserve to block on the server",
    )
    server = redispy.Redis(redis.host, redis.port)
    keys = client.keys(queue_name)
    server.hset(keys.data, RAW_ID, RAW_PAYLOAD)
    server.rpush(keys.ready, RAW_ID)
    consumer.join(10)
    decoded = (
        RAW_ID.decode("utf-8", "surrogateescape"),
        RAW_PAYLOAD.decode("utf-8", "surrogateescape"),
    )
    assert got["task"] == Reserved(*decoded)


def test_an_id_is_free_again_once_its_task_is_gone(client, queue_name):
    client.push(queue_name, "same", "first")
    client.reserve(queue_name, CONSUMER)
    with pytest.raises(DuplicateTaskError):
        client.push(queue_name, "same", "second")
    # The refused push left the running task whole: its ack removes it, and nothing else.
    client.ack(queue_name, "same", CONSUMER)
    client.push(queue_name, "same", "second")
    assert client.reserve(queue_name, CONSUMER).data == "second"
    client.add_dead_letter(queue_name, "same", "second", "boom", CONSUMER)
    with pytest.raises(DuplicateTaskError, match="purge the dead letters first"):
        client.push(queue_name, "same", "third")
    client.purge_dead_letters(queue_name)
    client.push(queue_name, "same", "third")
    assert client.reserve(queue_name, CONSUMER).data == "third"


def test_an_id_without_a_payload_is_skipped(redis, client, queue_name):
    # E.g. a list edited by hand: there is nothing to run, and no task may come out empty.
    keys = client.keys(queue_name)
    raw(redis).rpush(keys.ready, "stray")
    raw(redis).hset(keys.deaths, "stray", "2:killed")
    client.push(queue_name, "t", "payload")
    assert client.reserve(queue_name, CONSUMER).task_id == "t"
    assert client.reserve(queue_name, CONSUMER) is None
    assert client.requeue_inflight(queue_name, CONSUMER) == 1
    # Its deaths went with it: a task pushed under that id starts at 0.
    assert raw(redis).hexists(keys.deaths, "stray") == 0


def test_gator_on_redis(redis, prefix, queue_name, tmp_path):
    gator = Gator(dsn_for(redis, prefix=prefix), queue_name=queue_name)
    record = str(tmp_path / "ran.txt")
    first = gator.task(tasks.append_line, record, "first")
    second = gator.task(tasks.append_line, record, "second")
    with gator.options(delay_by=60) as opts:
        third = opts.task(tasks.append_line, record, "third")
    assert gator.len() == 3
    assert gator.cancel(second.task_id).func_kwargs == {} and gator.len() == 2
    assert gator.get(third.task_id).result == "third"
    assert gator.pop().task_id == first.task_id
    assert gator.len() == 0 and gator.pop() is None
    assert tasks.lines(record) == ["third", "first"]


# Workers in other processes.


def test_a_worker_runs_tasks_in_fifo_order_and_delayed_ones_on_time(
    redis, prefix, queue_name, tmp_path
):
    dsn = dsn_for(redis, prefix=prefix)
    gator = Gator(dsn, queue_name=queue_name)
    record = str(tmp_path / "ran.txt")
    due = time.time() + 2.5
    with gator.options(delay_until=due) as opts:
        opts.task(tasks.append_line, record, "late")
    queued = [gator.task(tasks.append_line, record, n) for n in range(20)]
    gator.cancel(queued[5].task_id)
    assert gator.get(queued[7].task_id).result == 7  # runs here, at once
    assert gator.len() == 19
    worker = start_latergator(dsn, queue_name, log_path=tmp_path / "worker.log")
    try:
        expected = ["7"] + [str(n) for n in range(20) if n not in (5, 7)]
        wait_for(lambda: len(tasks.lines(record)) == len(expected), timeout=15)
        assert tasks.lines(record) == expected
        assert time.time() < due  # so "late" has not run early
        wait_for(lambda: len(tasks.lines(record)) == len(expected) + 1, timeout=15)
        assert time.time() >= due
        assert tasks.lines(record)[-1] == "late"
        assert gator.len() == 0
    finally:
        kill_process(worker)


def test_a_redis_restart_under_an_idle_worker(tmp_path, queue_name):
    server = redis_server(tmp_path)
    server.start()
    dsn = dsn_for(server)
    log_path = tmp_path / "worker.log"
    record = str(tmp_path / "ran.txt")
    gator = Gator(dsn, queue_name=queue_name)
    quiet = Gator(dsn, queue_name=queue_name)
    worker = start_latergator(dsn, queue_name, log_path=log_path)
    try:
        gator.task(tasks.append_line, record, "before")
        wait_for(lambda: tasks.lines(record) == ["before"], timeout=15)
        assert quiet.len() == 0  # it holds a connection now, and is silent while Redis is down

        server.stop()
        wait_for(lambda: "Queue backend unavailable" in log_path.read_text(), timeout=15)
        # The producer learns its task was not stored, and why.
        with pytest.raises(BackendError, match=f"Redis at redis://127.0.0.1:{server.port}"):
            gator.task(tasks.append_line, record, "lost")
        server.start()

        # The quiet producer's pooled connection died with the server; it reconnects unasked.
        quiet.task(tasks.append_line, record, "after")
        wait_for(lambda: tasks.lines(record) == ["before", "after"], timeout=15)
        assert worker.poll() is None
        # It backed off instead of spinning: a handful of lines, not hundreds.
        assert log_path.read_text().count("Queue backend unavailable") <= 10
    finally:
        kill_process(worker)
        server.stop()


def test_a_producer_gets_backend_error_when_redis_is_down(queue_name):
    gator = Gator(f"redis://127.0.0.1:{free_port()}/0", queue_name=queue_name)
    with pytest.raises(BackendError, match="failed to store task") as raised:
        gator.task(tasks.add, 1, 2)
    assert isinstance(raised.value.__cause__, redispy.ConnectionError)
