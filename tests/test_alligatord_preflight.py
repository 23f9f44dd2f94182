"""--check, a reload and a start judge a file alike: one validation, one sentence."""

import os
import re
import signal

import pytest

from . import alligatord_support as support
from .alligatord_support import sqlite_dsn, write_config
from .servers import wait_for

MODULES = {
    "raises_at_import": "raise RuntimeError('no settings')\n",
    "exits_at_import": "import sys\nsys.exit(3)\n",
    "ends_the_process_at_import": "import os\nos._exit(0)\n",
    "fine_tasks": "def run():\n    return 1\n",
}


@pytest.fixture
def app(tmp_path):
    directory = tmp_path / "app"
    directory.mkdir()
    for name, text in MODULES.items():
        (directory / f"{name}.py").write_text(text)
    return directory


def bad_files(tmp_path):
    """Each case: the INI keys that break a good file, and what the one sentence says."""
    missing = tmp_path / "no-such-dir"
    return {
        "preload missing": (
            {"preload": "no_such_module"},
            r"key preload: cannot import no_such_module \(ModuleNotFoundError: No module named",
        ),
        "preload raises": (
            {"preload": "raises_at_import"},
            r"key preload: cannot import raises_at_import \(RuntimeError: no settings\)",
        ),
        "preload exits": (
            {"preload": "exits_at_import"},
            r"key preload: cannot import exits_at_import \(it called sys.exit\(3\) at import\)",
        ),
        "preload ends the process": (
            {"preload": "ends_the_process_at_import"},
            r"cannot import ends_the_process_at_import \(the process exited with status 0 at",
        ),
        "tasks missing": (
            {"tasks": "fine_tasks, no_such_tasks"},
            r"key tasks: cannot import no_such_tasks \(ModuleNotFoundError",
        ),
        "tasks package missing": (
            {"tasks": "no_such_package.*"},
            r"key tasks: cannot import no_such_package \(ModuleNotFoundError",
        ),
        "pidfile directory missing": (
            {"pidfile": str(missing / "a.pid")},
            rf"key pidfile: the directory {re.escape(str(missing))} does not exist",
        ),
        "log_file directory missing": (
            {"log_file": str(missing / "a.log")},
            rf"key log_file: the directory {re.escape(str(missing))} does not exist",
        ),
        "mistyped dsn": (
            {"dsn": "redis:/:hunter2secret@localhost"},
            r"key dsn: 'redis:\*\*\*@localhost' is not a DSN",
        ),
    }


def write(tmp_path, name, **keys):
    main = {"graceful_timeout": 5, "pythonpath": "app", "tasks": "fine_tasks"}
    main.update(keys)
    dsn = main.pop("dsn", sqlite_dsn(tmp_path))
    return write_config(tmp_path / name, dsn, {"a": {"workers": 1}}, **main)


def test_check_reload_and_start_refuse_the_same_files_with_the_same_sentence(
    daemons, tmp_path, app
):
    good = write(tmp_path, "good.ini")
    assert support.run_cli("-c", str(good), "--check").returncode == 0
    running = daemons(good)
    running.wait_workers({"a": 1})

    for case, (keys, sentence) in bad_files(tmp_path).items():
        bad = write(tmp_path, "bad.ini", **keys)
        check = support.run_cli("-c", str(bad), "--check")
        assert check.returncode == 1, case
        [said] = check.stderr.splitlines()
        assert re.search(sentence, said), (case, said)
        assert "hunter2secret" not in said
        problem = said.removeprefix("alligatord: ").replace(str(bad), "{file}")

        start = support.run_cli("-c", str(bad))
        assert start.returncode == 2, case
        assert start.stderr.splitlines() == [said], case

        good.write_text(bad.read_text())
        before = running.log().count("Reload refused")
        running.send(signal.SIGHUP)
        wait_for(lambda before=before: running.log().count("Reload refused") > before)
        refusal = running.log().splitlines()[-1]
        assert refusal.endswith(
            "Reload refused, the running configuration stays: "
            + problem.replace("{file}", str(good))
        ), (case, refusal)
        assert "hunter2secret" not in running.log()

    assert running.process.poll() is None
    assert running.queue_workers("a")  # the running configuration stayed
    running.send(signal.SIGTERM)
    assert running.wait_exit() == 0


def test_a_file_without_a_tasks_list_gets_one_warning_naming_the_key(daemons, tmp_path, app):
    config = write(tmp_path, "open.ini", tasks="fine_tasks")
    text = config.read_text().replace("tasks = fine_tasks\n", "")
    config.write_text(text)
    check = support.run_cli("-c", str(config), "--check")
    assert check.returncode == 0
    warning = (
        "alligatord: warning: Queue(s) 'a' run any function a payload names, but those of the "
        "standard library, builtins, Alligator and its dependencies: set tasks = myapp.tasks"
    )
    assert warning in check.stderr
    daemon = daemons(config)
    daemon.wait_workers({"a": 1})
    assert daemon.log().count("run any function a payload names") == 1
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_a_world_readable_file_with_a_secret_is_a_warning(tmp_path, app):
    config = write(tmp_path, "signed.ini", secret="a-secret-of-at-least-16-characters")
    os.chmod(config, 0o644)
    check = support.run_cli("-c", str(config), "--check")
    assert check.returncode == 0
    assert "holds a signing secret and every user of this host can read it" in check.stderr
    assert "a-secret-of-at-least-16-characters" not in check.stderr + check.stdout
    os.chmod(config, 0o640)
    assert "every user" not in support.run_cli("-c", str(config), "--check").stderr
