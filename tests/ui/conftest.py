"""Fixtures for the desktop app tests (pytest-qt, offscreen).

`build_gui` builds the real app (`clinicsync.ui.main.build_app`) on a temporary CLINICSYNC_HOME whose keys come
from the environment (the sandbox's, or dummies), so no test reads or writes the real keyring or a real profile.
Every app built is shut down after its test, and the test fails if the sync worker was not joined.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from PySide6.QtWidgets import QWidget

from clinicsync.sandbox.launcher import Sandbox, SandboxStartError, spawn
from clinicsync.ui.main import GuiApp, build_app
from tests.support import profile_env

REPO = Path(__file__).resolve().parents[2]
WAIT_MS = 60_000
# Keys that satisfy "a key is set" without reaching anything: for tests that never sync.
DUMMY_KEYS = {
    "CLINICSYNC_CLINIKO_API_KEY": "dummy-cliniko-key",
    "CLINICSYNC_STRIPE_API_KEY": "sk_test_dummy",
    "CLINICSYNC_CONTACT_EMAIL": "tests@example.com",
}


def wait_for_progress(qtbot, gui: GuiApp) -> None:
    """Wait until the GUI has received a progress step of the running sync.

    Not qtbot.waitSignal(job_progress): that signal arrives hundreds of times from the worker thread, and the
    copies still queued when the blocker disconnects are delivered to it after it is gone (a segfault in
    pytest-qt's slot). The tracker is the app's own receiver, so polling it is safe.
    """
    qtbot.waitUntil(lambda: gui.tracker.progress is not None and bool(gui.tracker.progress.stream), timeout=WAIT_MS)


def never_confirm(_parent: QWidget, _syncing: bool) -> bool:
    raise AssertionError("the quit confirmation was shown unexpectedly")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def offline_env(home: Path) -> dict[str, str]:
    """A profile with dummy keys: everything but an actual sync works."""
    return profile_env(home, DUMMY_KEYS)


@pytest.fixture
def build_gui(qtbot) -> Iterator[Callable[..., GuiApp]]:
    built: list[GuiApp] = []

    def build(env: Mapping[str, str], *, tray: bool = False, **kwargs: object) -> GuiApp:
        kwargs.setdefault("confirm_quit", never_confirm)
        gui = build_app(env, tray_available=tray, **kwargs)  # type: ignore[arg-type]
        built.append(gui)  # not qtbot.addWidget: pytest-qt would close the window before shutdown() runs
        return gui

    yield build
    for gui in built:
        assert gui.shutdown(15), "the sync worker was not joined"
        assert not gui.ui.runner.busy


@pytest.fixture
def sandbox_gui(make_sandbox, env_for, build_gui) -> Callable[..., tuple[GuiApp, Sandbox]]:
    """The app on a fresh profile pointed at a new in-process sandbox."""

    def make(*, tray: bool = False, env: Mapping[str, str] | None = None, **sandbox_options: object):
        sandbox = make_sandbox(**sandbox_options)
        gui = build_gui(env_for(sandbox, **(env or {})), tray=tray)
        return gui, sandbox

    return make


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[Callable[..., dict]]:
    """Start `python -m clinicsync.sandbox.launcher` in its own process; returns its port-file contents."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> dict:
        error_log = tmp_path / f"sandbox-{len(procs)}.err"
        with error_log.open("wb") as errors:
            try:
                proc, info = spawn(
                    list(args),
                    tmp_path / f"sandbox-{len(procs)}.json",
                    timeout_s=30,
                    cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                )
            except SandboxStartError as exc:
                pytest.fail(f"{exc}: {error_log.read_text(errors='replace')[-2000:]}")
        procs.append(proc)
        return info

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ONLY_PATIENTS = {
    "CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED": "false",
    "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "false",
}


@pytest.fixture
def env_for(env_for: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
    """The window's tests are about the window: they sync the patients stream (the products and invoice linking
    streams have their own tests, and would add a run row and a status line to every screen checked here)."""

    def make(sandbox: Sandbox, name: str = "profile", **overrides: str) -> dict[str, str]:
        return env_for(sandbox, name, **{**ONLY_PATIENTS, **overrides})

    return make
