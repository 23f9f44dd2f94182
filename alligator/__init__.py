"""Simple offline task queues. For Python. "See you later, alligator." """

from .gator import Gator, Options
from .tasks import Task
from .workers import Worker

__version__ = "1.0.0.dev0"
__all__ = ["Gator", "Options", "Task", "Worker", "__version__"]
