"""
``alligatord``: run the workers an INI file asks for, in the foreground, under systemd or a
terminal.

Exit statuses: 0 after a stop; 1 when ``--check`` finds a problem, or when the master
failed unexpectedly (it kills its workers and requeues their tasks first); 2 when the
daemon refuses to start (a bad configuration, a preload or tasks module that fails to
import, a pidfile held by a running alligatord).
"""

import argparse
import importlib
import logging
import sys

from alligator import __version__

from . import logs
from .config import MAIN_SECTION, Config, ConfigError
from .pidfile import Pidfile, PidfileError
from .preflight import use_pythonpath, validate

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
        help="validate the file as a start would (backends, directories, and the preload and "
        "tasks modules, imported in a process of their own), then exit 0 (valid) or 1",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides log_level in the file",
    )
    parser.add_argument("--pidfile", metavar="PATH", help="overrides pidfile in the file")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def prepare(config: Config) -> None:
    """
    Gives the master the workers' ``sys.path`` (``pythonpath`` first) and imports the
    ``preload`` modules, which every worker then shares. ``preflight.validate`` already
    imported them once, in a process of its own.

    Ex::

        prepare(config)

    :raises ConfigError: When a preload module fails to import here after all
    """
    use_pythonpath(config)
    for module in config.preload:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:
            raise ConfigError(
                f"{config.path}, section [{MAIN_SECTION}], key preload: cannot import "
                f"{module} ({type(exc).__name__}: {exc})."
            ) from exc


def main(argv: list[str] | None = None) -> int:
    """
    Runs ``alligatord``; returns its exit status.

    Ex::

        sys.exit(main(['-c', 'etc/quickstart.ini']))
    """
    args = build_parser().parse_args(argv)
    try:
        config, warnings = validate(args.config, args.pidfile)
        if not args.check:
            prepare(config)
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
    pidfile = Pidfile(config.pidfile) if config.pidfile else None
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
        master = Master(
            config, args.config, args.log_level, private_fds=private_fds, pidfile=args.pidfile
        )
        return master.run()
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
