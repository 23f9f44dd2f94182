"""alligatord's configuration and its command line (no daemon left running)."""

import pytest

from supervisor.config import ConfigError, load, parse_size
from supervisor.master import TRANSITIONS, State, backoff_delay
from supervisor.preflight import check_dsns

from .alligatord_support import run_cli


def write(tmp_path, text, name="alligator.ini"):
    path = tmp_path / name
    path.write_text(text)
    return path


def dsn_for(tmp_path):
    return f"sqlite:///{tmp_path / 'queue.db'}"


def test_a_full_file(tmp_path):
    (tmp_path / "app").mkdir()
    path = write(
        tmp_path,
        f"""
[alligatord]
dsn = {dsn_for(tmp_path)}     ; the default for every queue
graceful_timeout = 12.5
log_level = WARNING
log_file = logs/alligatord.log
pidfile = alligatord.pid
preload = json, email.utils
pythonpath = app

[queue:emails]
workers = 4
dsn = redis://127.0.0.1:6379/0
max_tasks = 1000
max_memory = 256M
timeout = 300

[queue:default]
""",
    )
    config = load(str(path))
    assert config.graceful_timeout == 12.5
    assert config.log_level == "warning"
    assert config.log_file == str(tmp_path / "logs" / "alligatord.log")
    assert config.pidfile == str(tmp_path / "alligatord.pid")
    assert config.preload == ("json", "email.utils")
    assert config.pythonpath == (str(tmp_path / "app"),)
    emails, default = config.queues
    assert (emails.name, emails.workers) == ("emails", 4)
    assert emails.settings.dsn == "redis://127.0.0.1:6379/0"
    assert emails.settings.max_tasks == 1000
    assert emails.settings.max_memory == 256 * 2**20
    assert emails.settings.timeout == 300
    assert (default.name, default.workers, default.settings.dsn) == ("default", 1, config.dsn)
    assert (default.settings.max_tasks, default.settings.max_memory) == (0, 0)
    assert config.total_workers == 5
    assert emails.settings.tasks is None and emails.settings.secrets == ()


def test_tasks_and_secrets_are_global_defaults_a_queue_may_replace(tmp_path):
    path = write(
        tmp_path,
        f"""
[alligatord]
dsn = {dsn_for(tmp_path)}
tasks = myapp.tasks, myapp.billing.*
secret = first-secret-of-16-chars second-secret-of-16-chars

[queue:a]

[queue:b]
tasks = other.tasks
secret = b-secret-of-sixteen-chars
""",
    )
    a, b = load(str(path)).queues
    assert a.settings.tasks == ("myapp.tasks", "myapp.billing.*")
    assert a.settings.secrets == ("first-secret-of-16-chars", "second-secret-of-16-chars")
    assert (b.settings.tasks, b.settings.secrets) == (
        ("other.tasks",),
        ("b-secret-of-sixteen-chars",),
    )
    assert "first-secret" not in repr(a.settings)


@pytest.mark.parametrize(
    "text, section, key, words",
    [
        ("[queue:a]\n", None, None, "no [alligatord] section"),
        ("[alligatord]\ndsn = {dsn}\n", None, None, "no [queue:NAME] section"),
        ("[alligatord]\ndsn = {dsn}\n[worker:a]\n", "[worker:a]", None, "unknown section"),
        (
            "[alligatord]\ndsn = {dsn}\ngraceful_timout = 3\n[queue:a]\n",
            "[alligatord]",
            "graceful_timout",
            "did you mean graceful_timeout",
        ),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nthreads = 2\n", "[queue:a]", "threads", "known"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nworkers = -1\n", "[queue:a]", "workers", "-1"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nworkers = four\n", "[queue:a]", "workers", "four"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nworkers =\n", "[queue:a]", "workers", "empty"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nmax_tasks = 1e3\n", "[queue:a]", "max_tasks", ""),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nworkers = 5000\n", "[queue:a]", "workers", "1000"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\nmax_memory = 2T\n", "[queue:a]", "max_memory", ""),
        (
            "[alligatord]\ndsn = {dsn}\n[queue:a]\nmax_memory = 268435456\n",
            "[queue:a]",
            "max_memory",
            "K, M or G",
        ),
        (
            "[alligatord]\ndsn = {dsn}\n[queue:a]\nmax_memory = 512K\n",
            "[queue:a]",
            "max_memory",
            "at least 1M",
        ),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\ntimeout = soon\n", "[queue:a]", "timeout", ""),
        (
            "[alligatord]\ndsn = {dsn}\ngraceful_timeout = -3\n[queue:a]\n",
            "[alligatord]",
            "graceful_timeout",
            "seconds",
        ),
        (
            "[alligatord]\ndsn = {dsn}\nlog_level = loud\n[queue:a]\n",
            "[alligatord]",
            "log_level",
            "debug, info",
        ),
        ("[alligatord]\ndsn = foo://x\n[queue:a]\n", "[alligatord]", "dsn", "foo://"),
        ("[alligatord]\ndsn = queue.db\n[queue:a]\n", "[alligatord]", "dsn", "not a DSN"),
        ("[alligatord]\ndsn = locmem://\n[queue:a]\n", "[alligatord]", "dsn", "sqlite://"),
        ("[alligatord]\n[queue:a]\nworkers = 1\n", "[queue:a]", "dsn", "no DSN"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a b]\n", "[queue:a b]", None, "not a queue name"),
        (
            "[alligatord]\ndsn = {dsn}\npreload = my-app\n[queue:a]\n",
            "[alligatord]",
            "preload",
            "my-app",
        ),
        (
            "[alligatord]\ndsn = {dsn}\npythonpath = /no/such/dir\n[queue:a]\n",
            "[alligatord]",
            "pythonpath",
            "/no/such/dir",
        ),
        (
            "[alligatord]\ndsn = {dsn}\n[queue:a]\nworkers = 1\nworkers = 2\n",
            "[queue:a]",
            "workers",
            "twice",
        ),
        ("[DEFAULT]\nworkers = 2\n[alligatord]\ndsn = {dsn}\n[queue:a]\n", "[DEFAULT]", None, ""),
        ("workers = 2\n[alligatord]\n", None, None, "line 1"),
        ("[alligatord]\ndsn = {dsn}\n[queue:a]\n[queue:a]\n", None, None, "appears twice"),
        (
            "[alligatord]\ndsn = {dsn}\n[queue:a]\n[queue: a]\n",
            "[queue: a]",
            None,
            "names the queue 'a' again, after [queue:a]",
        ),
        (
            "[alligatord]\ndsn = {dsn}\ntasks = myapp.tasks, *\n[queue:a]\n",
            "[alligatord]",
            "tasks",
            "'*' is not a module name",
        ),
        (
            "[alligatord]\ndsn = {dsn}\n[queue:a]\ntasks = my-app.tasks\n",
            "[queue:a]",
            "tasks",
            "'my-app.tasks' is not a module name",
        ),
        (
            "[alligatord]\ndsn = {dsn}\nsecret = tooshort\n[queue:a]\n",
            "[alligatord]",
            "secret",
            "at least 16 characters",
        ),
    ],
)
def test_every_mistake_is_one_sentence_naming_file_section_and_key(
    tmp_path, text, section, key, words
):
    path = write(tmp_path, text.format(dsn=dsn_for(tmp_path)))
    with pytest.raises(ConfigError) as error:
        load(str(path))
    message = str(error.value)
    assert message.startswith(str(path))
    assert "\n" not in message and message.endswith(".")
    if section:
        assert f"section {section}" in message
    if key:
        assert f"key {key}:" in message
    assert words in message


def test_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read the configuration file .*missing.ini"):
        load(str(tmp_path / "missing.ini"))


def test_a_dsn_its_backend_refuses(tmp_path):
    path = write(tmp_path, "[alligatord]\ndsn = sqlite:////no/such/dir/q.db\n[queue:a]\n")
    config = load(str(path))  # the scheme is known...
    with pytest.raises(ConfigError, match=r"section \[alligatord\], key dsn: .*/no/such/dir"):
        check_dsns(config)  # ...the backend refuses the path
    path = write(
        tmp_path, f"[alligatord]\ndsn = {dsn_for(tmp_path)}\n[queue:a]\ndsn = sqlite:///q?x=1\n"
    )
    with pytest.raises(ConfigError, match=r"section \[queue:a\], key dsn: .*'x'"):
        check_dsns(load(str(path)))


@pytest.mark.parametrize(
    "dsn",
    [
        "redis://[::1/0",  # an unclosed IPv6 bracket
        "beanstalk://[::1/",
        "sqlite:///queue.db?lease=nan",
        "redis://127.0.0.1:6379/0?lease=inf",
    ],
)
def test_a_dsn_that_makes_its_backend_raise_is_one_sentence(tmp_path, dsn):
    path = write(tmp_path, f"[alligatord]\ndsn = {dsn_for(tmp_path)}\n[queue:a]\ndsn = {dsn}\n")
    with pytest.raises(ConfigError) as error:
        check_dsns(load(str(path)))
    message = str(error.value)
    assert message.startswith(f"{path}, section [queue:a], key dsn: ")
    assert "\n" not in message and message.endswith(".")

    # At start: that sentence alone, and the status of a refused start.
    result = run_cli("-c", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"alligatord: {message}"]


def test_sizes():
    assert parse_size("64k") == 64 * 1024
    assert parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size("256MiB") == 256 * 2**20
    for text in ("lots", "512", "2T"):
        with pytest.raises(ValueError):
            parse_size(text)


def test_backoff_doubles_up_to_a_minute():
    assert [backoff_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_every_state_is_reachable_and_left_through_the_table():
    targets = {after for _, after in TRANSITIONS}
    sources = {before for before, _ in TRANSITIONS}
    assert targets == set(State) and sources == set(State)


# The command line.


def test_check_accepts_a_valid_file(tmp_path):
    path = write(tmp_path, f"[alligatord]\ndsn = {dsn_for(tmp_path)}\n[queue:a]\nworkers = 3\n")
    result = run_cli("-c", str(path), "--check")
    assert result.returncode == 0, result.stderr
    assert "is valid: 1 queue(s), 3 worker(s)" in result.stdout


@pytest.mark.parametrize("check, status", [(True, 1), (False, 2)])
def test_a_bad_file_gives_one_sentence_and_a_failure_status(tmp_path, check, status):
    path = write(tmp_path, f"[alligatord]\ndsn = {dsn_for(tmp_path)}\n[queue:a]\nworkers = x\n")
    result = run_cli("-c", str(path), *(["--check"] if check else []))
    assert result.returncode == status
    assert result.stderr.splitlines() == [
        f"alligatord: {path}, section [queue:a], key workers: expected a whole number >= 0, "
        f"got 'x'."
    ]
    assert result.stdout == ""


def test_check_imports_the_preload_modules(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "broken_tasks.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "app" / "good_tasks.py").write_text("VALUE = 1\n")
    text = (
        f"[alligatord]\ndsn = {dsn_for(tmp_path)}\npythonpath = app\npreload = {{}}\n[queue:a]\n"
    )
    path = write(tmp_path, text.format("good_tasks"))
    assert run_cli("-c", str(path), "--check").returncode == 0
    path = write(tmp_path, text.format("good_tasks broken_tasks"))
    sentence = (
        f"alligatord: {path}, section [alligatord], key preload: cannot import broken_tasks "
        "(RuntimeError: no config)."
    )
    result = run_cli("-c", str(path), "--check")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [sentence]
    # Starting the daemon: refused with the same sentence, before anything is forked.
    result = run_cli("-c", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [sentence]


def test_version_and_usage(tmp_path):
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("alligatord ")
    result = run_cli()
    assert result.returncode == 2 and "-c/--config" in result.stderr
