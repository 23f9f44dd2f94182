"""alligatord's pidfile: the lock, stale files, the mode, and symbolic links never followed."""

import os
import stat
import subprocess
import sys

import pytest

from supervisor.pidfile import Pidfile, PidfileError, read_pid

from .alligatord_support import run_cli, sqlite_dsn, write_config

VICTIM = "precious content, not a pid\n"


@pytest.fixture
def victim(tmp_path):
    """A file an attacker would like alligatord to overwrite, in another directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / "victim"
    path.write_text(VICTIM)
    path.chmod(0o644)
    return path


def assert_untouched(victim) -> None:
    assert victim.read_text() == VICTIM
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


@pytest.fixture
def umask():
    """Sets the umask for one test, and puts the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_pidfile_is_written_and_removed(tmp_path):
    path = tmp_path / "run" / "alligatord.pid"
    path.parent.mkdir()
    pidfile = Pidfile(str(path))
    pidfile.create()
    assert read_pid(str(path)) == os.getpid()
    assert os.listdir(path.parent) == ["alligatord.pid"]  # no temporary file left
    pidfile.remove()
    assert not path.exists()


def test_a_pidfile_locked_by_a_running_daemon_is_refused(tmp_path):
    path = tmp_path / "alligatord.pid"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from supervisor.pidfile import Pidfile; "
            "Pidfile(sys.argv[1]).create(); print('held', flush=True); time.sleep(30)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(PidfileError, match=f"held by process {holder.pid}, which is running"):
            Pidfile(str(path)).create()
        assert read_pid(str(path)) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # Its holder is gone, and with it the lock: the file is stale now.
    pidfile = Pidfile(str(path))
    pidfile.create()
    assert read_pid(str(path)) == os.getpid()
    pidfile.remove()


def test_two_daemons_cannot_both_take_a_stale_pidfile(tmp_path):
    # Each Pidfile opens the file on its own, as two daemons would: the lock of the one
    # that came first keeps the other out, although the stale file names no live process
    # (here: this very process, which a stale file in a container often does).
    path = tmp_path / "alligatord.pid"
    path.write_text(f"{os.getpid()}\n")
    first = Pidfile(str(path))
    first.create()
    with pytest.raises(PidfileError, match="which is running"):
        Pidfile(str(path)).create()
    assert read_pid(str(path)) == os.getpid()
    first.remove()
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", ["{dead}\n", "garbage\n", "", "{own}\n", "1\n"])
def test_a_stale_pidfile_is_replaced(tmp_path, content):
    # A file nobody holds the lock of is stale, whatever pid it names: pid 1 is alive,
    # but it is no alligatord.
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / "alligatord.pid"
    path.write_text(content.format(dead=dead.pid, own=os.getpid()))
    pidfile = Pidfile(str(path))
    pidfile.create()
    assert read_pid(str(path)) == os.getpid()
    pidfile.remove()


def test_pidfile_is_left_alone_if_another_process_took_it(tmp_path):
    path = tmp_path / "alligatord.pid"
    pidfile = Pidfile(str(path))
    pidfile.create()
    path.write_text("1\n")
    pidfile.remove()
    assert read_pid(str(path)) == 1


def test_unwritable_pidfile(tmp_path):
    with pytest.raises(PidfileError, match="Cannot write the pidfile"):
        Pidfile(str(tmp_path / "missing-dir" / "a.pid")).create()


# The mode.


@pytest.mark.parametrize(
    "mask, mode",
    [
        pytest.param(0o022, 0o600, id="umask-022"),
        pytest.param(0o077, 0o600, id="umask-077"),
        pytest.param(0o277, 0o400, id="umask-277"),  # a stricter umask wins
    ],
)
def test_the_pidfile_is_for_its_owner_alone(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "alligatord.pid"
    pidfile = Pidfile(str(path))
    pidfile.create()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert read_pid(str(path)) == os.getpid()
    finally:
        pidfile.remove()


def test_a_stale_world_readable_pidfile_is_replaced_by_an_owner_only_one(tmp_path, umask):
    path = tmp_path / "alligatord.pid"
    path.write_text("garbage\n")
    path.chmod(0o644)
    pidfile = Pidfile(str(path))
    pidfile.create()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        pidfile.remove()


# Symbolic links.


def test_a_symlink_at_the_temporary_path_is_not_followed(tmp_path, victim):
    # The temporary file is named after the pid of the process writing the pidfile: here,
    # this one. A link planted there must not make create() write through it.
    path = tmp_path / "alligatord.pid"
    temporary = tmp_path / f"alligatord.pid.{os.getpid()}.tmp"
    temporary.symlink_to(victim)
    pidfile = Pidfile(str(path))
    pidfile.create()
    try:
        assert_untouched(victim)
        assert not path.is_symlink() and read_pid(str(path)) == os.getpid()
        assert not os.path.lexists(temporary)
    finally:
        pidfile.remove()
    assert_untouched(victim)
    assert os.listdir(tmp_path) == ["elsewhere"]


def test_a_dangling_symlink_at_the_temporary_path_creates_nothing(tmp_path):
    path = tmp_path / "alligatord.pid"
    target = tmp_path / "elsewhere-not-yet"
    (tmp_path / f"alligatord.pid.{os.getpid()}.tmp").symlink_to(target)
    pidfile = Pidfile(str(path))
    pidfile.create()
    pidfile.remove()
    assert not os.path.lexists(target)
    assert os.listdir(tmp_path) == []


def test_a_symlink_at_the_pidfile_path_is_refused(tmp_path, victim):
    path = tmp_path / "alligatord.pid"
    path.symlink_to(victim)
    with pytest.raises(PidfileError) as refused:
        Pidfile(str(path)).create()
    assert str(refused.value) == (
        f"The pidfile {path} is a symbolic link, which alligatord does not follow: remove "
        f"it, or set pidfile to a path of its own."
    )
    assert_untouched(victim)
    assert path.is_symlink()  # left as it was found, for its owner to look at
    assert sorted(os.listdir(tmp_path)) == ["alligatord.pid", "elsewhere"]


def test_a_dangling_symlink_at_the_pidfile_path_is_refused(tmp_path):
    path = tmp_path / "alligatord.pid"
    target = tmp_path / "elsewhere-not-yet"
    path.symlink_to(target)
    with pytest.raises(PidfileError, match="is a symbolic link"):
        Pidfile(str(path)).create()
    assert not os.path.lexists(target)


def test_alligatord_refuses_to_start_on_a_symlinked_pidfile(tmp_path, victim):
    path = tmp_path / "alligatord.pid"
    path.symlink_to(victim)
    config = write_config(tmp_path / "a.ini", sqlite_dsn(tmp_path), {"a": {"workers": 1}})
    result = run_cli("-c", str(config), "--pidfile", str(path))
    assert result.returncode == 2, result.stderr
    assert f"The pidfile {path} is a symbolic link" in result.stderr
    assert_untouched(victim)
