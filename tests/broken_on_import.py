"""A module that fails at import, as one does after a bad deploy or with a missing setting."""

SETTINGS: dict = {}
DATABASE_URL = SETTINGS["DATABASE_URL"]


def task():
    return "never reached"
