"""Constants shared by tasks, queues and workers."""

from enum import IntEnum

#: Created, or waiting in its queue for an attempt.
WAITING = 0
#: The last attempt succeeded.
SUCCESS = 1
#: The last attempt failed and no retries are left.
FAILED = 2
#: Held back until its ``delay_until`` time.
DELAYED = 3
#: An attempt failed; it will run again.
RETRYING = 4
#: Removed from its queue by ``Gator.cancel`` before it ran.
CANCELED = 5
#: A worker holds it: it runs, or is about to.
RUNNING = 6
#: The backend never saw it, or forgot it (its outcome expired, or none was kept).
UNKNOWN = -1

#: The default queue name.
ALL = "all"


class TaskStatus(IntEnum):
    """
    A task's status as ``Gator.status`` reports it: each member equals the constant of the
    same name.

    Ex::

        gator.status(task_id) == SUCCESS  # True once it succeeded
        gator.status(task_id).name  # 'SUCCESS'
    """

    WAITING = WAITING
    SUCCESS = SUCCESS
    FAILED = FAILED
    DELAYED = DELAYED
    RETRYING = RETRYING
    CANCELED = CANCELED
    RUNNING = RUNNING
    UNKNOWN = UNKNOWN
