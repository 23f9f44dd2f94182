"""
The pidfile: locked for the master's whole life, written atomically, replaced when stale,
removed at exit, readable by its owner alone, and never reached through a symbolic link.

The lock (``flock``) is what tells a running alligatord from a stale file: the kernel
drops it when its process dies, however it dies, so two daemons starting at the same
moment cannot both take the file, and a pid reused by an unrelated process after a crash
or a reboot does not keep alligatord from starting. The pid inside is for people and
tools that read it.

Both the pidfile and the temporary file it is written through are opened with
``O_NOFOLLOW`` (the temporary one also with ``O_EXCL``), so a symbolic link planted at
either path, in a directory others can write to, cannot make alligatord write to the file
it points to. Both are created with mode 0600; the umask still applies, so a stricter one
wins.
"""

import errno
import fcntl
import logging
import os

from alligator.exceptions import AlligatorException

log = logging.getLogger(__name__)

#: Tries at taking the lock when another process replaces the file under our feet.
_LOCK_TRIES = 10

#: Owner-only: the file says which process to signal, and nobody else needs to write it.
_MODE = 0o600


class PidfileError(AlligatorException):
    """Another alligatord holds the pidfile, or it cannot be written."""


def read_pid(path: str) -> int | None:
    """
    Returns the pid a pidfile names, or ``None`` if it is missing, empty or garbage.

    Ex::

        read_pid('/run/alligator/alligatord.pid')  # 4242
    """
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(64)
    except FileNotFoundError:
        return None
    return _parse_pid(text)


def _parse_pid(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _read_pid_at(fd: int) -> int | None:
    """The pid in the file open at ``fd``: no second open, so no path to be tricked by."""
    return _parse_pid(os.pread(fd, 64, 0).decode("ascii", errors="replace"))


class Pidfile:
    """
    A pidfile owned, and locked, by this process until ``remove``.

    Ex::

        pidfile = Pidfile('/run/alligator/alligatord.pid')
        pidfile.create()
        try:
            ...
        finally:
            pidfile.remove()
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None
        self._fd: int | None = None

    def fileno(self) -> int | None:
        """The descriptor that holds the lock (workers must not inherit it), once created."""
        return self._fd

    def create(self) -> None:
        """
        Takes the lock and writes this process's pid.

        :raises PidfileError: When another process holds the lock, the path is a symbolic
            link, or the file cannot be written
        """
        pid = os.getpid()
        try:
            held, stale = self._lock_current()
            try:
                self._write_locked(pid)
            finally:
                os.close(held)  # the new file carries the lock from here on
        except OSError as exc:
            self._close()
            raise PidfileError(
                f"Cannot write the pidfile {self.path}: {exc.strerror or exc}."
            ) from exc
        except PidfileError:
            self._close()
            raise
        if stale is not None:
            log.warning(
                "Replaced the stale pidfile %s (it named %s).",
                self.path,
                "no valid pid" if stale == 0 else f"pid {stale}",
            )
        self.pid = pid

    def _lock_current(self) -> tuple[int, int | None]:
        """Locks the file now at the path (creating it if missing): no other alligatord
        can start while we hold it. Returns its descriptor and, if the file named a pid,
        that stale pid (0 for garbage), or ``None`` for a new file."""
        for _ in range(_LOCK_TRIES):
            fd = self._open_current()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid_at(fd)
                os.close(fd)
                raise PidfileError(
                    f"The pidfile {self.path} is held by process "
                    f"{holder if holder is not None else '(unknown)'}, which is running: is "
                    f"alligatord already started? Stop it first."
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder we raced with may have replaced the file meanwhile: the lock
            # counts only on the file the path names now (lstat: a symbolic link put there
            # since is not the file we hold, and the next try refuses it).
            try:
                current = os.lstat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            mine = os.fstat(fd)
            if (mine.st_dev, mine.st_ino) != (current.st_dev, current.st_ino):
                os.close(fd)
                continue
            stale = None
            if mine.st_size:
                stale = _read_pid_at(fd) or 0
            return fd, stale
        raise PidfileError(
            f"The pidfile {self.path} keeps changing; is another alligatord starting?"
        )

    def _open_current(self) -> int:
        """Opens (or creates) the file at the path; a symbolic link there is refused, never
        followed: it can only be a mistake or a trap."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, _MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(self.path):
                raise PidfileError(
                    f"The pidfile {self.path} is a symbolic link, which alligatord does "
                    f"not follow: remove it, or set pidfile to a path of its own."
                ) from None
            raise

    def _write_locked(self, pid: int) -> None:
        """Writes a new file beside the old, locks it, and renames it over the old one:
        a reader sees the old content or the new, whole, and the lock never lapses."""
        temporary = f"{self.path}.{pid}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, _MODE)
        except FileExistsError:
            # We hold the pidfile's lock, so no other alligatord is writing this name:
            # whatever is there was left by a crash, or planted. unlink removes a symbolic
            # link itself, never its target; should something reappear, we give up.
            log.warning("Removing %s, left in the way of the pidfile.", temporary)
            os.unlink(temporary)
            fd = os.open(temporary, flags, _MODE)
        self._fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{pid}\n".encode())
            os.fsync(fd)
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("Cannot remove %s: %s", temporary, exc)
            raise

    def remove(self) -> None:
        """Removes the file, if it is still the one we hold and names this process, and
        releases the lock."""
        if self.pid is None:
            return
        if self._holds_path() and _read_pid_at(self._fd) == self.pid:
            try:
                os.unlink(self.path)
            except OSError as exc:
                log.warning("Cannot remove the pidfile %s: %s", self.path, exc)
        self.pid = None
        self._close()

    def _holds_path(self) -> bool:
        """Whether the path still names the very file this process locked."""
        if self._fd is None:
            return False
        try:
            current = os.lstat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
