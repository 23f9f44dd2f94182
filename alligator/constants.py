"""Constants shared by tasks, queues and workers."""

# Task states.
WAITING = 0
SUCCESS = 1
FAILED = 2
DELAYED = 3
RETRYING = 4
CANCELED = 5

# The default queue name.
ALL = "all"
