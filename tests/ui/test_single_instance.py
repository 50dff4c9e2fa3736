"""One ClinicSync per profile, with real processes: a second launch asks the first to show its window and exits
0; after the first is SIGKILLed (leaving its socket behind), a new launch starts normally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clinicsync.paths import AppPaths
from tests.support import profile_env
from tests.ui.conftest import DUMMY_KEYS, REPO

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and socket files are POSIX")

SHOWN = "ClinicSync window shown"
ASKED = "another launch asked this instance to show its window"


def launch(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "clinicsync"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def log_text(home: Path) -> str:
    log = AppPaths.under(home).log_file
    return log.read_text(encoding="utf-8") if log.exists() else ""


def wait_for(predicate, what: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {what}: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_second_launch_shows_the_first_and_a_killed_instance_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = profile_env(home, DUMMY_KEYS, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    first = launch(env)
    third = None
    try:
        wait_for(lambda: log_text(home).count(SHOWN) == 1, "the first window", first)

        second = launch(env)
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 0, out
        assert "already running" in out
        wait_for(lambda: ASKED in log_text(home), "the first to hear 'show'", first)
        assert first.poll() is None and log_text(home).count(SHOWN) == 1  # the second never opened a window

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        socket_file = Path(tempfile.gettempdir()) / AppPaths.under(home).instance_socket_name  # Qt's tempPath
        assert socket_file.exists()  # what a killed process leaves behind

        third = launch(env)
        wait_for(lambda: log_text(home).count(SHOWN) == 2, "the replacement window", third)
        assert third.poll() is None
    finally:
        for proc in (first, third):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    assert third.wait(30) == 0  # SIGTERM quits cleanly...
    assert "worker joined: True" in log_text(home)  # ...after joining the sync worker
