"""`bench.py aec`: each echo canceller on the same simulated rooms, in one run.

The scene (24 kHz, 24 s): Moshi (espeak-ng en-us+f3) speaks 0-14 s and 18-24 s, the user
(en-gb+m1) 10-18 s, so 0-10 s and 18-24 s are echo only, 10-14 s double talk and 14-18 s the
user alone. The echo goes through `tests/echo_room.py`'s room (loudspeaker nonlinearity, drift,
random decaying room response, bulk delay, gain over the user's level) plus a -50 dB noise
floor. Every engine gets the microphone and the reference (what was played, not delayed) in
80 ms frames, as in the live chat.

Reported per room and engine: echo reduction (ERLE) over the echo-only frames after the first
2 s and within them; the user's level change and spectral distance in double talk and alone
(0 dB / small: kept); CPU time per 80 ms frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

FRAME = 1920
RATE = 24000
ROOMS = [  # (delay s, gain dB, drift ppm)
    (0.04, 0.0, 0.0),
    (0.12, 3.0, 0.0),
    (0.25, 6.0, 0.0),
    (0.12, 0.0, 100.0),
    (0.25, 6.0, 100.0),
    (0.12, None, 0.0),  # headphones: no echo
]
MOSHI_TEXT = (
    "Hello, I am Moshi. I can talk with you about anything you like, the weather, a book, or "
    "the way a cat sleeps all day long in the sun."
)
USER_TEXT = "Wait, Moshi, tell me more about the cat. Does it ever wake up?"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engines",
        default="off,pywebrtc-audio,livekit",
        help="comma-separated (default off,pywebrtc-audio,livekit)",
    )


class Off:
    def process(self, mic, ref):
        return mic


class PyWebrtc:
    def __init__(self):
        from pywebrtc_audio import AudioProcessor

        self.apm = AudioProcessor(sample_rate=RATE, echo_cancellation=True)

    def process(self, mic, ref):
        return self.apm.process(mic, ref)


class Livekit:
    """livekit's APM: 10 ms int16 frames, reverse stream then stream, stream delay 0."""

    def __init__(self):
        from livekit import rtc

        self.rtc = rtc
        self.apm = rtc.AudioProcessingModule(echo_cancellation=True)

    def process(self, mic, ref):
        step = RATE // 100
        out = np.zeros(len(mic), np.float32)
        for i in range(0, len(mic), step):
            far = (np.clip(ref[i : i + step], -1, 1) * 32767).astype(np.int16)
            near = (np.clip(mic[i : i + step], -1, 1) * 32767).astype(np.int16)
            far_frame = self.rtc.AudioFrame(far.tobytes(), RATE, 1, step)
            near_frame = self.rtc.AudioFrame(near.tobytes(), RATE, 1, step)
            self.apm.process_reverse_stream(far_frame)
            self.apm.set_stream_delay_ms(0)
            self.apm.process_stream(near_frame)
            data = np.frombuffer(near_frame.data, np.int16)
            out[i : i + step] = data.astype(np.float32) / 32767
        return out


ENGINES = {"off": Off, "pywebrtc-audio": PyWebrtc, "livekit": Livekit}


def scene():
    import echo_room as er

    far_voice = er.speech(MOSHI_TEXT, "en-us+f3")
    near_voice = er.speech(USER_TEXT, "en-gb+m1")
    n = 24 * RATE
    far = np.zeros(n, np.float32)
    far[: 14 * RATE] = er.fill(far_voice, 14)
    far[18 * RATE :] = er.fill(far_voice[RATE:], 6)
    near = np.zeros(n, np.float32)
    near[10 * RATE : 18 * RATE] = er.fill(near_voice, 8)
    return far, near


def measure(engine, far, near, room) -> dict:
    import echo_room as er

    echo = er.echo_of(far, room) if room.gain_db is not None else np.zeros_like(far)
    noise = np.random.default_rng(1).standard_normal(len(far)).astype(np.float32)
    noise *= np.float32(10 ** ((er.SPEECH_DB + er.NOISE_DB) / 20))
    mic = echo + near + noise
    out = np.zeros_like(mic)
    times = []
    for i in range(0, len(mic) - FRAME + 1, FRAME):
        t = time.perf_counter()
        out[i : i + FRAME] = engine.process(mic[i : i + FRAME], far[i : i + FRAME])
        times.append(time.perf_counter() - t)
    lag = er.best_lag(mic[10 * RATE : 18 * RATE], out[10 * RATE : 18 * RATE], RATE // 20)
    out = np.concatenate([out[lag:], np.zeros(lag, np.float32)])  # the engine's own delay
    f = er.FRAME
    seconds = np.arange(len(mic) // f) * f / RATE
    echo_on = er.active(echo) & (er.frame_power(near) == 0)
    near_on = er.active(near)
    dt = near_on & (seconds >= 10) & (seconds < 14)
    alone = near_on & (seconds >= 14) & (seconds < 18)
    if not echo_on.any():  # headphones: nothing to reduce
        echo_on = er.active(far) & (er.frame_power(near) == 0)
    return {
        "erle": er.erle_db(mic, out, echo_on & (seconds >= 2)),
        "erle_2s": er.erle_db(mic, out, echo_on & (seconds < 2)),
        "dt_level": er.level_db(out, near, dt),
        "dt_dist": er.spectral_distance(out, near, dt),
        "dt_dist_mic": er.spectral_distance(mic, near, dt),
        "alone_level": er.level_db(out, near, alone),
        "alone_dist": er.spectral_distance(out, near, alone),
        "cpu_ms": 1000 * float(np.median(times)),
    }


def run(args: argparse.Namespace) -> int:
    import echo_room as er

    far, near = scene()
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(
        "| room (delay, echo over user, drift) | engine | ERLE after 2 s | ERLE first 2 s | "
        "double talk: user level / spectral distance (mic) | user alone: level / distance | "
        "CPU per 80 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for delay, gain, drift in ROOMS:
        room = er.Room(delay, gain, drift, seed=round(1000 * delay))
        label = room.name if gain is not None else "headphones (no echo)"
        for name in names:
            try:
                engine = ENGINES[name]()
            except ImportError as e:
                print(f"| {label} | {name} | not installed ({e}) | | | | |")
                continue
            r = measure(engine, far, near, room)
            print(
                f"| {label} | {name} | {r['erle']:.1f} dB | {r['erle_2s']:.1f} dB | "
                f"{r['dt_level']:+.1f} dB / {r['dt_dist']:.1f} dB ({r['dt_dist_mic']:.1f}) | "
                f"{r['alone_level']:+.1f} dB / {r['alone_dist']:.1f} dB | {r['cpu_ms']:.2f} ms |",
                flush=True,
            )
    return 0
