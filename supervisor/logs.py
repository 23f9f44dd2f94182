"""
alligatord's logging: one line per record with time, pid, queue and level, on stderr or
in a log file that SIGUSR1 reopens (after logrotate moved it).

The master's lines say ``[master]``; a worker's say the queue it consumes. Workers
inherit the handler across ``fork``.
"""

import logging
import sys

LOG_FORMAT = "%(asctime)s [%(process)d] [%(queue)s] %(levelname)s %(name)s: %(message)s"

_queue = "master"
_handler: logging.Handler | None = None


class _QueueField(logging.Filter):
    """Adds the ``queue`` field: the queue this process works for, or ``master``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.queue = _queue
        return True


class ReopenableFileHandler(logging.FileHandler):
    """A log file that can be closed and opened again under the same name."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = open(
                self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors
            )
        finally:
            self.release()


def configure(level: str, log_file: str | None = None) -> None:
    """
    Sends every record of this process to stderr, or to ``log_file``, at ``level``.

    Ex::

        configure('info', '/var/log/alligatord.log')
    """
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    if log_file:
        _handler = ReopenableFileHandler(log_file, encoding="utf-8")
    else:
        _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    _handler.addFilter(_QueueField())
    root.addHandler(_handler)
    set_level(level)


def set_level(level: str) -> None:
    """
    Sets the level of this process's records (``debug`` … ``error``).

    Ex::

        set_level('debug')
    """
    logging.getLogger().setLevel(level.upper())


def set_queue(name: str) -> None:
    """
    Names the queue this process works for, in every later record.

    Ex::

        set_queue('emails')  # in a worker, right after the fork
    """
    global _queue
    _queue = name


def reopen() -> bool:
    """
    Reopens the log file, if records go to one.

    Ex::

        reopen()  # after logrotate renamed the file

    :returns: Whether there was a file to reopen
    """
    if isinstance(_handler, ReopenableFileHandler):
        _handler.reopen()
        return True
    return False


def flush() -> None:
    """
    Writes out buffered records: a forked worker leaves with ``os._exit``, not atexit.

    Ex::

        flush()
        os._exit(status)
    """
    if _handler is not None:
        _handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
