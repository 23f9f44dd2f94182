"""latergator: run one worker on one queue from the command line."""

import argparse
import logging
import sys

from . import __version__
from .constants import ALL
from .exceptions import AlligatorException
from .gator import Gator
from .workers import Worker

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latergator", description="Consume an Alligator queue: run its tasks as they come."
    )
    parser.add_argument("dsn", help="queue backend DSN, e.g. sqlite:///queue.db")
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
        "-l",
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        Worker(Gator(args.dsn), args.max_tasks, args.queue, args.nap_time).run_forever()
    except AlligatorException as exc:  # a bad DSN or queue name: nothing a retry would fix
        print(f"latergator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
