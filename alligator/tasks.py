"""Task: what to call, how to run it (options, hooks) and how it travels (JSON)."""

import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .allowlist import AllowedTasks
from .constants import CANCELED, DELAYED, FAILED, RETRYING, SUCCESS, WAITING
from .exceptions import InvalidTaskError
from .outcomes import DEFAULT_RESULT_TTL
from .utils import dotted_path, resolve_path

log = logging.getLogger(__name__)

HOOKS = ("on_start", "on_success", "on_error")
#: The options a payload carries only when they differ from these defaults.
OPTION_DEFAULTS = {
    "retry_delay": 0.0,
    "retry_backoff": 1.0,
    "retry_max_delay": 3600.0,
    "retry_jitter": True,
    "result_ttl": DEFAULT_RESULT_TTL,
}

#: What a task may raise that counts as its failure: ``sys.exit()`` inside a task is a bug
#: of that task, not a request to stop the worker running it.
TASK_ERRORS = (Exception, SystemExit)


class Task:
    """
    A unit of work: a plain importable function, its arguments and its execution options.

    Ex::

        task = Task(retries=3, on_error="myapp.alerts.page_someone")
        task.to_call(send_email, user_id=42)

    :param task_id: A unique id; a random UUID string when omitted
    :param retries: How many times a failed run is tried again
    :param is_async: ``False`` runs the task at once, in-process, instead of queueing it.
        ``async`` (a keyword since Python 3.7) is accepted too, as ``**{"async": False}``
    :param on_start: Hook called as ``on_start(task)`` before each attempt
    :param on_success: Hook called as ``on_success(task, result)`` after a success
    :param on_error: Hook called as ``on_error(task, exc)`` after the last failed attempt
    :param depends_on: The tasks that must succeed before this one runs: each a task (once
        pushed), a task id of the same queue, or a ``(queue_name, task_id)`` pair; the task
        waits, held, until all succeeded, and is canceled if one fails for good or is
        canceled (``None`` when none is given; see ``Gator.push``)
    :param delay_by: Seconds to wait before the task may run
    :param delay_until: Earliest time to run, as epoch seconds or an aware ``datetime``
    :param retry_delay: Seconds a queued task waits before its first retry (default 0)
    :param retry_backoff: What each later wait is multiplied by (default 1; 2 doubles it)
    :param retry_max_delay: The longest wait before a retry (default 3600)
    :param retry_jitter: Add a random 0 to 100 % to each wait (default ``True``), so that
        tasks that failed together do not all come back at once; never past
        ``retry_max_delay``
    :param result_ttl: Seconds the task's outcome (its return value, or its last error) is
        kept for ``Gator.result`` and ``Gator.status`` once it finished: a day by default;
        ``0`` keeps nothing, ``None`` keeps it for ever

    Hooks are importable functions (or their ``"module.name"`` paths): they are stored by
    path, so they fire in whichever process runs the task.
    """

    def __init__(
        self,
        task_id: str | None = None,
        retries: int = 0,
        is_async: bool = True,
        on_start: Callable | str | None = None,
        on_success: Callable | str | None = None,
        on_error: Callable | str | None = None,
        depends_on: Any = None,
        delay_by: float | None = None,
        delay_until: float | datetime | None = None,
        retry_delay: float = 0.0,
        retry_backoff: float = 1.0,
        retry_max_delay: float = 3600.0,
        retry_jitter: bool = True,
        result_ttl: float | None = DEFAULT_RESULT_TTL,
        **legacy: Any,
    ) -> None:
        if "async" in legacy:
            is_async = legacy.pop("async")
        if legacy:
            raise InvalidTaskError(f"Unknown task option(s): {', '.join(sorted(legacy))}.")
        if task_id is not None and not isinstance(task_id, str):
            raise InvalidTaskError(f"task_id must be a string, not {task_id!r}.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidTaskError(f"retries must be a whole number >= 0, not {retries!r}.")
        self.task_id = task_id or str(uuid.uuid4())
        self.retries = retries
        self.is_async = bool(is_async)
        self.on_start = on_start
        self.on_success = on_success
        self.on_error = on_error
        self.depends_on = _task_ids(depends_on)
        self.delay_until = _due_time(delay_by, delay_until)
        self.retry_delay = _seconds("retry_delay", retry_delay)
        self.retry_backoff = _seconds("retry_backoff", retry_backoff, least=1.0)
        self.retry_max_delay = _seconds("retry_max_delay", retry_max_delay)
        self.retry_jitter = bool(retry_jitter)
        self.result_ttl = None if result_ttl is None else _seconds("result_ttl", result_ttl)
        # Failed attempts so far: the retries spent.
        self.attempts = 0
        self.status = DELAYED if self.delay_until is not None else WAITING
        self.result: Any = None
        self.func: Callable | None = None
        self.func_args: list = []
        self.func_kwargs: dict = {}
        # The queue it was pushed to, or came off.
        self.queue_name: str | None = None
        # The consumer holding this task in flight, when it came off a queue.
        self.reserved_by: str | None = None
        # The allowlist a task from a queue was decoded under; its hooks must pass it too.
        self.allowed: AllowedTasks | None = None

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.func_path or '(no callable)'}>"

    @property
    def func_path(self) -> str | None:
        """The ``module.name`` of the callable, or ``None`` before ``to_call``."""
        if self.func is None:
            return None
        return f"{self.func.__module__}.{self.func.__name__}"

    def to_call(self, func: Callable, *args: Any, **kwargs: Any) -> None:
        """
        Sets the function & its arguments to be called when the task is processed.

        Ex::

            task.to_call(my_function, 1, 'c', another=True)

        :param func: The callable with business logic to execute
        :param args: Positional arguments to pass to the callable task
        :param kwargs: Keyword arguments to pass to the callable task
        """
        if not callable(func):
            raise InvalidTaskError(f"A task needs a callable, not {func!r}.")
        self.func = func
        self.func_args = list(args)
        self.func_kwargs = dict(kwargs)

    def to_waiting(self) -> None:
        """Sets the task's status as "waiting"."""
        self.status = WAITING

    def to_success(self) -> None:
        """Sets the task's status as "success"."""
        self.status = SUCCESS

    def to_failed(self) -> None:
        """Sets the task's status as "failed"."""
        self.status = FAILED

    def to_retrying(self) -> None:
        """Sets the task's status as "retrying"."""
        self.status = RETRYING

    def to_canceled(self) -> None:
        """Sets the task's status as "canceled"."""
        self.status = CANCELED

    def to_delayed(self) -> None:
        """Sets the task's status as "delayed"."""
        self.status = DELAYED

    def run(self) -> Any:
        """
        Runs the task.

        This fires the ``on_start`` hook function first (if present), passing the task itself.
        Then it runs the target function supplied via ``Task.to_call`` with its arguments &
        stores the result.

        If the target function succeeded, the ``on_success`` hook function is called, passing
        both the task & the result to it.

        If the target function failed (threw an exception) and no retries are left, the
        ``on_error`` hook function is called, passing both the task & the exception to it.
        Then the exception is re-raised. A failure with retries left marks the task
        "retrying" and re-raises without calling ``on_error``.

        An ``on_start`` hook that raises fails the attempt. An ``on_success`` or ``on_error``
        hook that raises is logged and does not change the outcome: a task that succeeded is
        never run again because of its hook.

        Ex::

            result = task.run()

        :returns: The result of the target function
        """
        if self.func is None:
            raise InvalidTaskError(f"Task {self.task_id} has nothing to call: use to_call().")
        try:
            self._call_hook("on_start", self)
            self.result = self.func(*self.func_args, **self.func_kwargs)
        except TASK_ERRORS as exc:
            if self.retries > 0:
                self.to_retrying()
            else:
                self.to_failed()
                self._call_outcome_hook("on_error", exc)
            raise
        self.to_success()
        self._call_outcome_hook("on_success", self.result)
        return self.result

    def _call_hook(self, name: str, *args: Any) -> None:
        hook = getattr(self, name)
        if hook is None:
            return
        if isinstance(hook, str):
            path, hook = hook, resolve_path(hook)
            if self.allowed is not None:
                self.allowed.check_function(hook, path, f"{name} hook")
        hook(*args)

    def _call_outcome_hook(self, name: str, outcome: Any) -> None:
        try:
            self._call_hook(name, self, outcome)
        except TASK_ERRORS:
            log.exception(
                "The %s hook of task %s (%s) failed.", name, self.task_id, self.func_path
            )

    def next_retry_delay(self) -> float:
        """
        Seconds to wait before the retry that follows failed attempt number ``attempts``:
        ``retry_delay``, times ``retry_backoff`` for each attempt after the first, at most
        ``retry_max_delay``; with ``retry_jitter``, plus a random 0 to 100 % of that (still at
        most ``retry_max_delay``). Never less than the wait without jitter.

        Ex::

            task = Task(retry_delay=10, retry_backoff=2, retry_jitter=False)
            task.attempts = 3
            task.next_retry_delay()  # 40.0
        """
        try:
            grown = self.retry_delay * self.retry_backoff ** max(self.attempts - 1, 0)
        except OverflowError:
            grown = math.inf
        wait = min(self.retry_max_delay, grown)
        if self.retry_jitter and wait:
            wait = min(self.retry_max_delay, wait * (1 + random.random()))
        return wait

    def serialize(self) -> str:
        """
        Serializes the ``Task`` data for storing in the queue.

        All data must be JSON-serializable in order to be stored properly. The callable and
        hooks must be importable functions (not lambdas, methods or nested functions).

        Ex::

            data = task.serialize()

        :returns: A JSON string of the task data
        """
        if self.func is None:
            raise InvalidTaskError(f"Task {self.task_id} has nothing to call: use to_call().")
        module, _, name = dotted_path(self.func).rpartition(".")
        data = {
            "task_id": self.task_id,
            "retries": self.retries,
            "async": self.is_async,
            "status": self.status,
            "module": module,
            "callable": name,
            "args": self.func_args,
            "kwargs": self.func_kwargs,
            "depends_on": self.depends_on,
            "delay_until": self.delay_until,
        }
        for hook_name in HOOKS:
            hook = getattr(self, hook_name)
            data[hook_name] = hook if hook is None or isinstance(hook, str) else dotted_path(hook)
        # Only what differs from the defaults, so that a plain task's payload stays short.
        for name, default in OPTION_DEFAULTS.items():
            if getattr(self, name) != default:
                data[name] = getattr(self, name)
        if self.attempts:
            data["attempts"] = self.attempts
        try:
            return json.dumps(data, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidTaskError(
                f"Task {self.task_id} ({module}.{name}) has arguments that are not "
                f"JSON-serializable: {exc}. Pass ids and plain values instead."
            ) from exc

    @classmethod
    def deserialize(cls, data: str, allowed: AllowedTasks | None = None) -> "Task":
        """
        Given some data from the queue, deserializes it into a ``Task`` instance.

        The data must be similar in format to what comes from ``Task.serialize`` (a
        JSON-serialized dictionary). Required keys are ``task_id``, ``retries`` & ``async``
        (``is_async`` is read too).

        The module of the task's function, and of each of its hooks, must be allowed by
        ``allowed``: that is checked before anything is imported.

        Ex::

            task = Task.deserialize(data, AllowedTasks(["myapp.tasks"]))

        :param data: A JSON-serialized string of the task data
        :param allowed: The modules whose functions may run; without it, any module but
            those of the standard library, builtins, Alligator and its dependencies
        :returns: A populated task
        :raises InvalidTaskError: When the payload cannot be decoded, names a function or hook
            that is not allowed (``TaskNotAllowed``), or cannot be imported
        """
        if allowed is None:
            allowed = AllowedTasks()
        if not isinstance(data, str):
            raise InvalidTaskError(f"Task payload is {type(data).__name__}, not text.")
        if not data.isascii():
            try:
                data.encode("utf-8")
            except UnicodeEncodeError:
                # A backend hands over bytes that are not UTF-8 as lone surrogates.
                raise InvalidTaskError("Task payload is not valid UTF-8.") from None
        try:
            fields = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InvalidTaskError(f"Task payload is not valid JSON: {exc}.") from None
        if not isinstance(fields, dict):
            raise InvalidTaskError("Task payload is not a JSON object.")
        _lift_upstream_options(fields)
        if "async" in fields:
            fields["is_async"] = fields["async"]
        missing = [key for key in ("task_id", "retries", "is_async") if key not in fields]
        missing += [key for key in ("module", "callable") if not fields.get(key)]
        if missing:
            raise InvalidTaskError(f"Task payload lacks {', '.join(missing)}.")
        if not isinstance(fields["module"], str) or not isinstance(fields["callable"], str):
            raise InvalidTaskError("Task payload's module and callable must be strings.")
        path = f"{fields['module']}.{fields['callable']}"
        allowed.check(path)
        hooks = {hook: fields.get(hook) for hook in HOOKS}
        for hook, hook_path in hooks.items():
            if hook_path is not None:
                if not isinstance(hook_path, str):
                    raise InvalidTaskError(f"Task payload's {hook} must be a dotted path.")
                allowed.check(hook_path, f"{hook} hook")
        task = cls(
            task_id=fields["task_id"],
            retries=fields["retries"],
            is_async=fields["is_async"],
            depends_on=fields.get("depends_on"),
            delay_until=fields.get("delay_until"),
            **{name: fields.get(name, default) for name, default in OPTION_DEFAULTS.items()},
            **hooks,
        )
        attempts = fields.get("attempts", 0)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise InvalidTaskError("Task payload's attempts must be a whole number >= 0.")
        task.attempts = attempts
        task.allowed = allowed
        if "status" in fields:
            task.status = fields["status"]
        args, kwargs = fields.get("args", []), fields.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidTaskError(f"Task {task.task_id} has malformed args or kwargs.")
        func = resolve_path(path)
        allowed.check_function(func, path)
        task.to_call(func, *args, **kwargs)
        return task


def _lift_upstream_options(fields: dict) -> None:
    """
    Upstream Alligator (0.7 to 1.0) nests a task's hooks, as ``{"module", "callable"}`` or as
    dotted paths, and its ``delay_until`` under ``"options"``: they move to the top level,
    where this layout keeps them, so that tasks queued by those releases still run.
    """
    options = fields.pop("options", None)
    if options is None:
        return
    if not isinstance(options, dict):
        raise InvalidTaskError("Task payload's options must be a JSON object.")
    for key in (*HOOKS, "delay_until"):
        value = options.get(key)
        if isinstance(value, dict) and key in HOOKS:
            module, name = value.get("module"), value.get("callable")
            if not isinstance(module, str) or not isinstance(name, str):
                raise InvalidTaskError(f"Task payload's {key} option lacks module or callable.")
            value = f"{module}.{name}"
        if value is not None and fields.get(key) is None:
            fields[key] = value


def _seconds(name: str, value: Any, least: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidTaskError(f"{name} must be a number, not {value!r}.")
    if value < least:
        raise InvalidTaskError(f"{name} must be at least {least:g}, not {value!r}.")
    return float(value)


def _task_ids(depends_on: Any) -> list[str | tuple[str, str]] | None:
    """Dependencies as a task keeps them: an id of the task's own queue, or a (queue, id)
    pair; a task pushed to a queue is named by that pair."""
    if depends_on is None:
        return None
    items = depends_on if isinstance(depends_on, list | tuple | set) else [depends_on]
    named: list[str | tuple[str, str]] = []
    for item in items:
        if isinstance(item, Task):
            queue_name = item.queue_name
            named.append(item.task_id if queue_name is None else (queue_name, item.task_id))
        elif isinstance(item, list | tuple):
            if len(item) != 2 or not all(isinstance(part, str) for part in item):
                raise InvalidTaskError(
                    f"A dependency must be a task, a task id or a (queue_name, task_id) pair, "
                    f"not {item!r}."
                )
            named.append((item[0], item[1]))
        else:
            named.append(str(item))
    return named


def _due_time(delay_by: float | None, delay_until: float | datetime | None) -> float | None:
    if delay_by is not None and delay_until is not None:
        raise InvalidTaskError("Give delay_by or delay_until, not both.")
    if delay_by is not None:
        if isinstance(delay_by, bool) or not isinstance(delay_by, int | float) or delay_by < 0:
            raise InvalidTaskError(f"delay_by must be a number of seconds >= 0, not {delay_by!r}.")
        return time.time() + delay_by
    if isinstance(delay_until, datetime):
        if delay_until.tzinfo is None or delay_until.utcoffset() is None:
            raise InvalidTaskError(
                f"delay_until={delay_until!r} is a naive datetime; give it a timezone "
                f"(e.g. datetime.now(timezone.utc)) so it is not guessed in local time."
            )
        return delay_until.timestamp()
    if delay_until is not None and (
        isinstance(delay_until, bool) or not isinstance(delay_until, int | float)
    ):
        raise InvalidTaskError(
            f"delay_until must be epoch seconds or an aware datetime, not {delay_until!r}."
        )
    return delay_until
