"""The live loops' console: the transcript on stdout, notices and statistics on stderr."""

from __future__ import annotations

import sys


class Console:
    """The transcript on stdout, notices and statistics on stderr, never inside a line of text.

    Word by word on a terminal; in whole lines (ended by a pause or at `WIDTH` characters) when
    stdout is piped or statistics come every second, so they fall between lines, not words.
    """

    WIDTH = 80
    PAUSE_STEPS = 13  # about a second without a word ends the line

    def __init__(self, show_text: bool, whole_lines: bool):
        self.show_text, self.whole_lines = show_text, whole_lines
        self.line = ""
        self.last_step = 0

    def piece(self, text: str, step: int) -> None:
        if not self.show_text:
            return
        self.tick(step)
        if self.line and len(self.line) + len(text) > self.WIDTH and text[:1].isspace():
            self.end_line()
        text = text if self.line else text.lstrip()
        self.line += text
        self.last_step = step
        if not self.whole_lines:
            sys.stdout.write(text)
            sys.stdout.flush()

    def tick(self, step: int) -> None:
        """Called every step: a pause ends the line."""
        if self.line and step - self.last_step > self.PAUSE_STEPS:
            self.end_line()

    def end_line(self) -> None:
        if self.line:
            sys.stdout.write((self.line if self.whole_lines else "") + "\n")
            sys.stdout.flush()
            self.line = ""

    def notice(self, text: str) -> None:
        shown = self.line and not self.whole_lines  # on its own line, then the words so far
        if shown:
            sys.stdout.write("\n")
            sys.stdout.flush()
        print(text, file=sys.stderr, flush=True)
        if shown:
            sys.stdout.write(self.line)
            sys.stdout.flush()
