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
        """
        Opens the file again under its name, then closes the old stream.

        :raises OSError: When the file cannot be opened; the old stream stays in use
        """
        stream = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors)
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        if old is not None:
            old.close()


def configure(level: str, log_file: str | None = None) -> None:
    """
    Sends every record of this process to stderr, or to ``log_file``, at ``level``.

    Ex::

        configure('info', '/var/log/alligatord.log')

    :raises OSError: When ``log_file`` cannot be opened; logging stays as it was
    """
    global _handler
    # The new handler first: if its file cannot be opened, the old one keeps working.
    if log_file:
        handler: logging.Handler = ReopenableFileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_QueueField())
    root = logging.getLogger()
    root.addHandler(handler)
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = handler
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


def has_file() -> bool:
    """
    Whether records go to a log file (rather than stderr).

    Ex::

        has_file()  # True with log_file = /var/log/alligator/alligatord.log
    """
    return isinstance(_handler, ReopenableFileHandler)


def reopen() -> bool:
    """
    Reopens the log file under its name, if records go to one. When it cannot be opened
    (its directory is gone, a permission changed), records keep going to the file already
    open, and a warning says so.

    Ex::

        reopen()  # after logrotate renamed the file

    :returns: Whether a log file was reopened
    """
    handler = _handler
    if not isinstance(handler, ReopenableFileHandler):
        return False
    try:
        handler.reopen()
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "Cannot reopen the log file %s (%s); still writing to the one already open.",
            handler.baseFilename,
            exc.strerror or exc,
        )
        return False
    return True


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
