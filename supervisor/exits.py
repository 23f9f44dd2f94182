"""How a process ended, in words, for log lines and errors."""

import os
import signal


def describe_exit(status: int) -> str:
    """
    Says how a process ended, from its ``waitpid`` status.

    Ex::

        describe_exit(status)  # 'killed by SIGKILL', or 'exited with status 1'
    """
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
