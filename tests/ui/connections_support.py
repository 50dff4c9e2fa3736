"""Helpers for the Connections, first-run, approval and review tests: an in-memory keyring and a UiContext on a
sandbox profile (runner + bridge), built the way the app builds its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import keyring
import keyring.backend
from keyring.errors import PasswordDeleteError

from clinicsync.app import bootstrap
from clinicsync.sync.runner import SyncRunner
from clinicsync.ui.background import wait_for_background
from clinicsync.ui.bridge import BridgeListener, RunnerBridge
from clinicsync.ui.context import UiContext


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring backend that keeps passwords in a dict. Priority 1: ClinicSync accepts it as secure."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError("not found")


@contextlib.contextmanager
def memory_keyring() -> Iterator[MemoryKeyring]:
    """Install a MemoryKeyring as the keyring package's backend for the duration, then restore the old one."""
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


def build_ui(env: Mapping[str, str]) -> UiContext:
    """A UiContext on the profile `env` names, with its own runner and bridge (as ui.main builds one)."""
    app = bootstrap(dict(env))
    bridge = RunnerBridge()
    runner = SyncRunner(app.paths, app.settings, BridgeListener(bridge))
    return UiContext(app=app, runner=runner, bridge=bridge, tray_available=False)


def close_ui(ui: UiContext) -> None:
    assert wait_for_background(30_000), "a background call outlived the test"
    assert ui.runner.shutdown(30), "the sync runner did not stop"
