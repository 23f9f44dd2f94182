"""Constants shared by tasks, queues and workers."""

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

#: The default queue name.
ALL = "all"
