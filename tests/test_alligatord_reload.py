"""SIGHUP: alligatord applies a changed file without restarting what did not change."""

import os
import signal

import pytest

from alligator.gator import Gator

from . import alligatord_support as support
from .alligatord_support import lines, sqlite_dsn, write_config
from .servers import wait_for


def reload(daemon, config, dsn, queues, **main):
    write_config(config, dsn, queues, **main)
    before = daemon.log().count("Reloaded ")
    daemon.send(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("Reloaded ") > before, message="the reload")


def test_scale_up_add_a_queue_scale_down_remove_it_and_survive_a_broken_file(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    config = tmp_path / "a.ini"
    write_config(config, dsn, {"a": {"workers": 2}}, graceful_timeout=10)
    daemon = daemons(config)
    original = daemon.wait_workers({"a": 2})["a"]

    # Scale up a queue and add another: the running workers stay.
    reload(daemon, config, dsn, {"a": {"workers": 3}, "b": {"workers": 1}}, graceful_timeout=10)
    workers = daemon.wait_workers({"a": 3, "b": 1})
    assert set(original) < set(workers["a"])

    # Scale down and remove b while its worker runs a task: the task finishes first.
    record = tmp_path / "b.txt"
    Gator(dsn, queue_name="b").task(support.sleep_then_record, str(record), 1.0)
    wait_for(lambda: lines(record), message="b's task to start")
    reload(daemon, config, dsn, {"a": {"workers": 1}}, graceful_timeout=10)
    assert daemon.wait_workers({"a": 1})["a"] == [original[0]]  # the oldest stays
    assert lines(record) == [f"start {workers['b'][0]}", f"done {workers['b'][0]}"]
    assert "Queue 'b' removed: stopping its workers." in daemon.log()

    # A broken file is refused; the running configuration stays in force. So is a DSN
    # that makes its backend raise, whatever it raises.
    broken = {
        "workers = many": "section [queue:a], key workers: expected a whole number >= 0",
        "dsn = redis://[::1/0": "section [queue:a], key dsn: DSN 'redis://[::1/0' is malformed",
        "dsn = beanstalk://[::1/": "section [queue:a], key dsn: DSN 'beanstalk://[::1/' is "
        "malformed",
        f"dsn = {dsn}?lease=nan": "section [queue:a], key dsn: Option lease='nan'",
    }
    for refusals, (line, problem) in enumerate(broken.items(), 1):
        config.write_text(f"[alligatord]\ndsn = {dsn}\n[queue:a]\n{line}\n")
        daemon.send(signal.SIGHUP)
        wait_for(
            lambda n=refusals: daemon.log().count("Reload refused") == n, message="the refusal"
        )
        assert f"Reload refused, the running configuration stays: {config}, {problem}" in (
            daemon.log()
        )
        assert daemon.process.poll() is None
    assert "Traceback" not in daemon.log()
    record = tmp_path / "a.txt"
    Gator(dsn, queue_name="a").task(support.record, str(record), "still working")
    wait_for(lambda: lines(record) == ["still working"], message="a task after the refusal")
    assert daemon.wait_workers({"a": 1})["a"] == [original[0]]

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


@pytest.fixture(params=["sqlite", "redis"])
def dsn(request, tmp_path):
    return support.backend_dsn(request, tmp_path)


def test_changed_settings_replace_workers_new_ones_first(daemons, dsn, tmp_path):
    config = tmp_path / "a.ini"
    write_config(config, dsn, {"a": {"workers": 2}, "b": {"workers": 1}}, graceful_timeout=10)
    daemon = daemons(config)
    before = daemon.wait_workers({"a": 2, "b": 1})
    record = tmp_path / "a.txt"
    Gator(dsn, queue_name="a").task(support.sleep_then_record, str(record), 1.5)
    wait_for(lambda: lines(record), message="a's task to start")
    busy = int(lines(record)[0].split()[1])

    queues = {"a": {"workers": 2, "max_tasks": 50}, "b": {"workers": 1}}
    reload(daemon, config, dsn, queues, graceful_timeout=10)
    after = daemon.wait_workers({"a": 2, "b": 1})
    assert not set(after["a"]) & set(before["a"])  # a's workers were replaced...
    assert after["b"] == before["b"]  # ...b's were not
    assert lines(record) == [f"start {busy}", f"done {busy}"]  # the old one finished first

    log = daemon.log()
    new_up = sorted(log.index(f"(pid {pid}): STARTING -> RUNNING") for pid in after["a"])
    old_stop = sorted(log.index(f"(pid {pid}): RUNNING -> STOPPING") for pid in before["a"])
    # Each old worker was asked to go only once a new one was up in its place.
    assert new_up[0] < old_stop[0] and new_up[1] < old_stop[1]

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_the_master_goes_on_while_a_reload_imports_its_modules(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "slow_import.py").write_text("import time\ntime.sleep(3)\n")
    config = tmp_path / "a.ini"
    write_config(config, dsn, {"a": {"workers": 1}}, graceful_timeout=5, pythonpath="app")
    daemon = daemons(config)
    [first] = daemon.wait_workers({"a": 1})["a"]

    # The new file's task module takes 3 s to import; meanwhile a worker dies.
    write_config(
        config,
        dsn,
        {"a": {"workers": 1}},
        graceful_timeout=5,
        pythonpath="app",
        tasks="slow_import",
    )
    daemon.send(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: reloading" in daemon.log(), message="the reload to begin")
    os.kill(first, signal.SIGKILL)
    replaced = f"(pid {first}): RUNNING -> EXITED: killed by SIGKILL unexpectedly; replacing it"
    wait_for(lambda: replaced in daemon.log(), timeout=2, message="the master to reap it")
    # (The reload's import check is a child of the master too: look at the workers alone.)
    [second] = wait_for(lambda: daemon.queue_workers("a", "idle"), timeout=2)
    assert second != first and "Reloaded" not in daemon.log()
    # Then the reload ends, and replaces the worker for the new settings.
    wait_for(lambda: "Reloaded" in daemon.log(), timeout=10, message="the reload")
    [third] = daemon.wait_workers({"a": 1}, timeout=10)["a"]
    assert third != second
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0


def test_an_import_that_hangs_refuses_the_reload_and_nothing_else(daemons, tmp_path):
    dsn = sqlite_dsn(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "hangs.py").write_text("import time\ntime.sleep(3600)\n")
    config = tmp_path / "a.ini"
    main = {"graceful_timeout": 5, "pythonpath": "app", "import_timeout": 1}
    write_config(config, dsn, {"a": {"workers": 1}}, **main)
    daemon = daemons(config)
    [worker] = daemon.wait_workers({"a": 1})["a"]
    write_config(config, dsn, {"a": {"workers": 1}}, **main, tasks="hangs")
    daemon.send(signal.SIGHUP)
    refusal = (
        "section [queue:a], key tasks: cannot import hangs (did not finish importing within 1s)"
    )
    wait_for(lambda: refusal in daemon.log(), timeout=10, message="the refusal")
    assert daemon.queue_workers("a") == [worker]
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
