"""
How a task ended, as a backend keeps it: the JSON record of its outcome.

Each record holds the task's final ``status`` (``SUCCESS``, ``FAILED`` or ``CANCELED``),
then its return ``value``, or the ``error`` text (and exception ``type``) it ended with, and
when it ``finished_at``::

    {"status": 1, "value": 42, "finished_at": 1767225600.0}
    {"status": 2, "error": "Traceback …", "type": "ValueError", "finished_at": …}
    {"status": 5, "error": "Canceled.", "finished_at": …}

On a backend that gives a retry an id of its own (beanstalkd), the old id keeps a pointer to
the new one, so that whoever follows the task's first id follows it to its end::

    {"status": 4, "moved_to": "1043", "finished_at": …}
"""

import json
import logging
import time
from typing import Any

from .backends import Outcome
from .constants import CANCELED, FAILED, RETRYING, SUCCESS
from .exceptions import InvalidTaskError, ResultTimeout, TaskCanceled, TaskFailed

log = logging.getLogger(__name__)

#: Seconds an outcome is kept unless a task's ``result_ttl`` says otherwise: a day.
DEFAULT_RESULT_TTL = 86400.0


def _outcome(ttl: float | None, **fields: Any) -> Outcome | None:
    if ttl == 0:
        return None  # result_ttl=0: keep nothing
    fields["finished_at"] = time.time()
    return Outcome(json.dumps(fields, separators=(",", ":")), ttl)


def success(task_id: str, value: Any, ttl: float | None) -> Outcome | None:
    """
    The outcome of a task that returned ``value`` (``None`` when ``ttl`` is 0). A value that
    is not JSON is kept as ``None``, with a warning.

    Ex::

        success('a1', 42, 86400)
    """
    try:
        return _outcome(ttl, status=SUCCESS, value=value)
    except (TypeError, ValueError) as exc:
        log.warning(
            "Task %s succeeded, but its result is not JSON (%s); it is kept as None.",
            task_id,
            exc,
        )
        return _outcome(ttl, status=SUCCESS, value=None)


def failure(error: str, exc_type: str, ttl: float | None) -> Outcome | None:
    """
    The outcome of a task that failed for good.

    Ex::

        failure('Traceback …ValueError: bad', 'ValueError', 86400)
    """
    return _outcome(ttl, status=FAILED, error=error, type=exc_type)


def canceled(reason: str, ttl: float | None) -> Outcome | None:
    """
    The outcome of a task canceled before it ran.

    Ex::

        canceled('Canceled by gator.cancel.', 86400)
    """
    return _outcome(ttl, status=CANCELED, error=reason)


def dependency_canceled(queue_name: str, task_id: str) -> str:
    """
    The record of a task canceled because ``task_id`` of ``queue_name``, which it depends
    on (maybe through other tasks), failed for good or was canceled. Backends keep it, with
    each such task's own ttl.

    Ex::

        dependency_canceled('emails', 'a1')
    """
    error = (
        f"Canceled: task {task_id} of queue {queue_name!r}, which it depends on, failed or "
        "was canceled."
    )
    return json.dumps(
        {"status": CANCELED, "error": error, "finished_at": time.time()}, separators=(",", ":")
    )


def moved(new_id: str, ttl: float | None) -> Outcome | None:
    """
    The pointer from a task's old id to the id its retry has now.

    Ex::

        moved('1043', 86400)
    """
    return _outcome(ttl, status=RETRYING, moved_to=new_id)


def read(record: str) -> dict:
    """
    The fields of a record.

    :raises InvalidTaskError: When it is not one
    """
    try:
        fields = json.loads(record)
    except (ValueError, RecursionError) as exc:
        raise InvalidTaskError(f"A kept outcome is not JSON: {exc}.") from None
    if not isinstance(fields, dict) or fields.get("status") not in (SUCCESS, FAILED, CANCELED):
        if not (isinstance(fields, dict) and isinstance(fields.get("moved_to"), str)):
            raise InvalidTaskError("A kept outcome has no status.")
    return fields


def value_of(task_id: str, record: str | None) -> Any:
    """
    What ``Gator.result`` returns for a record: the task's value; or it raises.

    :raises ResultTimeout: For no record (not finished yet, or nothing kept)
    :raises TaskFailed: For a task that failed for good, with its error and type
    :raises TaskCanceled: For a task that was canceled
    """
    if record is None:
        raise ResultTimeout(f"Task {task_id} has no outcome yet (or none is kept).")
    fields = read(record)
    if fields["status"] == SUCCESS:
        return fields.get("value")
    error = str(fields.get("error", ""))
    if fields["status"] == CANCELED:
        raise TaskCanceled(f"Task {task_id} was canceled: {error}")
    exc_type = str(fields.get("type", ""))
    last_line = error.strip().splitlines()[-1] if error.strip() else exc_type
    raise TaskFailed(f"Task {task_id} failed: {last_line}", error=error, exc_type=exc_type)
