"""The files a newcomer and an operator start from: etc/ and the alligatord guide."""

import configparser
import os
import re
import shlex
import signal
import subprocess

from supervisor.config import MAIN_KEYS, QUEUE_KEYS, load
from supervisor.quickstart import QUICKSTART_DSN

from .alligatord_support import ROOT
from .servers import wait_for

ETC = ROOT / "etc"


def test_quickstart_runs_the_task_its_one_liner_enqueues(daemons, tmp_path):
    config = ETC / "quickstart.ini"
    [one_liner] = [
        line.lstrip("; ").strip()
        for line in config.read_text().splitlines()
        if line.lstrip("; ").startswith("python -m")
    ]
    # As after `pip install .`: the packages importable from any directory.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    enqueue = subprocess.run(
        shlex.split(one_liner), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert enqueue.returncode == 0, enqueue.stderr
    assert enqueue.stdout.startswith("Queued task ")
    assert (tmp_path / "alligator-quickstart.db").exists()

    daemon = daemons(config, cwd=tmp_path, env=env, log_path=tmp_path / "alligatord.log")
    wait_for(lambda: "Hello, newcomer!" in daemon.log(), message="the greeting")
    os.killpg(daemon.pid, signal.SIGINT)  # Control-C
    assert daemon.wait_exit() == 0
    assert "[all] INFO supervisor.quickstart: Hello, newcomer!" in daemon.log()


def test_the_example_file_sets_every_key_and_is_valid(tmp_path):
    text = (ETC / "alligator.ini").read_text()
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    documented = {key for section in parser.sections() for key in parser[section]}
    commented = set(re.findall(r"^; (\w+) = ", text, re.MULTILINE))
    assert set(MAIN_KEYS) | set(QUEUE_KEYS) <= documented | commented

    # Valid once its paths exist here.
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "myapp").mkdir()
    local = text.replace("/srv/myapp", str(tmp_path / "srv")).replace(
        "/var/lib/alligator", str(tmp_path)
    )
    (tmp_path / "alligator.ini").write_text(local)
    config = load(str(tmp_path / "alligator.ini"))
    assert [queue.name for queue in config.queues] == ["all", "emails"]


def test_the_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ETC / "alligatord.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a refused start is not retried
    assert service["User"] and service["User"] != "root"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/alligator"
    assert service["PrivateTmp"] == "yes"
    assert service["ExecStart"].endswith("alligatord -c /etc/alligator/alligator.ini")
    graceful = load_example_graceful_timeout()
    assert int(service["TimeoutStopSec"]) > graceful
    # The example pidfile lives in the directory the unit has systemd create.
    [pidfile] = re.findall(r"^; pidfile = (\S+)$", (ETC / "alligator.ini").read_text(), re.M)
    assert pidfile.startswith(f"/run/{service['RuntimeDirectory']}/")


def test_the_quickstart_module_and_file_name_the_same_queue():
    assert load(str(ETC / "quickstart.ini")).dsn == QUICKSTART_DSN


def load_example_graceful_timeout() -> float:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read(ETC / "alligator.ini")
    return float(parser["alligatord"]["graceful_timeout"])


def test_the_guide_documents_every_key_and_signal():
    guide = (ROOT / "docs" / "alligatord.rst").read_text()
    for key in set(MAIN_KEYS) | set(QUEUE_KEYS):
        assert f"``{key}``" in guide, key
    for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGKILL"):
        assert name in guide, name
