"""
The pidfile: written atomically at start, refused when it names a live process, replaced
when stale, removed at exit.

A pidfile naming this very process counts as stale: in a container the daemon often gets
the same pid on every start, and must not refuse to start because of its own old file.
"""

import errno
import logging
import os

from alligator.exceptions import AlligatorException

log = logging.getLogger(__name__)


class PidfileError(AlligatorException):
    """The pidfile names a running process, or cannot be written."""


def read_pid(path: str) -> int | None:
    """
    Returns the pid a pidfile names, or ``None`` if it is missing, empty or garbage.

    Ex::

        read_pid('/run/alligatord.pid')  # 4242
    """
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(64).strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_running(pid: int) -> bool:
    """
    Whether a process with this pid exists (a zombie counts as gone).

    Ex::

        is_running(1)  # True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, and belongs to someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Pidfile:
    """
    A pidfile owned by this process.

    Ex::

        pidfile = Pidfile('/run/alligatord.pid')
        pidfile.create()
        try:
            ...
        finally:
            pidfile.remove()
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def create(self) -> None:
        """
        Writes this process's pid, refusing if the file names another live process.

        :raises PidfileError: When another process holds it, or it cannot be written
        """
        pid = os.getpid()
        temporary = f"{self.path}.{pid}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as handle:
                handle.write(f"{pid}\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # A hard link appears whole or not at all, and fails if the name is taken:
                # two daemons starting at once cannot both win.
                os.link(temporary, self.path)
            except FileExistsError:
                holder = read_pid(self.path)
                if holder is not None and holder != pid and is_running(holder):
                    raise PidfileError(
                        f"The pidfile {self.path} names process {holder}, which is running: "
                        f"is alligatord already started? Stop it, or remove the file if that "
                        f"process is not alligatord."
                    ) from None
                log.warning(
                    "Replacing the stale pidfile %s (it named %s).",
                    self.path,
                    "no valid pid" if holder is None else f"pid {holder}",
                )
                os.replace(temporary, self.path)
        except OSError as exc:
            raise PidfileError(
                f"Cannot write the pidfile {self.path}: {exc.strerror or exc}."
            ) from exc
        finally:
            try:
                os.unlink(temporary)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("Cannot remove %s: %s", temporary, exc)
        self.pid = pid

    def remove(self) -> None:
        """Removes the file, if it still names this process."""
        if self.pid is None:
            return
        if read_pid(self.path) == self.pid:
            try:
                os.unlink(self.path)
            except OSError as exc:
                log.warning("Cannot remove the pidfile %s: %s", self.path, exc)
        self.pid = None
