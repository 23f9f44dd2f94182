"""
``alligatord``: run the workers an INI file asks for, in the foreground, under systemd or a
terminal.

Exit statuses: 0 after a stop; 1 when ``--check`` finds a problem, or when the master
failed unexpectedly (it kills its workers and requeues their tasks first); 2 when the
daemon refuses to start (a bad configuration, a preload module that fails to import, a
pidfile held by a running alligatord).
"""

import argparse
import importlib
import logging
import sys

from alligator import __version__

from . import logs
from .config import MAIN_SECTION, Config, ConfigError, check_dsns, load
from .pidfile import Pidfile, PidfileError

log = logging.getLogger(__name__)

#: Exit status when alligatord refuses to start; the systemd unit does not restart on it.
EXIT_REFUSED = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``alligatord -c FILE [--check] [--log-level L] [--pidfile P]``."""
    parser = argparse.ArgumentParser(
        prog="alligatord",
        description="Run Alligator workers for the queues of an INI file, and keep them "
        "running: SIGHUP reloads the file, SIGTERM stops gracefully.",
    )
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="the INI file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the file and import its preload modules, then exit 0 (valid) or 1",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides log_level in the file",
    )
    parser.add_argument("--pidfile", metavar="PATH", help="overrides pidfile in the file")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def prepare(config: Config) -> list[str]:
    """
    Puts ``pythonpath`` on ``sys.path`` and imports the ``preload`` modules.

    Ex::

        warnings = prepare(load('etc/alligator.ini'))

    :returns: Warnings about backends that cannot be reached now
    :raises ConfigError: When a DSN is refused, or a preload module fails to import
    """
    for entry in reversed(config.pythonpath):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    for module in config.preload:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:
            raise ConfigError(
                f"{config.path}, section [{MAIN_SECTION}], key preload: cannot import "
                f"{module} ({type(exc).__name__}: {exc})."
            ) from exc
    return check_dsns(config)


def main(argv: list[str] | None = None) -> int:
    """
    Runs ``alligatord``; returns its exit status.

    Ex::

        sys.exit(main(['-c', 'etc/quickstart.ini']))
    """
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
        warnings = prepare(config)
    except Exception as exc:  # a ConfigError says it all; anything else gets its name
        problem = (
            exc if isinstance(exc, ConfigError) else f"{args.config}: {type(exc).__name__}: {exc}"
        )
        print(f"alligatord: {problem}", file=sys.stderr)
        return 1 if args.check else EXIT_REFUSED
    if args.check:
        for warning in warnings:
            print(f"alligatord: warning: {warning}", file=sys.stderr)
        print(
            f"alligatord: {args.config} is valid: {len(config.queues)} queue(s), "
            f"{config.total_workers} worker(s)."
        )
        return 0

    try:
        logs.configure(args.log_level or config.log_level, config.log_file)
    except OSError as exc:
        print(f"alligatord: cannot open the log file {config.log_file}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    for warning in warnings:
        log.warning("%s", warning)
    pidfile_path = args.pidfile or config.pidfile
    pidfile = Pidfile(pidfile_path) if pidfile_path else None
    if pidfile is not None:
        try:
            pidfile.create()
        except PidfileError as exc:
            log.error("%s", exc)
            return EXIT_REFUSED

    # Imported here: the master pulls in psutil and the worker machinery, which --check
    # and --version do not need.
    from .master import Master, MasterFailed

    private_fds = () if pidfile is None else (pidfile.fileno(),)
    try:
        return Master(config, args.config, args.log_level, private_fds=private_fds).run()
    except MasterFailed:
        return 1  # logged, its workers killed and their tasks requeued
    except Exception:
        # Before the master had forked anything: there is no worker to stop.
        log.exception("alligatord failed.")
        return 1
    finally:
        if pidfile is not None:
            pidfile.remove()


if __name__ == "__main__":
    sys.exit(main())
