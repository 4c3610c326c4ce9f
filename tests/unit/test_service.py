

"""`humwatch run` end to end: a real ALSA capture device, real TFLite models, a real mosquitto broker.

The bundle is calibrated (with `calibration.calibrate`, the code `humwatch calibrate` runs) on the shared DCASE
normal clips. Normal sound for a run is one of those clips played forwards then backwards, over and over, so the
stream has no splice between different recordings (a splice is itself an abrupt change a detector rightly flags).
The fault is the shared DCASE anomalous recording of the same machine, played the same way.
"""

from __future__ import annotations

import socket
import time

from humwatch.agent.service.sdnotify import Notifier
from tests.plugins.notify import NotifySocket


def test_notifier_speaks_the_notify_protocol_on_abstract_and_path_sockets(tmp_path, monkeypatch):
    notify = NotifySocket()
    try:
        notifier = Notifier(notify.name)
        assert notifier.ready("warming up") and notifier.watchdog() and notifier.status("a\nb") and notifier.stopping()
        deadline = time.monotonic() + 5
        while len(notify.lines) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert notify.lines == ["READY=1", "STATUS=warming up", "WATCHDOG=1", "STATUS=a b", "STOPPING=1"]
    finally:
        notify.close()
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert Notifier().ready()
        assert server.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    quiet = Notifier()
    assert not quiet.enabled and not quiet.ready()
