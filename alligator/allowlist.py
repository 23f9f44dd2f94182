"""
Which functions a worker may run: the modules a queue allows, checked before any import.

A payload names a function by its dotted path, and a worker imports it. Whoever can write to
a queue can therefore name any importable function; the allowlist is what keeps a worker to
the modules of your tasks. It applies to a task's function and to its hooks.

Without a list, a worker refuses the functions of the standard library
(``sys.stdlib_module_names``), of ``builtins``, of Alligator itself (``alligator``,
``supervisor``) and its own dependencies, and of the packaging tools of any environment
(pip, setuptools), and runs anything else it can import.
"""

import re
import sys
from collections.abc import Callable, Iterable

from .exceptions import AlligatorException, TaskNotAllowed, UnknownModuleError
from .utils import import_module

#: Top-level modules refused when no list is given, besides the standard library's:
#: Alligator, what it depends on (psutil alone can start any program), and the packaging
#: tools found in every virtualenv.
ALWAYS_REFUSED_BY_DEFAULT = frozenset(
    {
        "__main__",
        "alligator",
        "supervisor",
        "greenstalk",
        "hiredis",
        "psutil",
        "redis",
        "setproctitle",
        "_distutils_hack",
        "pip",
        "pkg_resources",
        "setuptools",
        "wheel",
    }
)

_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.\*)?$")


def split_list(text: str) -> list[str]:
    """
    Splits a list written with commas, spaces or one item a line.

    Ex::

        split_list("myapp.tasks, myapp.billing.*")  # ['myapp.tasks', 'myapp.billing.*']
    """
    return [word for word in re.split(r"[\s,]+", text) if word]


class AllowedTasks:
    """
    The modules whose functions a worker may run, as tasks or hooks.

    Ex::

        allowed = AllowedTasks(["myapp.tasks", "myapp.billing.*"])
        allowed.check("myapp.billing.invoices.send")  # fine
        allowed.check("os.system")  # raises TaskNotAllowed

    :param patterns: Module names (``myapp.tasks``), or packages ending in ``.*`` for every
        module below them (``myapp.billing.*``: ``myapp.billing.invoices``, and deeper, but
        not ``myapp.billing`` itself). ``None`` allows any module but those of the standard
        library, ``builtins``, Alligator and its dependencies, and the packaging tools.
    :raises AlligatorException: For a pattern that is not a module name
    """

    def __init__(self, patterns: Iterable[str] | None = None) -> None:
        if isinstance(patterns, str):
            patterns = split_list(patterns)
        self.patterns: tuple[str, ...] | None = None if patterns is None else tuple(patterns)
        self._modules: frozenset[str] = frozenset()
        self._packages: tuple[str, ...] = ()
        if self.patterns is None:
            return
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not _PATTERN.match(pattern):
                raise AlligatorException(
                    f"{pattern!r} is not a module name such as myapp.tasks, nor a package "
                    f"followed by .* such as myapp.billing.*."
                )
        self._modules = frozenset(p for p in self.patterns if not p.endswith(".*"))
        self._packages = tuple(p[:-1] for p in self.patterns if p.endswith(".*"))

    def __repr__(self) -> str:
        shown = "default" if self.patterns is None else ", ".join(self.patterns)
        return f"<AllowedTasks {shown}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllowedTasks) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    @property
    def is_default(self) -> bool:
        """``True`` when no list was given: only the default refusals apply."""
        return self.patterns is None

    def allows_module(self, module: str) -> bool:
        """
        Whether functions of ``module`` may run. Imports nothing.

        Ex::

            AllowedTasks(["myapp.*"]).allows_module("myapp.tasks")  # True
        """
        if self.patterns is None:
            top = module.split(".", 1)[0]
            return top not in sys.stdlib_module_names and top not in ALWAYS_REFUSED_BY_DEFAULT
        return module in self._modules or module.startswith(self._packages)

    def check(self, path: str, what: str = "function") -> None:
        """
        Refuses the dotted path of a function (``module.name``) unless its module is
        allowed. Imports nothing.

        Ex::

            allowed.check("myapp.tasks.send_email")

        :param what: How the path is named in the error (``"function"``, ``"on_error hook"``)
        :raises TaskNotAllowed: When the module is not allowed
        """
        module = path.rpartition(".")[0]
        if not self.allows_module(module):
            raise TaskNotAllowed(f"Its {what} {path} is {self._not_allowed_because()}.")

    def check_function(self, func: Callable, path: str, what: str = "function") -> None:
        """
        Refuses an imported function that was defined in a module that is not allowed,
        though the module it was found in is (``from subprocess import run`` in a task
        module).

        Ex::

            allowed.check_function(func, "myapp.tasks.send_email")

        :raises TaskNotAllowed: When the function's own module is not allowed
        """
        home = getattr(func, "__module__", None)
        if isinstance(home, str) and home and not self.allows_module(home):
            raise TaskNotAllowed(
                f"Its {what} {path} is {home}.{getattr(func, '__name__', '?')}, which is "
                f"{self._not_allowed_because()}."
            )

    def _not_allowed_because(self) -> str:
        if self.patterns is None:
            return (
                "not allowed: functions of the standard library, builtins, Alligator and its "
                "dependencies never run unless their module is listed in the allowed tasks"
            )
        return f"not allowed: its module is not in the allowed tasks ({', '.join(self.patterns)})"

    def modules_to_import(self) -> list[str]:
        """
        The modules a worker imports before its first task: each listed module, and each
        listed package (for ``pkg.*``, ``pkg``).

        Ex::

            AllowedTasks(["myapp.tasks", "myapp.billing.*"]).modules_to_import()
            # ['myapp.tasks', 'myapp.billing']
        """
        if self.patterns is None:
            return []
        names = [p[:-2] if p.endswith(".*") else p for p in self.patterns]
        return list(dict.fromkeys(names))

    def import_modules(self) -> None:
        """
        Imports ``modules_to_import()``, so that a module that cannot be imported stops a
        worker before its first task rather than sending every task to the dead letters.

        Ex::

            allowed.import_modules()

        :raises AlligatorException: Naming the first module that cannot be imported, and why
        """
        for module in self.modules_to_import():
            try:
                import_module(module)
            except UnknownModuleError as exc:
                raise AlligatorException(
                    f"An allowed task module cannot be imported: {exc}."
                ) from exc
