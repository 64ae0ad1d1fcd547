"""`moshi-mlx chat --record DIR`: a live session's streams, text and statistics on disk.

The files are written as the session goes (WAV holds about 12 hours of float32 at 24 kHz) and
appear under their names when the session ends, on errors too:

- `user.wav`: the frames Moshi heard (float32, 24 kHz; skipped frames are not in it), so that
  `moshi-mlx run DIR/user.wav OUT.wav --seed SEED` reproduces the session;
- `mic.wav`: the same frames as the microphone gave them, before echo cancellation (with
  `played.wav`, `moshi-mlx echo-cancel` replays the cancellation offline);
- `moshi.wav`: Moshi's audio, one frame per step (float32, 24 kHz);
- `played.wav`: what the speaker was sent, silences included (float32, the device's rate);
- `transcript.txt`, `transcript.json`: the text with timestamps (see `transcript`);
- `session.json`: settings, seed and statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mimi_mlx.constants import SAMPLE_RATE
from mimi_mlx.io.audio import AudioWriter
from mimi_mlx.io.output_file import check_output, replace_on_success

from ..formats.transcript import Transcript

RECORD_FILES = (
    "user.wav",
    "mic.wav",
    "moshi.wav",
    "played.wav",
    "transcript.txt",
    "transcript.json",
    "session.json",
)


def check_record_dir(folder: str | Path, force: bool = False) -> Path:
    """Create the recording folder and check that its files can be written (before loading)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--record needs a folder, {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        check_output(folder / name, force)
    return folder


class Recorder:
    """Writes the streams of a session as it goes; the files appear when it closes."""

    def __init__(self, folder: Path, output_rate: int):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.user = AudioWriter(folder / "user.wav", SAMPLE_RATE, float32=True)
        self.mic = AudioWriter(folder / "mic.wav", SAMPLE_RATE, float32=True)
        self.moshi = AudioWriter(folder / "moshi.wav", SAMPLE_RATE, float32=True)
        self.played = AudioWriter(folder / "played.wav", output_rate, float32=True)
        self.writers = [self.user, self.mic, self.moshi, self.played]
        self.next_played = 0
        self.played_lost = 0  # played blocks missing from the log (drained too late)
        opened = []
        try:
            for w in self.writers:
                w.__enter__()
                opened.append(w)
        except BaseException as e:  # leave no temporary file behind
            for w in opened:
                w.__exit__(type(e), e, None)
            raise

    def add_played(self, blocks: list[tuple[int, np.ndarray]]) -> None:
        for seq, block in blocks:
            if seq > self.next_played:  # keep the timeline: silence where the log overflowed
                missing = seq - self.next_played
                self.played_lost += missing
                self.played.write(np.zeros(missing * len(block), np.float32))
            self.played.write(block)
            self.next_played = seq + 1

    def close(self) -> None:
        """Complete the files (on errors too: they hold the session up to that point)."""
        for w in self.writers:
            w.__exit__(None, None, None)


def finish_recording(recorder: Recorder, transcript: Transcript, summary: dict) -> dict:
    """Close the files, save the transcript and `session.json` (the summary); returns the paths."""
    recorder.close()
    folder = recorder.folder
    transcript.save(folder / "transcript.txt", folder / "transcript.json")
    summary["played_blocks_lost"] = recorder.played_lost
    record = {name: str(folder.resolve() / name) for name in RECORD_FILES}  # from anywhere
    with replace_on_success(folder / "session.json") as tmp:
        Path(tmp).write_text(json.dumps({**summary, "files": record}, indent=1) + "\n")
    return record
