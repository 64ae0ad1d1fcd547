"""The single session slot of a speech-to-speech route (the chat, the assistant)."""

from __future__ import annotations


class SessionSlot:
    """One session at a time: a second client is told at once that it is busy, never made to
    wait behind a lock."""

    def __init__(self) -> None:
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def acquire(self) -> bool:
        """Take the session slot (True), or False at once when a session holds it."""
        if self._busy:
            return False
        self._busy = True
        return True

    def release(self) -> None:
        self._busy = False
