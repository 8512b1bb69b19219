"""A daemon thread that calls one function at a fixed interval until stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """Calls `action` every `every_s` seconds until `stop()`. A thread waiting on a COPY
    socket holds no GIL, so the calls keep time while the task copies."""

    def __init__(self, action: Callable[[], None], every_s: float, name: str) -> None:
        self._action, self._every_s = action, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self._action()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
