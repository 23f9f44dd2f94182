"""
A task for trying alligatord out: ``etc/quickstart.ini`` runs it.

Ex::

    from alligator import Gator
    from supervisor.quickstart import greet

    Gator('sqlite:///alligator-quickstart.db').task(greet, 'newcomer')
"""

import logging
import os

log = logging.getLogger(__name__)


def greet(name: str = "world") -> str:
    """
    Logs a greeting from the worker that runs it, and returns it.

    Ex::

        gator.task(greet, 'newcomer')
    """
    greeting = f"Hello, {name}! (from alligatord worker pid {os.getpid()})"
    log.info("%s", greeting)
    return greeting
