"""
alligatord's configuration: an INI file read with configparser, validated into immutable
settings.

Every problem a user can cause is a ``ConfigError`` whose message is one sentence naming
the file, the section and the key. ``load`` judges the file itself; ``supervisor.preflight``
adds what only the machine can tell (backends, directories, imports), and both run at
start, for ``--check`` and on every reload, so a file that starts also reloads, and a file
that fails is refused whole.

Relative paths in ``pythonpath``, ``pidfile`` and ``log_file`` are read from the file's
directory; a DSN is the backend's business (``sqlite:///queue.db`` is relative to the
working directory, as for any ``Gator``).
"""

import configparser
import difflib
import os
import re
from dataclasses import dataclass
from typing import NoReturn

from alligator.allowlist import AllowedTasks, split_list
from alligator.backends import BACKENDS, client_class, dsn_scheme, redact_dsn
from alligator.exceptions import AlligatorException, InvalidDSNError
from alligator.signing import Signer

#: The section of the daemon's own settings.
MAIN_SECTION = "alligatord"
#: Sections named ``queue:NAME`` configure the queue NAME.
QUEUE_PREFIX = "queue:"

MAIN_KEYS = (
    "dsn",
    "graceful_timeout",
    "import_timeout",
    "log_level",
    "log_file",
    "pidfile",
    "preload",
    "pythonpath",
    "result_backend",
    "secret",
    "tasks",
)
QUEUE_KEYS = (
    "workers",
    "dsn",
    "max_tasks",
    "max_memory",
    "timeout",
    "result_backend",
    "secret",
    "tasks",
)
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_GRACEFUL_TIMEOUT = 30.0
#: Seconds the ``preload`` and ``tasks`` modules may take to import, when a file is checked.
DEFAULT_IMPORT_TIMEOUT = 60.0
DEFAULT_WORKERS = 1
#: The most workers a queue may ask for: each one costs the master a descriptor (its
#: report pipe) and a process, and a typo such as 400 for 40 should not fork-bomb a host.
MAX_WORKERS = 1000
#: The smallest ``max_memory``: a Python worker needs more than this to start.
MIN_MAX_MEMORY = 1024**2

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG])(?:I?B)?$", re.IGNORECASE)
_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


class ConfigError(AlligatorException):
    """The configuration file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class WorkerSettings:
    """
    Everything one worker process of a queue runs with. Workers whose settings differ from
    their queue's current ones are replaced on reload.

    Ex::

        WorkerSettings('emails', 'sqlite:///queue.db', max_tasks=1000, max_memory=0,
                       timeout=300.0, tasks=('myapp.tasks',))
    """

    queue: str
    dsn: str
    max_tasks: int = 0
    max_memory: int = 0  # bytes of USS (the memory a worker alone holds); 0 = no limit
    timeout: float = 0.0  # seconds one task may run; 0 = no limit
    tasks: tuple[str, ...] | None = None  # the allowed task modules; None: the default
    secrets: tuple[str, ...] = ()  # a signed queue's secrets, the first of which signs
    result_backend: str | None = None  # where outcomes are kept, if not in the queue's DSN

    def __repr__(self) -> str:  # never the secrets, in a log or a traceback
        shown = ", ".join(
            f"{name}={'***' if name == 'secrets' and value else value!r}"
            for name, value in self.__dict__.items()
        )
        return f"WorkerSettings({shown})"


@dataclass(frozen=True)
class QueueConfig:
    """One ``[queue:NAME]`` section: how many workers, and what they run with."""

    name: str
    workers: int
    settings: WorkerSettings


@dataclass(frozen=True)
class Config:
    """
    A whole, validated configuration file.

    Ex::

        config = load('/etc/alligator/alligator.ini')
        [queue.name for queue in config.queues]  # ['default', 'emails']
    """

    path: str
    dsn: str | None
    result_backend: str | None
    graceful_timeout: float
    import_timeout: float
    log_level: str
    log_file: str | None
    pidfile: str | None
    preload: tuple[str, ...]
    pythonpath: tuple[str, ...]
    queues: tuple[QueueConfig, ...]

    def queue(self, name: str) -> QueueConfig | None:
        """Returns the queue named ``name``, or ``None``."""
        for queue in self.queues:
            if queue.name == name:
                return queue
        return None

    @property
    def total_workers(self) -> int:
        """How many worker processes the file asks for, over every queue."""
        return sum(queue.workers for queue in self.queues)


class _Section:
    """Reads and validates the keys of one section, naming them in every error."""

    def __init__(self, path: str, name: str, values: dict[str, str], known: tuple[str, ...]):
        self.path, self.name, self.values = path, name, values
        for key in values:
            if key not in known:
                self.fail(key, f"unknown key{_did_you_mean(key, known)}")

    def fail(self, key: str | None, problem: str) -> NoReturn:
        where = f"{self.path}, section [{self.name}]"
        if key is not None:
            where += f", key {key}"
        raise ConfigError(f"{where}: {problem}.")

    def raw(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None:
            return None
        value = value.strip()
        if not value:
            self.fail(key, "is empty; give it a value or remove the line")
        return value

    def whole_number(self, key: str, default: int, most: int | None = None) -> int:
        raw = self.raw(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            self.fail(key, f"expected a whole number >= 0, got {raw!r}")
        if most is not None and value > most:
            self.fail(key, f"expected a whole number from 0 to {most}, got {raw!r}")
        return value

    def seconds(self, key: str, default: float) -> float:
        raw = self.raw(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0 or value == float("inf"):
            self.fail(key, f"expected a number of seconds >= 0, got {raw!r}")
        return value

    def size(self, key: str, least: int) -> int:
        raw = self.raw(key)
        if raw is None or raw == "0":
            return 0
        try:
            value = parse_size(raw)
        except ValueError:
            self.fail(
                key, f"expected 0 or a size such as 512M (a number with K, M or G), got {raw!r}"
            )
        if 0 < value < least:
            self.fail(
                key, f"{raw!r} is too small; give at least {least // 1024**2}M, or 0 for no limit"
            )
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.raw(key)
        if raw is None:
            return default
        if raw.lower() not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {raw!r}")
        return raw.lower()

    def task_list(self, key: str) -> tuple[str, ...] | None:
        raw = self.raw(key)
        if raw is None:
            return None
        try:
            return AllowedTasks(split_list(raw)).patterns
        except AlligatorException as exc:
            self.fail(key, sentence(str(exc))[:-1])

    def secrets(self, key: str) -> tuple[str, ...] | None:
        raw = self.raw(key)
        if raw is None:
            return None
        secrets = tuple(split_list(raw))
        try:
            Signer(secrets)
        except AlligatorException as exc:
            self.fail(key, sentence(str(exc))[:-1])
        return secrets

    def path_value(self, key: str) -> str | None:
        raw = self.raw(key)
        return None if raw is None else _beside(self.path, raw)

    def dsn(self, key: str) -> str | None:
        raw = self.raw(key)
        if raw is None:
            return None
        try:
            scheme = dsn_scheme(raw)
        except InvalidDSNError:
            self.fail(
                key,
                f"{shown_dsn(raw)!r} is not a DSN; expected scheme://…, e.g. sqlite:///queue.db",
            )
        if scheme == "locmem":
            self.fail(
                key,
                "locmem:// keeps tasks inside one process, where alligatord's worker processes "
                "never see them; use sqlite:// (one host) or redis:// (many hosts)",
            )
        try:
            client_class(raw)
        except InvalidDSNError:
            usable = ", ".join(f"{name}://" for name in sorted(BACKENDS) if name != "locmem")
            self.fail(key, f"no backend handles the scheme {scheme}://; use one of {usable}")
        except ImportError as exc:
            self.fail(key, f"the {scheme}:// backend cannot be imported ({exc})")
        return raw


def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f"; known keys are {', '.join(sorted(known))}"


def _beside(config_path: str, path: str) -> str:
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(config_path)), path))


def _words(raw: str | None) -> list[str]:
    """Splits a list value written with commas, spaces or one item a line."""
    return [] if raw is None else split_list(raw)


def parse_size(text: str) -> int:
    """
    Reads a size such as ``256M`` into bytes (``K``, ``M`` and ``G`` are powers of 1024;
    the unit is required, so that ``256`` cannot mean 256 bytes by mistake).

    Ex::

        parse_size('256M')  # 268435456

    :raises ValueError: When the text is not a number with a unit
    """
    match = _SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 512M")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def _read_file(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), empty_lines_in_values=False
    )
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=path)
    except OSError as exc:
        raise ConfigError(f"Cannot read the configuration file {path}: {exc.strerror}.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a UTF-8 text file ({exc.reason}).") from exc
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(
            f"{path}, line {exc.lineno}: section [{exc.section}] appears twice."
        ) from exc
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            f"{path}, section [{exc.section}], key {exc.option}: appears twice "
            f"(again on line {exc.lineno})."
        ) from exc
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            f"{path}, line {exc.lineno}: a key comes before any section; start the file "
            f"with [{MAIN_SECTION}]."
        ) from exc
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0]
        raise ConfigError(f"{path}, line {lineno}: cannot parse {line.strip()}.") from exc
    except configparser.Error as exc:
        raise ConfigError(f"{path} is not a valid INI file: {exc.message}.") from exc
    return parser


def load(path: str) -> Config:
    """
    Reads and validates a configuration file.

    Ex::

        config = load('etc/alligator.ini')

    :param path: The INI file
    :returns: A ``Config``
    :raises ConfigError: With one sentence naming the file, section and key at fault
    """
    parser = _read_file(path)
    if parser.defaults():
        raise ConfigError(
            f"{path}, section [{parser.default_section}]: alligatord does not read this "
            f"section; put each key in [{MAIN_SECTION}] or in a [queue:NAME] section."
        )
    if not parser.has_section(MAIN_SECTION):
        raise ConfigError(
            f"{path}: no [{MAIN_SECTION}] section; start the file with [{MAIN_SECTION}] "
            f"and a dsn = … line."
        )
    for name in parser.sections():
        if name != MAIN_SECTION and not name.startswith(QUEUE_PREFIX):
            raise ConfigError(
                f"{path}, section [{name}]: unknown section; alligatord reads "
                f"[{MAIN_SECTION}] and [queue:NAME] sections."
            )

    main = _Section(path, MAIN_SECTION, dict(parser[MAIN_SECTION]), MAIN_KEYS)
    dsn = main.dsn("dsn")
    preload = _words(main.raw("preload"))
    for module in preload:
        if not _MODULE_NAME.match(module):
            main.fail("preload", f"{module!r} is not a dotted module name such as myapp.tasks")
    pythonpath = [_beside(path, entry) for entry in _words(main.raw("pythonpath"))]
    for entry in pythonpath:
        if not os.path.isdir(entry):
            main.fail("pythonpath", f"the directory {entry} does not exist")
    tasks = main.task_list("tasks")
    secrets = main.secrets("secret") or ()
    result_backend = main.dsn("result_backend")
    import_timeout = main.seconds("import_timeout", DEFAULT_IMPORT_TIMEOUT)
    if not import_timeout:
        main.fail("import_timeout", "expected a number of seconds > 0, got '0'")

    queues = []
    sections_of: dict[str, str] = {}  # queue name -> the section that configures it
    for name in parser.sections():
        if not name.startswith(QUEUE_PREFIX):
            continue
        section = _Section(path, name, dict(parser[name]), QUEUE_KEYS)
        queue_name = name[len(QUEUE_PREFIX) :].strip()
        if not _QUEUE_NAME.match(queue_name):
            section.fail(
                None,
                f"{queue_name!r} is not a queue name; use letters, digits and _ . : - "
                f"(e.g. [queue:emails])",
            )
        if queue_name in sections_of:
            section.fail(
                None,
                f"names the queue {queue_name!r} again, after [{sections_of[queue_name]}]; "
                f"keep one section per queue",
            )
        sections_of[queue_name] = name
        queue_dsn = section.dsn("dsn") or dsn
        if queue_dsn is None:
            section.fail("dsn", f"no DSN for this queue; set dsn in [{MAIN_SECTION}] or here")
        settings = WorkerSettings(
            queue=queue_name,
            dsn=queue_dsn,
            max_tasks=section.whole_number("max_tasks", 0),
            max_memory=section.size("max_memory", MIN_MAX_MEMORY),
            timeout=section.seconds("timeout", 0.0),
            tasks=section.task_list("tasks") or tasks,
            secrets=section.secrets("secret") or secrets,
            result_backend=section.dsn("result_backend") or result_backend,
        )
        workers = section.whole_number("workers", DEFAULT_WORKERS, most=MAX_WORKERS)
        queues.append(QueueConfig(queue_name, workers, settings))
    if not queues:
        raise ConfigError(
            f"{path}: no [queue:NAME] section, so there is nothing to run; add one, "
            f"e.g. [queue:all] with workers = 2."
        )

    return Config(
        path=path,
        dsn=dsn,
        result_backend=result_backend,
        graceful_timeout=main.seconds("graceful_timeout", DEFAULT_GRACEFUL_TIMEOUT),
        import_timeout=import_timeout,
        log_level=main.choice("log_level", LOG_LEVELS, "info"),
        log_file=main.path_value("log_file"),
        pidfile=main.path_value("pidfile"),
        preload=tuple(preload),
        pythonpath=tuple(pythonpath),
        queues=tuple(queues),
    )


def shown_dsn(dsn: str) -> str:
    """The DSN with its password masked, for messages; never raises, whatever the DSN."""
    try:
        return redact_dsn(dsn)
    except Exception:
        return f"{dsn.split('://', 1)[0]}://…"


def sentence(text: str) -> str:
    """One line ending with a full stop, whatever an exception's message looked like."""
    text = " ".join(text.split()) or "no reason given"
    return text if text.endswith(".") else f"{text}."
