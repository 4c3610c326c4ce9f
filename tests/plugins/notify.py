"""A systemd-like notify socket that collects what a process under test sends (READY=1, STATUS=...)."""
from __future__ import annotations

import socket
import threading
import uuid


class NotifySocket:
    """A systemd-like notify socket in the abstract namespace that collects what the agent sends."""

    def __init__(self) -> None:
        self.name = f"@humwatch-test-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.name[1:])
        self._sock.settimeout(0.2)
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines += self._sock.recv(4096).decode().splitlines()
            except socket.timeout:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
