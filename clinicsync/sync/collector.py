"""The garbage collector's full passes wait while a job runs.

CPython's full (generation 2) collection walks every tracked object in the process while holding the interpreter
lock, on whichever thread happens to allocate. A 20,000-patient sync grows the heap, so it triggers a full pass
again each time the heap has grown by a quarter, and each pass walks more: measured 270-415 ms each on a sync's
worker thread (on a busy 2-CPU machine), during which the GUI thread cannot run a line of Python. Those passes
found only hundreds of objects to free each (the sync frees what it is done with by reference counting), so
they are deferred until no job runs; the young generations are still collected as usual, so a cycle made and
dropped while a record is handled is freed at once.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

DEFERRED_THRESHOLD = 1_000_000  # generation-1 passes between full passes: none within any job

_lock = threading.Lock()
_running = 0  # jobs inside full_collections_deferred (two runners' jobs may overlap: the sandbox trial's)
_saved: tuple[int, int, int] | None = None


@contextmanager
def full_collections_deferred() -> Iterator[None]:
    """Run the body with no automatic full collection; the threshold before it comes back when the last body ends
    (the next full pass then finds what the job left behind, no longer held)."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            young, middle, _ = _saved
            gc.set_threshold(young, middle, DEFERRED_THRESHOLD)
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
