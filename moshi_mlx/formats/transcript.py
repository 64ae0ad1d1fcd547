"""Moshi's transcript: every text token of a session, its pieces with timestamps, saved as text
and JSON. The live chat and the offline mode write the same format.

Timestamps are in seconds of Moshi's audio stream (the `moshi.wav` a session records, or the
offline output): a text token of step k is heard with the audio of time k, which is played at
step k + `audio_lag`, so its piece starts at `(k + audio_lag) * 0.08` s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mimi_mlx.constants import FRAME_SECONDS
from mimi_mlx.io.output_file import replace_on_success

from ..jobs.pipeline import FrameResult


@dataclass
class Transcript:
    """Accumulates the text of a session.

    Args:
        audio_lag: steps by which the audio lags the text (`Pipeline.audio_lag`).
        info: extra facts saved at the top of the JSON (checkpoint, seed, sampling, ...).
    """

    audio_lag: int = 1
    info: dict = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    pieces: list[dict] = field(default_factory=list)

    def add(self, result: FrameResult, wall: float | None = None) -> None:
        """Record one step's token (and its piece, if it is not padding).

        Args:
            result: the step's result; steps must come in order.
            wall: seconds since the live session started, when it was produced (live only).
        """
        if result.step != len(self.tokens):
            raise ValueError(f"step {result.step} out of order (expected {len(self.tokens)})")
        self.tokens.append(result.token)
        if result.piece is None:
            return
        entry = {
            "step": result.step,
            "time": round((result.step + self.audio_lag) * FRAME_SECONDS, 3),
            "token": result.token,
            "text": result.piece,
        }
        if wall is not None:
            entry["wall"] = round(wall, 3)
        self.pieces.append(entry)

    def cut(self, steps: int) -> None:
        """Keep the first `steps` tokens only (Hibiki-Zero's text ends before its end-of-text)."""
        del self.tokens[steps:]
        self.pieces = [p for p in self.pieces if p["step"] < steps]

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.pieces).strip()

    def lines(self, gap: float = 1.0) -> list[str]:
        """The text as `[mm:ss.ss] words` lines, a new line after a pause of `gap` seconds."""
        lines: list[tuple[float, str]] = []
        last = None
        for p in self.pieces:
            if last is None or p["time"] - last > gap:
                lines.append((p["time"], ""))
            lines[-1] = (lines[-1][0], lines[-1][1] + p["text"])
            last = p["time"]
        return [f"[{int(t // 60):02d}:{t % 60:05.2f}] {s.strip()}" for t, s in lines]

    def to_dict(self) -> dict:
        return {
            **self.info,
            "frame_seconds": FRAME_SECONDS,
            "audio_lag_steps": self.audio_lag,
            "steps": len(self.tokens),
            "text": self.text,
            "pieces": self.pieces,
            "tokens": self.tokens,
        }

    def save(self, text_path: str | Path, json_path: str | Path) -> None:
        """Write the timestamped lines to `text_path` and everything to `json_path`."""
        with replace_on_success(text_path) as tmp:
            lines = self.lines()
            Path(tmp).write_text("\n".join(lines) + ("\n" if lines else ""))
        with replace_on_success(json_path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")
