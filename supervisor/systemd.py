"""
systemd glue: ``sd_notify`` over ``$NOTIFY_SOCKET``, the watchdog interval, and the
parent-death signal for workers.

Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every notification
is a no-op, so the master calls them unconditionally.
"""

import ctypes
import logging
import os
import socket
import sys
import time

log = logging.getLogger(__name__)

#: Variables systemd sets for the main process only; workers must not see them.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_PR_SET_PDEATHSIG = 1


class Notifier:
    """
    Sends state lines (``READY=1``, ``STATUS=…``) to the service manager.

    Ex::

        notifier = Notifier()
        notifier.notify('READY=1', 'STATUS=4 workers')

    :param environ: Where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.address: str | bytes | None = None
        self._socket: socket.socket | None = None
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket: a leading NUL byte on Linux
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        elif address:
            log.warning("Ignoring NOTIFY_SOCKET=%r: not a unix socket path.", address)
        if self.address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval = _watchdog_interval(environ)
        self._failed = False

    def notify(self, *lines: str) -> None:
        """
        Sends one datagram of ``KEY=VALUE`` lines; a failure is logged once, never raised.

        Ex::

            notifier.notify('RELOADING=1', f'MONOTONIC_USEC={monotonic_usec()}')
        """
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("Cannot notify the service manager at %s: %s", self.address, exc)
                self._failed = True

    def fileno(self) -> int | None:
        """The socket's descriptor, which a forked worker closes."""
        return None if self._socket is None else self._socket.fileno()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ) -> float | None:
    """Half the watchdog timeout systemd expects pings within, as systemd advises."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.01)
    except ValueError:
        log.warning("Ignoring WATCHDOG_USEC=%r: not a number of microseconds.", usec)
        return None


def monotonic_usec() -> int:
    """
    ``CLOCK_MONOTONIC`` in microseconds, as ``MONOTONIC_USEC`` wants it.

    Ex::

        notifier.notify('RELOADING=1', f'MONOTONIC_USEC={monotonic_usec()}')
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def set_parent_death_signal(signum: int) -> bool:
    """
    Asks Linux to send ``signum`` to this process when its parent dies.

    Ex::

        set_parent_death_signal(signal.SIGTERM)

    :returns: Whether the kernel accepted (``False`` off Linux)
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The symbols already loaded into this process, libc's among them: no library
        # search (which may run a program) in a freshly forked worker.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
