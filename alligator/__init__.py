"""Simple offline task queues. For Python. "See you later, alligator." """

from .gator import Gator, Options
from .tasks import Task
from .workers import Worker

__version__ = "1.0.0.dev0"
__all__ = ["Gator", "Options", "Task", "Worker", "__version__", "version"]


def version() -> str:
    """
    Returns the version of Alligator, for people to read.

    Ex::

        version()  # '1.0.0.dev0'
    """
    return __version__
