"""
``locmem://`` — queues in this process's memory, for development and tests.

Every client built from the same DSN in one process shares the same queues, so a
producer ``Gator`` and a ``Worker`` in one test see each other's tasks. Nothing crosses
a process boundary or survives a restart. Thread-safe; an idle ``reserve`` waits on a
condition variable, not a sleep loop.

Delivery: FIFO within a queue; at-least-once within the process (in-flight tasks return
to the front on ``requeue_inflight`` or when their consumer's lease expires).

Dependencies: a held task waits in its queue's ``held`` dict with the count of tasks it
still waits for; the tasks held on a task are listed under its id in its queue's
``waiters``. Every step happens under the store's one lock, so a task's end and the release
(or cancel) of the tasks held on it are one step.

Deaths: each queue keeps, in a dict beside its tasks, the deaths counted for a task (by
``requeue_inflight`` with a ``death``, and by ``requeue_expired``) and the latest reason;
a task that leaves the queue takes its entry with it, and ``retry`` and
``requeue_dead_letters`` remove it.
"""

import heapq
import itertools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..constants import SUCCESS
from ..exceptions import DuplicateTaskError, UnknownTaskError
from ..outcomes import dependency_canceled
from . import (
    DEAD,
    DELAYED,
    EXPIRED_LEASE_DEATH,
    FINISHED,
    HELD,
    INFLIGHT,
    READY,
    DeadLetter,
    Dependencies,
    Located,
    Outcome,
    Reserved,
    dsn_options,
    storable_text,
)
from . import Client as BaseClient


@dataclass
class _Held:
    """A task held until its dependencies succeed."""

    data: str
    pending: int  # dependencies not yet succeeded
    delay_until: float | None
    ttl: float | None  # of its outcome, should a dependency fail


@dataclass
class _Queue:
    ready: OrderedDict = field(default_factory=OrderedDict)  # task_id -> data, front first
    delayed: list = field(default_factory=list)  # heap of (due, seq, task_id)
    delayed_data: dict = field(default_factory=dict)  # task_id -> data
    inflight: dict = field(default_factory=dict)  # task_id -> (consumer_id, data)
    dead: OrderedDict = field(default_factory=OrderedDict)  # task_id -> DeadLetter
    deaths: dict = field(default_factory=dict)  # task_id -> (deaths, last death); none: 0
    results: dict = field(default_factory=dict)  # task_id -> (record, monotonic expiry|None)
    held: dict = field(default_factory=dict)  # task_id -> _Held
    # task_id -> [(queue, task_id, _Held) of each task held on it]
    waiters: dict = field(default_factory=dict)


class _Store:
    """The queues of one DSN, guarded by one condition."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.lease_ends: dict[str, float] = {}  # consumer_id -> monotonic deadline
        self.sequence = itertools.count()

    def queue(self, name: str) -> _Queue:
        if name not in self.queues:
            self.queues[name] = _Queue()
        return self.queues[name]


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(conn_string: str) -> _Store:
    key = conn_string.split("?", 1)[0]
    with _stores_lock:
        if key not in _stores:
            _stores[key] = _Store()
        return _stores[key]


class Client(BaseClient):
    """The local-memory backend. DSN: ``locmem://`` (``?lease=SECONDS``, default 60)."""

    def __init__(self, conn_string: str) -> None:
        super().__init__(conn_string)
        self.lease = dsn_options(conn_string, {"lease": 60.0})["lease"]
        self._store = _store_for(conn_string)

    def push(self, queue_name, task_id, data, delay_until=None, depends_on=None):
        store = self._store
        with store.changed:
            queue = store.queue(queue_name)
            waiting = (queue.ready, queue.delayed_data, queue.held, queue.inflight)
            if any(task_id in tasks for tasks in waiting):
                raise DuplicateTaskError(f"Task {task_id!r} is already in queue {queue_name!r}.")
            if task_id in queue.dead:
                raise DuplicateTaskError(
                    f"Task {task_id!r} is in the dead-letter store of queue {queue_name!r}."
                )
            queue.results.pop(task_id, None)
            if depends_on is None:
                self._add(queue, task_id, data, delay_until)
            else:
                self._hold(queue_name, task_id, data, delay_until, depends_on)
            store.changed.notify_all()
        return task_id

    def _hold(
        self,
        queue_name: str,
        task_id: str,
        data: str,
        delay_until: float | None,
        depends_on: Dependencies,
    ) -> None:
        """Stores a task pushed with dependencies: held, ready, or canceled at once."""
        pending = []
        for dependency in depends_on.on:
            found = self._dependency(*dependency, depends_on.elsewhere)
            if found is None:
                raise UnknownTaskError(task_id, dependency)
            if found == "failed":
                record = dependency_canceled(*dependency)
                queue = self._store.queue(queue_name)
                self._keep(queue, task_id, _outcome(record, depends_on.ttl))
                return
            if found != "done":
                pending.append(found)
        queue = self._store.queue(queue_name)
        if not pending:
            self._add(queue, task_id, data, delay_until)
            return
        held = queue.held[task_id] = _Held(data, len(pending), delay_until, depends_on.ttl)
        for dep_queue, dep_id in pending:
            self._store.queue(dep_queue).waiters.setdefault(dep_id, []).append(
                (queue_name, task_id, held)
            )

    def _dependency(
        self, queue_name: str, task_id: str, elsewhere: bool
    ) -> tuple[str, str] | str | None:
        """
        What a dependency is: ``(queue, id)`` to wait for (its id may be one a pointer
        sent it on to), ``"done"``, ``"failed"``, or ``None`` when unknown.
        """
        seen = set()
        while (queue_name, task_id) not in seen:
            seen.add((queue_name, task_id))
            queue = self._store.queue(queue_name)
            waiting = (queue.ready, queue.delayed_data, queue.held, queue.inflight)
            if any(task_id in tasks for tasks in waiting):
                return queue_name, task_id
            if task_id in queue.dead:
                return "failed"
            record = self._kept(queue, task_id)
            if record is None:
                return (queue_name, task_id) if elsewhere else None
            fields = json.loads(record)
            if "moved_to" not in fields:
                return "done" if fields.get("status") == SUCCESS else "failed"
            task_id = fields["moved_to"]
        return queue_name, task_id

    def _settle_held(self, queue_name: str, task_id: str, succeeded: bool) -> set[str]:
        """
        Releases (``succeeded``) or cancels, with the tasks held on them in turn, the tasks
        held on a task that ended; returns the queues where it released some.
        """
        released = set()
        record = None if succeeded else dependency_canceled(queue_name, task_id)
        ended = [(queue_name, task_id)]
        while ended:
            end_queue, end_id = ended.pop()
            waiters = self._store.queue(end_queue).waiters.pop(end_id, ())
            for held_queue_name, held_id, held in waiters:
                held_queue = self._store.queue(held_queue_name)
                if held_queue.held.get(held_id) is not held:
                    continue  # canceled meanwhile (and maybe pushed again, held on others)
                if succeeded:
                    held.pending -= 1
                    if held.pending == 0:
                        del held_queue.held[held_id]
                        self._add(held_queue, held_id, held.data, held.delay_until)
                        released.add(held_queue_name)
                    continue
                del held_queue.held[held_id]
                held_queue.deaths.pop(held_id, None)
                self._keep(held_queue, held_id, _outcome(record, held.ttl))
                ended.append((held_queue_name, held_id))
        if released:
            self._store.changed.notify_all()
        return released

    def _keep(self, queue: _Queue, task_id: str, outcome: Outcome | None) -> None:
        if outcome is not None:
            expires = None if outcome.ttl is None else time.monotonic() + outcome.ttl
            queue.results[task_id] = (outcome.record, expires)
            self._store.changed.notify_all()

    @staticmethod
    def _kept(queue: _Queue, task_id: str) -> str | None:
        record, expires = queue.results.get(task_id, (None, None))
        if expires is not None and expires <= time.monotonic():
            del queue.results[task_id]
            return None
        return record

    def _add(self, queue: _Queue, task_id: str, data: str, delay_until: float | None) -> None:
        if delay_until is not None and delay_until > time.time():
            heapq.heappush(queue.delayed, (delay_until, next(self._store.sequence), task_id))
            queue.delayed_data[task_id] = data
        else:
            queue.ready[task_id] = data

    def _promote_due(self, queue: _Queue) -> float | None:
        """Moves due delayed tasks to ready; returns seconds until the next one is due."""
        now = time.time()
        while queue.delayed:
            due, _, task_id = queue.delayed[0]
            if task_id not in queue.delayed_data:  # canceled or taken by get()
                heapq.heappop(queue.delayed)
                continue
            if due > now:
                return due - now
            heapq.heappop(queue.delayed)
            queue.ready[task_id] = queue.delayed_data.pop(task_id)
        return None

    def _take(self, queue: _Queue, task_id: str, data: str, consumer_id: str) -> Reserved:
        queue.inflight[task_id] = (consumer_id, data)
        self._store.lease_ends[consumer_id] = time.monotonic() + self.lease
        deaths, last_death = queue.deaths.get(task_id, (0, ""))
        return Reserved(task_id, data, deaths, last_death)

    def reserve(self, queue_name, consumer_id, timeout=0.0, poll_interval=0.1):
        store = self._store
        deadline = time.monotonic() + timeout
        with store.changed:
            queue = store.queue(queue_name)
            while True:
                next_due = self._promote_due(queue)
                if queue.ready:
                    task_id, data = queue.ready.popitem(last=False)
                    return self._take(queue, task_id, data, consumer_id)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                store.changed.wait(remaining if next_due is None else min(remaining, next_due))

    @staticmethod
    def _release(queue: _Queue, task_id: str, consumer_id: str) -> bool:
        """Takes a task out of flight if ``consumer_id`` holds it; says whether it did."""
        if queue.inflight.get(task_id, (None,))[0] != consumer_id:
            return False
        del queue.inflight[task_id]
        return True

    def ack(self, queue_name, task_id, consumer_id, outcome=None):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            if self._release(queue, task_id, consumer_id):
                queue.deaths.pop(task_id, None)
                self._keep(queue, task_id, outcome)
                self._settle_held(queue_name, task_id, succeeded=True)

    def retry(self, queue_name, task_id, consumer_id, data, delay_until=None):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            if self._release(queue, task_id, consumer_id):
                queue.deaths.pop(task_id, None)
                self._add(queue, task_id, data, delay_until)
                self._store.changed.notify_all()
        return task_id

    def _requeue_front(self, queue: _Queue, task_ids: list[str], death: str | None) -> int:
        # Reversed, so that the oldest in-flight task ends up first.
        for task_id in reversed(task_ids):
            _, data = queue.inflight.pop(task_id)
            if death is not None:
                queue.deaths[task_id] = (queue.deaths.get(task_id, (0, ""))[0] + 1, death)
            queue.ready[task_id] = data
            queue.ready.move_to_end(task_id, last=False)
        if task_ids:
            self._store.changed.notify_all()
        return len(task_ids)

    def requeue_inflight(self, queue_name, consumer_id, death=None):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            held = [tid for tid, (owner, _) in queue.inflight.items() if owner == consumer_id]
            return self._requeue_front(queue, held, None if death is None else str(death))

    def keepalive(self, queue_name, consumer_id):
        with self._store.changed:
            self._store.lease_ends[consumer_id] = time.monotonic() + self.lease

    def requeue_expired(self, queue_name):
        store = self._store
        with store.changed:
            now = time.monotonic()
            gone = {owner for owner, ends in store.lease_ends.items() if ends < now}
            for owner in gone:
                del store.lease_ends[owner]
            queue = store.queue(queue_name)
            expired = [tid for tid, (owner, _) in queue.inflight.items() if owner in gone]
            return self._requeue_front(queue, expired, EXPIRED_LEASE_DEATH)

    def _remove_waiting(self, queue: _Queue, task_id: str) -> str | None:
        if task_id in queue.ready:
            return queue.ready.pop(task_id)
        return queue.delayed_data.pop(task_id, None)

    def get(self, queue_name, task_id, consumer_id):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            data = self._remove_waiting(queue, task_id)
            return None if data is None else self._take(queue, task_id, data, consumer_id)

    def cancel(self, queue_name, task_id, outcome=None):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            data = self._remove_waiting(queue, task_id)
            if data is None and task_id in queue.held:
                data = queue.held.pop(task_id).data
            if data is not None:
                queue.deaths.pop(task_id, None)
                self._keep(queue, task_id, outcome)
                self._settle_held(queue_name, task_id, succeeded=False)
            return data

    def len(self, queue_name):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            return len(queue.ready) + len(queue.delayed_data) + len(queue.held)

    def drop_all(self, queue_name):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            dropped = list(itertools.chain(queue.ready, queue.delayed_data, queue.held))
            for task_id in dropped:
                queue.deaths.pop(task_id, None)
            queue.ready.clear()
            queue.delayed.clear()
            queue.delayed_data.clear()
            queue.held.clear()
            for task_id in dropped:
                self._settle_held(queue_name, task_id, succeeded=False)

    def add_dead_letter(self, queue_name, task_id, data, error, consumer_id=None, outcome=None):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            if consumer_id is not None:
                if not self._release(queue, task_id, consumer_id):
                    return
                queue.deaths.pop(task_id, None)
            queue.dead[task_id] = DeadLetter(task_id, data, storable_text(error), time.time())
            self._keep(queue, task_id, outcome)
            self._settle_held(queue_name, task_id, succeeded=False)

    def list_dead_letters(self, queue_name):
        with self._store.changed:
            return list(self._store.queue(queue_name).dead.values())

    def requeue_dead_letters(self, queue_name, task_ids=None):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            chosen = (
                list(queue.dead) if task_ids is None else [t for t in task_ids if t in queue.dead]
            )
            for task_id in chosen:
                queue.ready[task_id] = queue.dead.pop(task_id).data
                queue.deaths.pop(task_id, None)
                queue.results.pop(task_id, None)
            if chosen:
                self._store.changed.notify_all()
            return len(chosen)

    def purge_dead_letters(self, queue_name):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            count = len(queue.dead)
            queue.dead.clear()
            return count

    def finish(self, queue_name, task_id, succeeded, outcome):
        with self._store.changed:
            self._keep(self._store.queue(queue_name), task_id, outcome)
            return sorted(self._settle_held(queue_name, task_id, succeeded))

    def move(self, queue_name, old_id, new_id, outcome):
        with self._store.changed:
            self._move(self._store.queue(queue_name), old_id, new_id, outcome)

    def _move(self, queue: _Queue, old_id: str, new_id: str, outcome: Outcome | None) -> None:
        self._keep(queue, old_id, outcome)
        if new_id != old_id and old_id in queue.waiters:
            queue.waiters.setdefault(new_id, []).extend(queue.waiters.pop(old_id))

    def hand_over(self, queue_name, task_id, consumer_id, new_id, outcome):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            if self._release(queue, task_id, consumer_id):
                queue.deaths.pop(task_id, None)
                self._move(queue, task_id, new_id, outcome)

    def result(self, queue_name, task_id, timeout=0.0):
        store = self._store
        deadline = None if timeout is None else time.monotonic() + timeout
        with store.changed:
            queue = store.queue(queue_name)
            while True:
                record = self._kept(queue, task_id)
                remaining = None if deadline is None else deadline - time.monotonic()
                if record is not None or (remaining is not None and remaining <= 0):
                    return record
                store.changed.wait(remaining)

    def locate(self, queue_name, task_id):
        with self._store.changed:
            queue = self._store.queue(queue_name)
            for place, tasks in (
                (READY, queue.ready),
                (DELAYED, queue.delayed_data),
            ):
                if task_id in tasks:
                    return Located(place, tasks[task_id])
            if task_id in queue.held:
                return Located(HELD, queue.held[task_id].data)
            if task_id in queue.inflight:
                return Located(INFLIGHT, queue.inflight[task_id][1])
            if task_id in queue.dead:
                return Located(DEAD, queue.dead[task_id].data)
            record = self._kept(queue, task_id)
            return None if record is None else Located(FINISHED, record)


def _outcome(record: str, ttl: float | None) -> Outcome | None:
    """A kept record with a held task's ttl (none to keep for a ttl of 0)."""
    return None if ttl == 0 else Outcome(record, ttl)
