"""Named crash points for the crash-safety tests: `CLINICSYNC_CRASH_AT=after_stripe_ok` (optionally `name:N` for
the Nth time the point is reached) kills the process there, as a power cut would. Unset, they cost one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    spec = os.environ.get("CLINICSYNC_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        reached = _counts[name]
    if reached >= int(nth or 1):
        _die()


def _die() -> None:
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)
