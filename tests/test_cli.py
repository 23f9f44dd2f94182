import logging
import os
import subprocess
import sys
import uuid

import psutil
import pytest

from alligator import Gator, cli

from . import tasks
from .servers import kill_process, wait_for


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def test_latergator_runs_tasks(tmp_path, restore_root_logger):
    dsn = f"locmem://{uuid.uuid4().hex}"
    gator = Gator(dsn, queue_name="emails")
    record = tmp_path / "ran.txt"
    gator.task(tasks.append_line, str(record), "hello")
    gator.task(tasks.append_line, str(record), "again")
    assert cli.main([dsn, "-q", "emails", "-m", "2", "-n", "0.05", "-l", "warning"]) == 0
    assert tasks.lines(record) == ["hello", "again"]
    assert logging.getLogger().level == logging.WARNING


def test_latergator_bad_dsn_is_one_clear_sentence():
    result = subprocess.run(
        [sys.executable, "-m", "alligator.cli", "mongodb://x"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("latergator: No backend handles DSN scheme 'mongodb://'")
    assert "Traceback" not in result.stderr


def test_latergator_usage():
    result = subprocess.run(
        [sys.executable, "-m", "alligator.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for option in ("-q", "-m", "-n", "-l"):
        assert option in result.stdout


def test_latergator_stops_with_one_sentence_on_a_queue_name_the_backend_refuses(beanstalkd):
    dsn = f"beanstalk://{beanstalkd.host}:{beanstalkd.port}/"
    result = subprocess.run(
        [sys.executable, "-m", "alligator.cli", dsn, "-q", "two words"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "latergator: Queue name 'two words' cannot be"
    )
    assert "Traceback" not in result.stderr


def run_latergator(*args, env=None, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "alligator.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_latergator_reads_the_dsn_from_the_environment(tmp_path):
    dsn = f"sqlite:///{tmp_path / 'queue.db'}"
    record = tmp_path / "ran.txt"
    Gator(dsn).task(tasks.append_line, str(record), "from the environment")
    result = run_latergator("-m", "1", "--tasks", "tests.tasks", env={"ALLIGATOR_DSN": dsn})
    assert result.returncode == 0, result.stderr
    assert tasks.lines(record) == ["from the environment"]
    assert "No --tasks given" not in result.stderr


def test_latergator_without_any_dsn_says_how_to_give_one():
    env = {key: value for key, value in os.environ.items() if key != "ALLIGATOR_DSN"}
    result = subprocess.run(
        [sys.executable, "-m", "alligator.cli"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "give a DSN, or set ALLIGATOR_DSN" in result.stderr


def test_latergator_warns_once_without_tasks_and_stops_on_one_it_cannot_import(tmp_path):
    dsn = f"sqlite:///{tmp_path / 'queue.db'}"
    Gator(dsn).task(tasks.add, 1, 2)
    result = run_latergator(dsn, "-m", "1")
    assert result.returncode == 0
    assert result.stderr.count("No --tasks given: any function a payload names may run") == 1
    result = run_latergator(dsn, "--tasks", "tests.tasks,tests.no_such_module")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "latergator: An allowed task module cannot be imported: Could not import module "
        "'tests.no_such_module'"
    )


def test_latergator_runs_only_tasks_signed_with_the_secret_in_its_environment(tmp_path):
    dsn = f"sqlite:///{tmp_path / 'queue.db'}"
    secret = "a-secret-of-at-least-16-characters"
    record = tmp_path / "ran.txt"
    Gator(dsn, secret=secret).task(tasks.append_line, str(record), "signed")
    Gator(dsn).task(tasks.append_line, str(record), "unsigned")
    result = run_latergator(dsn, "-m", "2", env={"ALLIGATOR_SECRET": secret})
    assert result.returncode == 0, result.stderr
    assert tasks.lines(record) == ["signed"]
    [dead] = Gator(dsn).dead_letters()
    assert "It is not signed" in dead.error
    assert secret not in result.stderr


def test_the_process_list_never_shows_the_dsn_password(redis, tmp_path):
    dsn = f"redis://:hunter2secret@{redis.host}:{redis.port}/0"
    worker = subprocess.Popen(
        [sys.executable, "-m", "alligator.cli", dsn, "-q", "x"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process = psutil.Process(worker.pid)
        shown = wait_for(
            lambda: (
                " ".join(process.cmdline()).strip()
                if "latergator" in process.cmdline()[0]
                else None
            )
        )
        assert "hunter2secret" not in shown
        assert shown == f"latergator redis://:***@{redis.host}:{redis.port}/0 -q x"
    finally:
        kill_process(worker)
