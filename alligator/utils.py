"""Dotted-path helpers: how a task's callable is named in a payload and found again."""

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .exceptions import NotImportableError, UnknownCallableError, UnknownModuleError


def determine_module(func: Callable) -> str:
    """
    Given a function, returns the Python dotted path of the module it comes from.

    Ex::

        from random import choice
        determine_module(choice) # Returns 'random'

    :param func: The callable
    :returns: Dotted path string
    """
    return func.__module__


def determine_name(func: Callable) -> str:
    """
    Given a function, returns the name of the function.

    Ex::

        from random import choice
        determine_name(choice) # Returns 'choice'

    :param func: The callable
    :returns: Name string
    """
    return func.__name__


def import_module(module_name: str) -> ModuleType:
    """
    Given a dotted Python path, imports & returns the module.

    If not found, raises ``UnknownModuleError``.

    Ex::

        mod = import_module('random')

    :param module_name: The dotted Python path
    :returns: module
    """
    try:
        return importlib.import_module(module_name)
    except SystemExit as exc:  # a module that exits at import must not end its importer
        raise UnknownModuleError(
            f"Could not import module {module_name!r}: it called sys.exit({exc.code!r}) at import"
        ) from exc
    except Exception as exc:  # a module can fail at import with anything, not just ImportError
        raise UnknownModuleError(
            f"Could not import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc


def import_attr(module_name: str, attr_name: str) -> Any:
    """
    Given a dotted Python path & an attribute name, imports the module & returns the attribute.

    If not found, raises ``UnknownCallableError``.

    Ex::

        choice = import_attr('random', 'choice')

    :param module_name: The dotted Python path
    :param attr_name: The attribute name
    :returns: attribute
    """
    module = import_module(module_name)
    try:
        return getattr(module, attr_name)
    except AttributeError as exc:
        raise UnknownCallableError(
            f"Module {module_name!r} has no attribute {attr_name!r}."
        ) from exc


def dotted_path(func: Callable) -> str:
    """
    Returns ``module.name`` for a callable a worker can import, or raises.

    Lambdas, methods and nested functions are refused with ``NotImportableError``,
    because a worker in another process could never find them again.

    Ex::

        from random import choice
        dotted_path(choice) # Returns 'random.choice'

    :param func: The callable
    :returns: Dotted path string
    """
    module = getattr(func, "__module__", None)
    name = getattr(func, "__name__", None)
    if not callable(func) or not module or not name:
        raise NotImportableError(f"{func!r} is not an importable function.")
    if module == "__main__":
        raise NotImportableError(
            f"{name} is defined in __main__, which a worker cannot import: move it into a module."
        )
    try:
        found = import_attr(module, name)
    except (UnknownModuleError, UnknownCallableError):
        found = None
    # Equality, not identity: a bound method of a module-level object (random.choice)
    # is a new object on every attribute access but compares equal.
    if found != func:
        raise NotImportableError(
            f"{module}.{getattr(func, '__qualname__', name)} is not importable by a worker: use "
            f"a function defined at module level (not a lambda, method or nested function)."
        )
    return f"{module}.{name}"


def resolve_path(path: str) -> Callable:
    """
    Imports the callable named by a ``module.name`` dotted path.

    Ex::

        choice = resolve_path('random.choice')

    :param path: Dotted path, as returned by ``dotted_path``
    :returns: The callable
    """
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise UnknownCallableError(f"{path!r} is not a dotted path of the form 'module.name'.")
    return import_attr(module_name, name)
