"""Every error Alligator raises on purpose is an :class:`AlligatorException`."""


class AlligatorException(Exception):
    """A base exception for all Alligator errors."""


class TaskFailed(AlligatorException):
    """
    Raised when a task fails; by ``Gator.result``, for a task that failed for good, with
    the text of its last error (``error``) and the name of its exception type
    (``exc_type``).
    """

    def __init__(self, message: str, error: str = "", exc_type: str = "") -> None:
        super().__init__(message)
        self.error = error
        self.exc_type = exc_type


class TaskCanceled(AlligatorException):
    """``Gator.result`` of a task that was canceled before it ran."""


class ResultTimeout(AlligatorException):
    """``Gator.result`` waited its ``timeout`` and the task had not finished."""


class UnknownCallableError(AlligatorException):
    """Thrown when trying to import an unknown attribute from a module for a task."""


class UnknownModuleError(AlligatorException):
    """Thrown when trying to import an unknown module for a task."""


class NotImportableError(AlligatorException):
    """A callable given as a task or hook cannot be imported by a worker.

    Lambdas, methods and nested functions have no dotted path a worker could import.
    """


class InvalidTaskError(AlligatorException):
    """A task's options or stored payload are not valid (e.g. a naive datetime, bad JSON)."""


class TaskNotAllowed(InvalidTaskError):
    """A payload names a function whose module the worker is not allowed to import."""


class SignatureError(InvalidTaskError):
    """A payload of a signed queue is unsigned, or its signature does not match."""


class InvalidDSNError(AlligatorException):
    """A DSN is malformed, or names a scheme no backend handles."""


class BackendError(AlligatorException):
    """The queue backend could not be reached or refused an operation.

    The original exception is attached as ``__cause__``.
    """


class DuplicateTaskError(AlligatorException):
    """A task with the same id is already waiting, in flight or dead in that queue."""


class InvalidQueueError(AlligatorException):
    """A queue name the backend cannot use (e.g. characters beanstalkd refuses in a tube)."""


class SettleError(BackendError):
    """
    A task ran, but its outcome (ack, retry or dead letter) could not be stored.

    ``settle()`` tries to store it again; until it succeeds the task stays in flight.
    """

    def __init__(self, message: str, settle) -> None:
        super().__init__(message)
        self.settle = settle


class UnknownTaskError(AlligatorException):
    """
    A task given in ``depends_on`` is unknown to the backend: never pushed, or gone with no
    outcome kept (see ``result_ttl``). Nothing was stored.

    Ex::

        raise UnknownTaskError('b1', ('emails', 'a1'))
    """

    def __init__(self, task_id: str, dependency: tuple[str, str]) -> None:
        queue_name, dependency_id = dependency
        super().__init__(
            f"Task {task_id} depends on task {dependency_id} of queue {queue_name!r}, which "
            "is unknown there (never pushed, or gone with no outcome kept); nothing was stored."
        )
        self.dependency = dependency


class TaskNotFound(AlligatorException):
    """No queued task has the given id (it may have run, or been canceled)."""
