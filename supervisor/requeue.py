"""
Returning a reaped worker's tasks to its queue: the master's only talk with backends.

A dead worker's in-flight tasks go back to the front of their queue as they were
(``requeue_inflight``), with one more death counted against the task it held when that
death was the task's doing; except the run of a task that a ``timeout`` killed, which
counts as a failed attempt: it is retried with one retry fewer, or goes to the dead
letters, with the payload the worker left on its board for that case. A backend that
cannot be reached costs one log line; the tasks then come back once the dead worker's
lease runs out.
"""

import logging
import time
from dataclasses import dataclass

from alligator import outcomes
from alligator.backends import Client, client_class, redact_dsn

from .board import BURY_PAYLOAD, RETRY_PAYLOAD, Held
from .config import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Requeue:
    """What to tell the backend about a reaped worker."""

    settings: WorkerSettings
    consumer_id: str
    pid: int
    #: The task the worker held when a timeout killed it, when that run counts as a
    #: failed attempt, and why it failed.
    failed: Held | None = None
    failure: str = ""
    #: How the worker died holding its task, when that death counts against the task.
    death: str | None = None


def requeue_tasks(requeues: list[Requeue]) -> None:
    """
    Returns reaped workers' in-flight tasks to their queues (after storing a timed-out run
    as a failed attempt): one client per DSN, closed at once, so that no connection of the
    master's outlives this call.

    Ex::

        requeue_tasks([Requeue(settings, consumer_id, pid)])
    """
    by_dsn: dict[str, list[Requeue]] = {}
    for requeue in requeues:
        by_dsn.setdefault(requeue.settings.dsn, []).append(requeue)
    for dsn, group in by_dsn.items():
        try:
            client = client_class(dsn)(dsn)
        except Exception as exc:
            log.error(
                "Cannot reach %s to requeue %d dead worker(s)' tasks (%s); they return "
                "when their lease runs out.",
                redact_dsn(dsn),
                len(group),
                exc,
            )
            continue
        try:
            for requeue in group:
                _requeue_one(client, requeue)
        finally:
            client.close()


def _requeue_one(client: Client, requeue: Requeue) -> None:
    queue = requeue.settings.queue
    try:
        if requeue.failed is not None:
            _count_failed_attempt(client, requeue)
        count = client.requeue_inflight(queue, requeue.consumer_id, requeue.death)
    except Exception as exc:
        log.error(
            "Cannot requeue the task of dead worker pid %d on queue %r (%s); it returns "
            "when its lease runs out.",
            requeue.pid,
            queue,
            exc,
        )
        return
    if count:
        log.info(
            "Requeued %d task(s) of dead worker pid %d on queue %r.", count, requeue.pid, queue
        )


def _count_failed_attempt(client: Client, requeue: Requeue) -> None:
    held, queue = requeue.failed, requeue.settings.queue
    task = f"Task {held.task_id} ({held.func}) on queue {queue!r}"
    if held.payload_kind == RETRY_PAYLOAD:
        due = time.time() + held.retry_in if held.retry_in else None
        client.retry(queue, held.task_id, requeue.consumer_id, held.payload, due)
        log.warning(
            "%s: %s The run counts as a failed attempt; it will be retried in %.3gs.",
            task,
            requeue.failure,
            held.retry_in,
        )
    elif held.payload_kind == BURY_PAYLOAD:
        outcome = outcomes.failure(requeue.failure, "Timeout", outcomes.DEFAULT_RESULT_TTL)
        client.add_dead_letter(
            queue,
            held.task_id,
            held.payload,
            requeue.failure,
            requeue.consumer_id,
            outcome if client.keeps_results else None,
        )
        log.warning(
            "%s: %s It had no retries left; moved to the dead letters.",
            task,
            requeue.failure,
        )
