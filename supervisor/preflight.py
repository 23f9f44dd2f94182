"""
Everything a configuration must pass before alligatord runs it, in one function that start,
``--check`` and every reload call alike: a file is good everywhere or refused everywhere,
with the same sentence.

``validate`` reads the file (``config.load``), then asks the machine what only it can tell:
that the pidfile and log file have a directory to live in, that each DSN is accepted by its
backend, and that every ``preload`` and ``tasks`` module imports. The imports are tried in
a Python process of its own, so that a module that exits, crashes or hangs at import is
judged without harm to the running master.
"""

import json
import os
import select
import signal
import stat
import sys
import time
from contextlib import suppress
from dataclasses import replace

from alligator.allowlist import AllowedTasks
from alligator.backends import client_class
from alligator.exceptions import AlligatorException, BackendError

from .config import MAIN_SECTION, Config, ConfigError, load, sentence, shown_dsn
from .exits import describe_exit
from .systemd import SYSTEMD_VARIABLES

#: ``sys.path`` as it was before any ``pythonpath`` was put in front of it.
BASE_SYS_PATH = list(sys.path)

_MARK = "alligatord-import-check:"
# Run by a Python of its own: imports each module in turn, saying which before it starts,
# so that a module that ends the process is named by the last line.
_IMPORT_SCRIPT = f"""
import importlib, json, sys
spec = json.loads(sys.argv[1])
sys.path[:] = spec["path"]
def say(**fields):
    sys.stdout.write({_MARK!r} + json.dumps(fields) + "\\n")
    sys.stdout.flush()
for module in spec["modules"]:
    say(importing=module)
    try:
        importlib.import_module(module)
    except SystemExit as exc:
        say(failed=module, error=f"it called sys.exit({{exc.code!r}}) at import")
        sys.exit(0)
    except BaseException as exc:
        say(failed=module, error=f"{{type(exc).__name__}}: {{exc}}")
        sys.exit(0)
say(done=True)
"""


def validate(path: str, pidfile: str | None = None) -> tuple[Config, list[str]]:
    """
    Reads a configuration file and checks it against the machine: ``check_file``, then the
    imports (``ImportCheck``), waited for.

    Ex::

        config, warnings = validate('/etc/alligator/alligator.ini')

    :param pidfile: The ``--pidfile`` given on the command line, which wins over the file's
    :returns: The configuration, and warnings (one sentence each) that do not refuse it
    :raises ConfigError: With one sentence naming the file, section and key at fault
    """
    config, warnings = check_file(path, pidfile)
    check = ImportCheck(config)
    check.wait()
    if check.error is not None:
        raise check.error
    return config, warnings


def check_file(path: str, pidfile: str | None = None) -> tuple[Config, list[str]]:
    """
    Everything ``validate`` checks but the imports, which take a process and may take
    time: the file, the pidfile's and log file's directories, and each DSN.

    Ex::

        config, warnings = check_file('/etc/alligator/alligator.ini')

    :raises ConfigError: With one sentence naming the file, section and key at fault
    """
    config = load(path)
    if pidfile:
        config = replace(config, pidfile=os.path.abspath(pidfile))
    _check_files(config, pidfile_given=bool(pidfile))
    return config, check_dsns(config) + _warnings(config)


def worker_sys_path(config: Config) -> list[str]:
    """
    ``sys.path`` for the master and its workers: ``pythonpath`` first.

    Ex::

        worker_sys_path(config)  # ['/srv/myapp', '', '/usr/lib/python311.zip', …]
    """
    return list(config.pythonpath) + [p for p in BASE_SYS_PATH if p not in config.pythonpath]


def use_pythonpath(config: Config) -> None:
    """
    Puts ``pythonpath`` in front of this process's ``sys.path`` (in place of the one it had
    before, on a reload), for the master and the workers it forks from now on.

    Ex::

        use_pythonpath(config)
    """
    sys.path[:] = worker_sys_path(config)


def _where(config: Config, key: str, given: bool = False) -> str:
    if given:
        return f"--{key}"
    return f"{config.path}, section [{MAIN_SECTION}], key {key}"


def _check_files(config: Config, pidfile_given: bool) -> None:
    for key, path, given in (
        ("pidfile", config.pidfile, pidfile_given),
        ("log_file", config.log_file, False),
    ):
        if path is None:
            continue
        where = _where(config, key, given)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise ConfigError(
                f"{where}: the directory {directory} does not exist; create it, writable by "
                "the user alligatord runs as."
            )
        if os.path.isdir(path):
            raise ConfigError(f"{where}: {path} is a directory; name a file.")
        target = path if os.path.exists(path) else directory
        if not os.access(target, os.W_OK):
            raise ConfigError(f"{where}: {target} is not writable by this user.")


def check_dsns(config: Config) -> list[str]:
    """
    Builds (and closes) one backend client per DSN, to catch what only the backend can
    judge: its options, a SQLite file's missing directory.

    A backend that cannot be reached now is no configuration error: it is returned as a
    warning, and workers keep retrying it once started. Anything else a backend raises
    about its DSN is a ``ConfigError``.

    Ex::

        for warning in check_dsns(config):
            print(warning)

    :returns: Warnings, one sentence each
    :raises ConfigError: When a DSN is refused by its backend
    """
    warnings = []
    seen: set[str] = set()
    for queue, key, dsn in (
        (queue, key, getattr(queue.settings, key))
        for queue in config.queues
        for key in ("dsn", "result_backend")
    ):
        if dsn is None or dsn in seen:
            continue
        seen.add(dsn)
        inherited = dsn == getattr(config, key)
        section = f"[{MAIN_SECTION}]" if inherited else f"[queue:{queue.name}]"
        where = f"{config.path}, section {section}, key {key}"
        try:
            client = client_class(dsn)(dsn)
        except BackendError as exc:
            warnings.append(f"The backend of {shown_dsn(dsn)} cannot be reached now: {exc}")
            continue
        except AlligatorException as exc:
            raise ConfigError(f"{where}: {sentence(str(exc))}") from exc
        except Exception as exc:  # a backend's own parser may raise anything on a bad DSN
            raise ConfigError(
                f"{where}: {shown_dsn(dsn)} is refused by its backend "
                f"({type(exc).__name__}: {sentence(str(exc))[:-1]})."
            ) from exc
        client.close()
    return warnings


def _modules_to_import(config: Config) -> dict[str, str]:
    """Each module to try, and where the file names it first."""
    modules = {module: f"section [{MAIN_SECTION}], key preload" for module in config.preload}
    for queue in config.queues:
        allowed = AllowedTasks(queue.settings.tasks)
        for module in allowed.modules_to_import():
            modules.setdefault(module, f"section [queue:{queue.name}], key tasks")
    return modules


class ImportCheck:
    """
    Imports every ``preload`` module and every module (or package, for ``pkg.*``) the
    ``tasks`` lists name, in a Python process of its own with the workers' ``sys.path``:
    a module that raises, exits, crashes or hangs at import is judged without harm to
    whoever asks. It starts at once.

    ``wait`` waits for its verdict. The master, which must not wait, polls ``fileno()``
    and calls ``read()`` when it is readable, hands ``finished()`` the exit status it reaped
    for ``pid``, and calls ``kill()`` once ``deadline`` passed.

    Ex::

        check = ImportCheck(config)
        check.wait()
        if check.error is not None:
            raise check.error  # names the first module that failed, and how

    :raises ConfigError: When the process cannot be started
    """

    #: Output kept from the process (the end of it): its own lines are short.
    KEPT_OUTPUT = 64 * 1024

    def __init__(self, config: Config) -> None:
        self.config = config
        self.modules = _modules_to_import(config)
        self.deadline = time.monotonic() + config.import_timeout
        self.pid: int | None = None
        self.done = not self.modules
        self.error: ConfigError | None = None
        self._fd: int | None = None
        self._output = b""
        self._eof = False
        self._killed = False
        if self.done:
            return
        spec = json.dumps({"path": worker_sys_path(config), "modules": list(self.modules)})
        env = {key: value for key, value in os.environ.items() if key not in SYSTEMD_VARIABLES}
        read_end, write_end = os.pipe()
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-c", _IMPORT_SCRIPT, spec],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ],
            )
        except OSError as exc:
            os.close(read_end)
            raise ConfigError(
                f"{config.path}: cannot start Python to check the imports: {exc}."
            ) from exc
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        self._fd = read_end

    def fileno(self) -> int | None:
        """The process's output, to poll; ``None`` once it ended (so that a closed pipe
        cannot keep a poll awake)."""
        return None if self._eof else self._fd

    def read(self) -> None:
        """Takes what the process wrote so far, without waiting."""
        while self._fd is not None and not self._eof:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            self._eof = not chunk
            self._output = (self._output + chunk)[-self.KEPT_OUTPUT :]

    def kill(self) -> None:
        """Ends a process that outlived ``deadline``: the check then fails for that."""
        if self.pid is not None and not self.done:
            self._killed = True
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def finished(self, status: int) -> None:
        """Takes the process's exit status (from ``waitpid``) and gives the verdict."""
        self.read()
        os.close(self._fd)
        self._fd, self.done = None, True
        module, problem = self._outcome(status)
        if problem is None:
            return
        where = self.modules.get(module, f"section [{MAIN_SECTION}]")
        name = f"cannot import {module}" if module else "cannot check the imports"
        self.error = ConfigError(f"{self.config.path}, {where}: {name} ({problem}).")

    def wait(self) -> None:
        """Waits for the verdict, ``deadline`` at most."""
        if self.done:
            return
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                _, status = os.waitpid(self.pid, 0)
                break
            poller.poll(min(remaining, 0.05) * 1000)
            self.read()
        self.finished(status)

    def _outcome(self, status: int) -> tuple[str | None, str | None]:
        """The module being imported when the process ended, and what went wrong (or
        ``None``)."""
        text = self._output.decode("utf-8", "replace")
        lines = []
        for line in text.splitlines():
            if line.startswith(_MARK):
                with suppress(ValueError):
                    lines.append(json.loads(line[len(_MARK) :]))
        for line in lines:
            if "failed" in line:
                return line["failed"], str(line.get("error", "no reason given"))
        if any(line.get("done") for line in lines):
            return None, None
        importing = [line["importing"] for line in lines if "importing" in line]
        module = importing[-1] if importing else None
        if self._killed:
            return module, f"did not finish importing within {self.config.import_timeout:g}s"
        said = [line for line in text.splitlines() if line and not line.startswith(_MARK)]
        detail = f"; it said: {said[-1][:300]}" if said else ""
        return module, f"the process {describe_exit(status)} at import{detail}"


def _warnings(config: Config) -> list[str]:
    warnings = []
    open_queues = [queue.name for queue in config.queues if queue.settings.tasks is None]
    if open_queues:
        names = ", ".join(repr(name) for name in open_queues)
        warnings.append(
            f"Queue(s) {names} run any function a payload names, but those of the standard "
            f"library, builtins, Alligator and its dependencies: set tasks = myapp.tasks "
            f"(your task modules; pkg.* for a package) in [{MAIN_SECTION}] or in their "
            f"[queue:…] section."
        )
    secret = any(queue.settings.secrets for queue in config.queues)
    password = any(shown_dsn(queue.settings.dsn) != queue.settings.dsn for queue in config.queues)
    try:
        mode = os.stat(config.path).st_mode
    except OSError:
        mode = 0
    if (secret or password) and mode & stat.S_IROTH:
        held = "a signing secret" if secret else "a DSN password"
        warnings.append(
            f"{config.path} holds {held} and every user of this host can read it: "
            f"chmod 0640 it (owner root, group alligatord's)."
        )
    return warnings
