"""Small network calls off the GUI thread (connection tests, Stripe look-ups, starting the sandbox).

Syncs go through the runner; this is for the one-off calls a screen makes, which must not freeze the window on a
slow or unreachable host. The function runs on a private QThreadPool; its result (or exception) comes back to
`on_done` on the GUI thread through a queued signal, so callbacks may touch widgets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

log = logging.getLogger(__name__)

_pool: QThreadPool | None = None


def pool() -> QThreadPool:
    """The pool for these calls: separate from Qt's global one so waiting for it never waits for anything else."""
    global _pool
    if _pool is None:
        _pool = QThreadPool()
        _pool.setMaxThreadCount(4)
    return _pool


def wait_for_background(timeout_ms: int = 20_000) -> bool:
    """Wait for running calls to end (call before the app exits, so no worker outlives it). True if all did."""
    return _pool is None or _pool.waitForDone(timeout_ms)


@dataclass(frozen=True)
class Outcome:
    """What a background call produced: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Relay(QObject):
    """Lives on the GUI thread; a signal emitted from the worker is queued to it."""

    done = Signal(object)


def run_in_background(fn: Callable[[], Any], on_done: Callable[[Outcome], None], *, owner: QObject) -> None:
    """Run `fn()` on the pool and call `on_done(Outcome)` on the GUI thread.

    The relay is a child of `owner`: if the owner (a tab, a dialog) is gone when the call ends, the result is
    dropped instead of reaching a deleted widget.
    """
    relay = _Relay(owner)
    relay.done.connect(on_done)
    relay.done.connect(relay.deleteLater)

    def task() -> None:
        try:
            outcome = Outcome(value=fn())
        except Exception as exc:  # handed to the GUI thread to show; nothing is lost
            outcome = Outcome(error=exc)
        try:
            relay.done.emit(outcome)
        except RuntimeError:  # the owner was closed meanwhile: nobody is waiting for this result
            log.debug("background result dropped: its window was closed")

    pool().start(task)
