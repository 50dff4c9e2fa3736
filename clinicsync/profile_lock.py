"""One sync per profile at a time, across processes. The OS drops the lock when its process dies, so a killed
sync never leaves the profile locked."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout


class SyncLocked(Exception):
    def __init__(self) -> None:
        super().__init__("Another sync is already running for this profile; try again when it has finished.")


class ProfileLock:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(path), thread_local=False)

    def __enter__(self) -> ProfileLock:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise SyncLocked() from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
