"""latergator: run one worker on one queue from the command line."""

import argparse
import logging
import os
import sys

import setproctitle

from . import __version__
from .allowlist import AllowedTasks, split_list
from .backends import redact_dsn
from .constants import ALL
from .exceptions import AlligatorException
from .gator import Gator
from .workers import Worker

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
#: Where the DSN comes from when the command line gives none: a password in an argument
#: shows in ``ps`` to every user of the host, one in the environment does not.
DSN_VARIABLE = "ALLIGATOR_DSN"
#: The secret(s) of a signed queue, separated by commas: never on the command line.
SECRET_VARIABLE = "ALLIGATOR_SECRET"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latergator", description="Consume an Alligator queue: run its tasks as they come."
    )
    parser.add_argument(
        "dsn",
        nargs="?",
        help=f"queue backend DSN, e.g. sqlite:///queue.db (default: ${DSN_VARIABLE}, which "
        "keeps a password out of the process list)",
    )
    parser.add_argument("-q", "--queue", default=ALL, help="queue name (default: %(default)s)")
    parser.add_argument(
        "-m", "--max-tasks", type=int, default=0, help="exit after this many tasks (0: never)"
    )
    parser.add_argument(
        "-n",
        "--nap-time",
        type=float,
        default=0.1,
        help="longest pause between looks at an empty queue, for backends that poll "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "-t",
        "--tasks",
        action="append",
        metavar="MODULES",
        help="the only modules whose functions may run: module names, or a package followed "
        "by .* for every module below it, separated by commas; may be repeated (default: any "
        "but the standard library, builtins, Alligator and its dependencies)",
    )
    parser.add_argument(
        "-l",
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.epilog = (
        f"Tasks of a signed queue: set ${SECRET_VARIABLE} to its secret (several, separated "
        "by commas, while one replaces another)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dsn = args.dsn or os.environ.get(DSN_VARIABLE)
    if not dsn:
        parser.error(f"give a DSN, or set {DSN_VARIABLE}")
    if argv is None:  # the real command line: ps shows it again, the password masked
        shown = [redact_dsn(arg) if arg == dsn else arg for arg in sys.argv[1:]]
        setproctitle.setproctitle(" ".join(["latergator", *shown]))
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        allowed = AllowedTasks(
            None if args.tasks is None else [m for arg in args.tasks for m in split_list(arg)]
        )
        secret = os.environ.get(SECRET_VARIABLE) or None
        gator = Gator(dsn, queue_name=args.queue, secret=secret)
        if allowed.is_default:
            log.warning(
                "No --tasks given: any function a payload names may run, but those of the "
                "standard library, builtins, Alligator and its dependencies. Give --tasks "
                "myapp.tasks to allow only your task modules."
            )
        Worker(
            gator, args.max_tasks, args.queue, args.nap_time, allowed_tasks=allowed
        ).run_forever()
    except AlligatorException as exc:  # a bad DSN, queue name or module: a retry cannot help
        print(f"latergator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
