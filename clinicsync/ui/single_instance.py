"""One running ClinicSync per profile: a QLocalServer named after the profile (`AppPaths.instance_socket_name`).

A second launch connects, sends ``show`` and exits; the first raises its window. A socket left behind by a killed
process refuses connections, so it is removed (`QLocalServer.removeServer`) and the new launch takes over. The
check-then-listen step runs under a QLockFile, so two launches racing each other cannot both become the server
(QLockFile itself recognises a lock whose owner died).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

SHOW = b"show"
ACK = b"ok"
CONNECT_TIMEOUT_MS = 1000
REPLY_TIMEOUT_MS = 3000
LOCK_TIMEOUT_MS = 5000


class InstanceServer(QObject):
    """Listens for later launches of the same profile and emits `show_requested` when one asks."""

    show_requested = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._server = QLocalServer(self)
        # Only this user may connect (matters for sockets in a shared /tmp and named pipes on Windows).
        self._server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self._server.newConnection.connect(self._accept)
        self._buffers: dict[QLocalSocket, bytes] = {}

    def listen(self) -> bool:
        if self._server.listen(self.name):
            return True
        # A killed process leaves its socket file behind; nobody answers on it (checked by the caller).
        QLocalServer.removeServer(self.name)
        if self._server.listen(self.name):
            log.info("removed a stale instance socket %s", self.name)
            return True
        log.warning("could not listen on %s: %s", self.name, self._server.errorString())
        return False

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while (socket := self._server.nextPendingConnection()) is not None:
            self._buffers[socket] = b""
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(lambda s=socket: self._drop(s))
            if socket.bytesAvailable():
                self._read(socket)

    def _read(self, socket: QLocalSocket) -> None:
        data = self._buffers.get(socket, b"") + bytes(socket.readAll().data())
        *lines, rest = data.split(b"\n")
        self._buffers[socket] = rest
        for line in lines:
            if line.strip() == SHOW:
                log.info("another launch asked this instance to show its window")
                socket.write(ACK + b"\n")
                socket.flush()
                self.show_requested.emit()

    def _drop(self, socket: QLocalSocket) -> None:
        self._buffers.pop(socket, None)
        socket.deleteLater()


def ask_running_instance(name: str) -> bool:
    """True if an instance answers on `name` (it has been asked to show itself); False if none is running."""
    socket = QLocalSocket()
    socket.connectToServer(name)
    if not socket.waitForConnected(CONNECT_TIMEOUT_MS):
        return False
    socket.write(SHOW + b"\n")
    socket.waitForBytesWritten(CONNECT_TIMEOUT_MS)
    # Wait for the acknowledgement so the request is not lost if we exit before the other side reads it.
    acknowledged = False
    while not acknowledged and socket.waitForReadyRead(REPLY_TIMEOUT_MS):
        acknowledged = ACK in bytes(socket.readAll().data())
    if not acknowledged:
        log.warning("the running instance accepted the connection but did not answer; assuming it is busy")
    socket.disconnectFromServer()
    return True


def claim_instance(name: str, lock_file: Path) -> InstanceServer | None:
    """Become this profile's instance (returns the listening server), or tell the running one to show itself
    and return None."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = QLockFile(str(lock_file))
    lock.setStaleLockTime(30_000)
    if not lock.tryLock(LOCK_TIMEOUT_MS):
        # Another launch is in its own check-then-listen step right now; it will be the instance.
        log.warning("instance lock %s is busy; asking the other launch to show", lock_file)
        return None if ask_running_instance(name) else _claim_unlocked(name)
    try:
        return _claim_unlocked(name)
    finally:
        lock.unlock()


def _claim_unlocked(name: str) -> InstanceServer | None:
    if ask_running_instance(name):
        return None
    server = InstanceServer(name)
    if not server.listen():
        # Still run (the user asked for the app), just without the second-launch forwarding.
        log.warning("running without single-instance forwarding")
    return server
