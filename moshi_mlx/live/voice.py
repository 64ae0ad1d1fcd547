"""The user's voice in the microphone: a level rule, and with echo cancelling, the echo told apart.

`voiced(frame)`: the frame's loudest 20 ms is above `VOICE_DB`. Without echo cancelling (or
headphones) that is the whole rule.

With echo cancelling, AEC3 does not always take the whole echo out: on a loaded machine it at
times lets it through almost whole (a delay jump, its suppressor releasing after a stall), and
the residual is far above `VOICE_DB`. `EchoGuard` asks whether the speaker's output explains
what is left, by GCC-PHAT between the last `HEARD_SECONDS` of a signal and the last
`REFERENCE_SECONDS` of the reference (8 kHz copies):
- a leak: the canceller's output correlates with the reference (above `ECHO_SIGNIFICANCE`; a
  leaked echo measured 3-7 on the test room, espeak voices against each other about 1.5-1.8)
  at the echo's delay (the canceller's estimate, plus AEC3's `CANCELLER_DELAY`); a voice that
  correlates by chance does so at a delay of its own;
- a residual: the echo is in the canceller's input at its delay and the output is `RESIDUAL_DB`
  below it (at the end of a reply AEC3's output rises while the echo's tail still arrives, and
  correlates less).
The first frame of a leak and the reverberation's tail correlate less: so while the speaker
played within `REFERENCE_SECONDS`, the user's voice needs `CONFIRM_FRAMES` loud unexplained
frames in a row (80 ms more before a barge-in); with nothing played, one frame, as without it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from mimi_mlx.constants import FRAME_SECONDS, FRAME_SIZE, SAMPLE_RATE

from .echo import ACTIVE_DB, DECIMATION, decimate, find_delay, power_db

VOICE_DB = -35.0  # frame power (dBFS) above which the microphone hears the user's voice
HEARD_SECONDS = 0.32  # the canceller's output the guard correlates
REFERENCE_SECONDS = 1.2  # the speaker's output it searches (the echo's delay and reverberation)
ECHO_SIGNIFICANCE = 1.8  # a correlation peak above this explains the output as echo
CONFIRM_FRAMES = 2  # loud unexplained frames in a row that make a voice while the speaker plays
CANCELLER_DELAY = 0.01  # seconds AEC3's output lags its input (measured 9.3-9.6 ms)
DELAY_TOLERANCE = 0.004  # seconds a residual's delay may differ from the echo's
RESIDUAL_DB = 15.0  # the output this far below an input holding the echo is its residual


def voiced(frame: np.ndarray) -> bool:
    """The frame (FRAME_SIZE,) holds a voice: its loudest 20 ms above `VOICE_DB` (a voice that
    starts late in the frame counts)."""
    return max(power_db(part) for part in frame.reshape(4, -1)) > VOICE_DB


class EchoGuard:
    """Per 80 ms frame: the user's voice, or the speaker's echo the canceller let through.

    `hear(heard, mic, reference)` takes one frame of the canceller's output, its input and its
    reference, each (FRAME_SIZE,) float32 at 24 kHz on the microphone's timeline, and tells
    whether the frame holds the user's voice.
    """

    def __init__(self):
        silence = np.zeros(FRAME_SIZE, np.float32)  # before the start: nothing heard or played
        heard = round(HEARD_SECONDS / FRAME_SECONDS)
        reference = round(REFERENCE_SECONDS / FRAME_SECONDS)
        self._heard = deque([silence] * heard, maxlen=heard)
        self._mic = deque([silence] * heard, maxlen=heard)
        self._reference = deque([silence] * reference, maxlen=reference)
        self._playing: deque[bool] = deque(maxlen=reference)
        self._loud = 0  # loud unexplained frames in a row
        self.echo_frames = 0  # loud frames the speaker's output explained

    def hear(
        self,
        heard: np.ndarray,
        mic: np.ndarray,
        reference: np.ndarray,
        echo_delay: float | None = None,
    ) -> bool:
        """Take one frame; whether it holds the user's voice.

        Args:
            heard, mic, reference: the canceller's output, its input and its reference.
            echo_delay: seconds the echo comes after the reference in `mic`, where known (the
                canceller's estimate: `Canceller.echo_delay`).
        """
        self._heard.append(heard)
        self._mic.append(mic)
        self._reference.append(reference)
        self._playing.append(power_db(reference) > ACTIVE_DB)
        if not voiced(heard):
            self._loud = 0
            return False
        if not any(self._playing):  # nothing played: no echo to mistake for the user
            self._loud += 1
            return True
        if self.explained(echo_delay):
            self._loud = 0
            self.echo_frames += 1
            return False
        self._loud += 1
        return self._loud >= CONFIRM_FRAMES

    def explained(self, echo_delay: float | None = None) -> bool:
        """The recent output is the reference's echo: a leak (it correlates with the reference
        at the echo's delay: `echo_delay`, else where the canceller's input correlates best; a
        voice correlating by chance does so at a delay of its own), or a residual (the echo is
        in the canceller's input, and the output is `RESIDUAL_DB` below it)."""
        reference = decimate(np.concatenate(self._reference))
        mic = None  # (delay, significance) of the echo in the canceller's input, when needed
        if echo_delay is None:
            mic = self._peak(self._mic, reference)
            if mic[1] <= ECHO_SIGNIFICANCE:
                return False
            echo_delay = mic[0]
        delay, significance = self._peak(self._heard, reference)
        after = delay - echo_delay
        if (
            significance > ECHO_SIGNIFICANCE
            and -DELAY_TOLERANCE <= after <= CANCELLER_DELAY + DELAY_TOLERANCE
        ):
            return True
        reduced = power_db(np.concatenate(self._mic)) - power_db(np.concatenate(self._heard))
        if reduced <= RESIDUAL_DB:
            return False
        mic_delay, mic_significance = mic or self._peak(self._mic, reference)
        return (
            mic_significance > ECHO_SIGNIFICANCE and abs(mic_delay - echo_delay) <= DELAY_TOLERANCE
        )

    @staticmethod
    def _peak(frames: deque[np.ndarray], reference: np.ndarray) -> tuple[float, float]:
        """(delay in seconds, significance) of the best match of `frames` in `reference`."""
        heard = decimate(np.concatenate(frames))
        # heard[t] ~ reference[t - lag]: an echo comes after its reference, within the window
        before = len(reference) - len(heard)  # the reference's samples before the window
        lag, significance = find_delay(reference, heard, 0, -before)
        return (lag + before) * DECIMATION / SAMPLE_RATE, significance
