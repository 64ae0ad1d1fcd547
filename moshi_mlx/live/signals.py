"""Ctrl-C and SIGTERM in a live loop: the first asks it to stop, a second aborts."""

from __future__ import annotations

import signal
import threading


class StopOnSignals:
    """First Ctrl-C (or SIGTERM) asks the loop to stop (it finishes cleanly, the recording kept
    and the summary printed); a second one aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
