import logging
import subprocess
import sys
import uuid

import pytest

from alligator import Gator, cli

from . import tasks


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
    assert result.stderr.startswith("latergator: Queue name 'two words' cannot be")
    assert "Traceback" not in result.stderr
