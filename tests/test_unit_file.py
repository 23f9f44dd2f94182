"""etc/alligatord.service as systemd reads it: hardened, and free of mistakes."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .alligatord_support import ROOT

UNIT = ROOT / "etc" / "alligatord.service"

#: What `systemd-analyze security` rates "OK" or better.
HIGHEST_EXPOSURE = 2.5

#: The exposures the unit keeps on purpose, each explained by a comment in it: the workers
#: need the network (TCP and Unix sockets to their servers, and no list of addresses can
#: be known in advance), ProcSubset=pid would break psutil before 7.1 and tasks reading
#: /proc/meminfo and the like, ProtectClock=yes itself grants reading the RTC, and a task
#: queue runs in the host's root directory.
ACCEPTED_EXPOSURES = {
    "PrivateNetwork=",
    "IPAddressDeny=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_UNIX",
    "ProcSubset=",
    "DeviceAllow=",
    "RootDirectory=/RootImage=",
}


def systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("systemd-analyze") or shutil.which(
        "systemd-analyze", path="/usr/bin:/bin"
    )
    if binary is None:
        pytest.fail("systemd-analyze is not installed; bin/run-tests installs it (systemd).")
    # A UTF-8 locale for the ✓/✗ marks (systemd falls back to other marks without one),
    # and no colours to strip.
    env = {**os.environ, "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_the_unit_is_rated_ok_by_systemd_analyze_security():
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(UNIT))
    assert result.returncode == 0, result.stderr
    [level] = re.findall(
        r"^→ Overall exposure level for alligatord\.service: (\d+\.\d+) ",
        result.stdout,
        re.MULTILINE,
    )
    assert float(level) <= HIGHEST_EXPOSURE, result.stdout
    # Each setting counts: one lost in an edit fails here, even when the total stays OK.
    exposed = set(re.findall(r"^✗ (\S+)", result.stdout, re.MULTILINE))
    assert exposed, result.stdout  # the marks are parsed, or this test would prove nothing
    assert exposed <= ACCEPTED_EXPOSURES, result.stdout


def test_the_unit_verifies_cleanly(tmp_path):
    # As installed: ExecStart names the alligatord of the environment running the tests
    # (verify checks that the program exists and is executable).
    alligatord = Path(sys.prefix) / "bin" / "alligatord"
    assert os.access(alligatord, os.X_OK), f"{alligatord} is missing: pip install -e ."
    text = UNIT.read_text()
    exec_start = "ExecStart=/usr/local/bin/alligatord "
    assert text.count(exec_start) == 1
    unit = tmp_path / "alligatord.service"
    unit.write_text(text.replace(exec_start, f"ExecStart={alligatord} "))

    result = systemd_analyze("verify", "--man=no", str(unit))
    # User=alligator need not exist here: systemd resolves User= when it starts the
    # service, not when it loads the unit, and verify does not look it up. A missing user
    # is the installer's step (the useradd at the top of the unit), not a unit mistake.
    #
    # Verify also loads the units this one pulls in (network-online.target,
    # multi-user.target and their dependencies) from this machine, where systemd may not
    # be booted, or be a cut-down container install: what it says about those, or about
    # the bus it cannot reach, is about this machine. Anything else, including any line
    # naming this unit or its file, is a failure.
    problems = [line for line in result.stderr.splitlines() if not is_about_this_machine(line)]
    problems += result.stdout.splitlines()
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def is_about_this_machine(line: str) -> bool:
    """Whether a line of ``systemd-analyze verify`` is about a bus it could not reach, or
    about another unit than ours and does not name ours (an ordering cycle through ours,
    reported on another unit, is ours)."""
    if "alligatord" in line:
        return False
    if re.match(r"Failed to (connect to|create) (the )?bus\b", line):
        return True
    return bool(
        re.match(r"(/\S+/)?[\w@\\.:-]+\.(service|socket|target|mount|path|timer|slice)[:\s]", line)
    )


def test_the_install_steps_keep_the_ini_from_other_users():
    # It may hold DSN passwords and signing secrets: root writes it, the service reads it.
    header = UNIT.read_text().split("[Unit]")[0]
    assert re.search(
        r"^#\s+install -D -m 0640 -o root -g alligator etc/alligator\.ini "
        r"/etc/alligator/alligator\.ini$",
        header,
        re.MULTILINE,
    )
