import random
from random import choice

import pytest

from alligator import constants, exceptions
from alligator.utils import (
    determine_module,
    determine_name,
    dotted_path,
    import_attr,
    import_module,
    resolve_path,
)

from . import tasks


def test_constants():
    assert (constants.WAITING, constants.SUCCESS, constants.FAILED) == (0, 1, 2)
    assert (constants.DELAYED, constants.RETRYING, constants.CANCELED) == (3, 4, 5)
    assert constants.ALL == "all"


@pytest.mark.parametrize(
    "error",
    [
        exceptions.TaskFailed,
        exceptions.UnknownCallableError,
        exceptions.UnknownModuleError,
        exceptions.NotImportableError,
        exceptions.InvalidTaskError,
        exceptions.InvalidDSNError,
        exceptions.BackendError,
        exceptions.TaskNotFound,
    ],
)
def test_every_error_is_an_alligator_exception(error):
    assert issubclass(error, exceptions.AlligatorException)


def test_determine_module_and_name():
    assert determine_module(choice) == "random"
    assert determine_name(choice) == "choice"
    assert determine_module(tasks.add) == "tests.tasks"


def test_import_module():
    assert import_module("random") is random
    with pytest.raises(exceptions.UnknownModuleError, match="no_such_module"):
        import_module("no_such_module")


def test_a_module_that_fails_at_import_is_an_unknown_module():
    with pytest.raises(exceptions.UnknownModuleError, match="KeyError: 'DATABASE_URL'"):
        import_module("tests.broken_on_import")


def test_import_attr():
    assert import_attr("random", "choice") == choice
    with pytest.raises(exceptions.UnknownCallableError, match="random.*nope"):
        import_attr("random", "nope")
    with pytest.raises(exceptions.UnknownModuleError):
        import_attr("no_such_module", "x")


def test_dotted_path_round_trips():
    assert dotted_path(tasks.add) == "tests.tasks.add"
    assert resolve_path("tests.tasks.add") is tasks.add
    # A bound method of a module-level object is importable by its module attribute.
    assert dotted_path(choice) == "random.choice"


class Holder:
    def method(self):
        pass


def test_dotted_path_refuses_what_a_worker_cannot_import():
    def nested():
        pass

    for func in (lambda: None, nested, Holder().method, Holder.method):
        with pytest.raises(exceptions.NotImportableError, match="module level"):
            dotted_path(func)
    with pytest.raises(exceptions.NotImportableError):
        dotted_path("not callable")


def test_resolve_path_needs_a_module():
    with pytest.raises(exceptions.UnknownCallableError, match="module.name"):
        resolve_path("add")
