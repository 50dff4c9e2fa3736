"""The sandbox trial's emulators keep their data between launches: one snapshot file per emulator.

A snapshot is the emulator's whole store: every attribute of the emulator object except the runtime-only ones it
names in `SNAPSHOT_TRANSIENT` (its lock, clock, the server's fault plan...). Nothing here knows which resources an
emulator has, so a resource added later (an invoice table, payment intents) is saved and restored with no edit.

- `save(emulator, path)` writes atomically (a temp file in the same folder, then `os.replace`): a crash mid-write
  leaves the previous snapshot, never half of one.
- `load(emulator, path)` restores it; an unreadable or damaged file raises `SnapshotError` with a message a person
  can act on (the caller offers a fresh start), never a traceback.
- `SnapshotKeeper` saves a moment after the emulator changes (debounced: a sync's burst of writes is one save)
  and once more when it closes.

Snapshots are pickles read back by an unpickler that only builds ClinicSync's own classes and plain data types,
so a tampered file cannot run arbitrary code. They hold invented clinic data only; sandbox keys are constants in
the code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pickle
import socketserver
import tempfile
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

log = logging.getLogger("clinicsync.sandbox")

SNAPSHOT_SUFFIX = ".snapshot"
FORMAT = 1  # bump when a snapshot written by this code could no longer be understood
DEBOUNCE_S = 1.0
# Always runtime-only, whatever the emulator says: locks can't be saved, and the server sets `faults` afresh.
ALWAYS_TRANSIENT = frozenset({"_lock", "faults"})

# What an unpickled snapshot may build besides the sandbox's own classes: plain data, nothing that runs code.
_SAFE_GLOBALS = {
    "builtins": {"set", "frozenset", "dict", "list", "tuple", "bytes", "bytearray", "complex", "float", "int", "str"},
    "collections": {"OrderedDict", "Counter", "defaultdict", "deque"},
    "datetime": {"date", "datetime", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "random": {"Random"},
    "uuid": {"UUID", "SafeUUID"},
    "zoneinfo": {"ZoneInfo", "ZoneInfo._unpickle"},
}
# ClinicSync's own classes (the emulators' records, and any value type of the app a resource may hold).
_OWN_PACKAGE = "clinicsync."
# ... but never one whose building acts on the machine (a server binding a socket, a thread), even if ours.
_NEVER_BUILT: tuple[type, ...] = (socketserver.BaseServer, BaseHTTPRequestHandler, threading.Thread)


class SnapshotError(Exception):
    """A saved snapshot can't be used; the message says which file and why, in words."""


def snapshot_path(folder: Path, emulator: Any) -> Path:
    return Path(folder) / f"{emulator.name}{SNAPSHOT_SUFFIX}"


def transient_names(emulator: Any) -> frozenset[str]:
    return ALWAYS_TRANSIENT | frozenset(getattr(emulator, "SNAPSHOT_TRANSIENT", ()))


def state_of(emulator: Any) -> dict[str, Any]:
    """The emulator's store: every attribute but the runtime-only ones."""
    skip = transient_names(emulator)
    return {name: value for name, value in vars(emulator).items() if name not in skip}


def dumps(emulator: Any) -> bytes:
    """The snapshot's bytes, taken under the emulator's lock so no request is half-applied in it."""
    lock = getattr(emulator, "_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        state = state_of(emulator)
        return pickle.dumps(
            {"format": FORMAT, "emulator": emulator.name, "state": state}, protocol=pickle.HIGHEST_PROTOCOL
        )


def save(emulator: Any, path: Path) -> None:
    """Write the emulator's snapshot to `path` atomically."""
    write_atomically(Path(path), dumps(emulator))


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(emulator: Any, path: Path) -> bool:
    """Restore the emulator from `path`: False when there is no snapshot (nothing changed), True when restored.
    Raises SnapshotError when the file exists but can't be used; the emulator is then left as it was."""
    path = Path(path)
    what = f"The sandbox clinic's saved {_service(emulator)} data ({path})"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SnapshotError(f"{what} could not be read: {exc.strerror or exc}.") from exc
    try:
        saved = _SandboxUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any damage: truncated, garbled, or not a snapshot at all
        raise SnapshotError(f"{what} is damaged and can't be used ({_reason(exc)}).") from exc
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise SnapshotError(f"{what} is not a sandbox snapshot.")
    if saved.get("format") != FORMAT or saved.get("emulator") != emulator.name:
        raise SnapshotError(f"{what} was saved by another version of ClinicSync and can't be used.")
    state: dict[str, Any] = saved["state"]
    _fill_new_fields(state.values())
    lock = getattr(emulator, "_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        skip = transient_names(emulator)
        vars(emulator).update({name: value for name, value in state.items() if name not in skip})
        restored = getattr(emulator, "restored", None)  # optional hook: drop what only made sense while running
        if callable(restored):
            restored()
    return True


class SnapshotKeeper:
    """Keeps one emulator's snapshot current: `changed()` schedules a save `delay_s` later (a burst of changes is
    one save), `close()` saves a last time. A failed save is logged, never raised into the request that caused it."""

    def __init__(self, emulator: Any, path: Path, *, delay_s: float = DEBOUNCE_S) -> None:
        self.emulator = emulator
        self.path = Path(path)
        self.delay_s = delay_s
        self.saves = 0
        self._lock = threading.Lock()  # one save at a time, and guards the timer
        self._timer: threading.Timer | None = None
        self._closed = False

    def changed(self) -> None:
        with self._lock:
            if self._closed or self._timer is not None:
                return
            self._timer = threading.Timer(self.delay_s, self._debounced)
            self._timer.daemon = True
            self._timer.name = f"sandbox-{self.emulator.name}-snapshot"
            self._timer.start()

    def flush(self) -> bool:
        """Save now; False (and a log line) if the snapshot could not be written."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return self._save()

    def close(self) -> bool:
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return self._save()

    def _debounced(self) -> None:
        with self._lock:
            self._timer = None
            if not self._closed:
                self._save()

    def _save(self) -> bool:
        try:
            save(self.emulator, self.path)
        except Exception as exc:  # a full disk must not break the sandbox; the next change tries again
            log.warning("could not save the sandbox %s data to %s: %s", self.emulator.name, self.path, exc)
            return False
        self.saves += 1
        return True


# -- reading back safely ---------------------------------------------------------------------------------------


class _SandboxUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _SAFE_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module.startswith(_OWN_PACKAGE) and "." not in name:
            found = super().find_class(module, name)
            # A class DEFINED in ClinicSync (not one a module merely imports, like an HTTP server), built with its
            # saved state; never a function called on data.
            if (
                isinstance(found, type)
                and getattr(found, "__module__", "").startswith(_OWN_PACKAGE)
                and not issubclass(found, _NEVER_BUILT)
            ):
                return found
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")


def _fill_new_fields(roots: Iterable[Any]) -> None:
    """A snapshot saved before a dataclass gained a field (say, a new resource table) lacks that attribute;
    give it the field's default so the restored store works as a fresh one would."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, str | bytes | int | float | bool | type(None)):
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            for spec in dataclasses.fields(item):
                if not hasattr(item, spec.name):
                    _set_default(item, spec)
                else:
                    stack.append(getattr(item, spec.name))
        else:
            stack.extend(vars(item).values() if hasattr(item, "__dict__") else ())
            stack.extend(getattr(item, name) for name in _slots(item) if hasattr(item, name))


def _slots(item: Any) -> list[str]:
    names: list[str] = []
    for cls in type(item).__mro__:
        slots = vars(cls).get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return names


def _set_default(item: Any, spec: dataclasses.Field[Any]) -> None:
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    else:
        return  # no default to give: the emulator reports the missing data as it would any other bug
    object.__setattr__(item, spec.name, value)  # frozen dataclasses too


def _service(emulator: Any) -> str:
    return {"stripe": "Stripe", "cliniko": "Cliniko", "calcom": "Cal.com"}.get(emulator.name, str(emulator.name))


def _reason(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return "the file ends too early"
    text = str(exc).strip()
    return text or type(exc).__name__
