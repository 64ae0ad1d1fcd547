"""The echo canceller's reference path and engine, on arrays (no devices).

`EchoPath` gets played blocks with their DAC times and microphone blocks with their ADC times,
as the callbacks give them; these tests check which played samples it hands the canceller for
each microphone sample (a recording canceller stands in for the engine there), then the real
engine on a simulated room, and the offline command.
"""

from __future__ import annotations

import numpy as np
import pytest
from echo_room import (
    Room,
    best_lag,
    echo_of,
    erle_db,
    frame_power,
    level_db,
    spectral_distance,
    speech,
)
from moshi_app import cli, read

from moshi_mlx.live.echo import LEAD, REALIGN_MARGIN, Canceller, cancel_recording, find_delay
from moshi_mlx.live.echo_path import EchoPath

RATE = 24000
B = 1920  # samples per block


class Recording:
    """Stands in for the engine: keeps what it was given, returns the microphone."""

    def __init__(self):
        self.mic, self.ref, self.resets = [], [], 0
        self.delay_ms = None  # the echo delay it would have found (set by the tests)
        self.estimates = 0

    def process(self, mic, ref):
        self.mic.append(mic.copy())
        self.ref.append(ref.copy())
        return mic

    def reset(self):
        self.resets += 1
        self.delay_ms = None

    def forget_delay(self):
        self.delay_ms = None

    def stats(self):
        return {}


def _drive(path, played, dac_times, mic, adc_times, ahead=2):
    """Feed blocks in callback order: the output runs `ahead` blocks before the input."""
    out = []
    n_out = len(dac_times)
    for i, t in enumerate(adc_times):
        for j in range(min(n_out, i + ahead + 1)):
            if j not in _drive.fed:
                path.add_played(dac_times[j], played[j * B : (j + 1) * B])
                _drive.fed.add(j)
        path.add_mic(t, mic[i * B : (i + 1) * B])
        out += path.frames()
    return out


def _fresh(in_rate=RATE, out_rate=RATE, **kw):
    _drive.fed = set()
    engine = Recording()
    return EchoPath(engine, in_rate, out_rate, **kw), engine


def _played(n_blocks, seed=0):
    return np.random.default_rng(seed).standard_normal(n_blocks * B).astype(np.float32)


def test_the_reference_is_what_was_at_the_dac_lead_seconds_after_each_mic_sample():
    rng = np.random.default_rng(1)
    n = 60
    played = _played(n + 4)
    out_latency, phase = 0.0431, 0.0527  # DAC after the callback; the input's block phase
    dac = 10.0 + out_latency + np.arange(n + 4) * B / RATE
    adc = 10.0 + phase + np.arange(n) * B / RATE
    # timestamps jitter by up to 1.5 ms each: the sample counts keep the reference contiguous
    dac_j = dac + rng.uniform(-1.5e-3, 1.5e-3, len(dac))
    adc_j = adc + rng.uniform(-1.5e-3, 1.5e-3, len(adc))
    path, engine = _fresh()
    frames = _drive(path, played, dac_j, np.zeros(n * B, np.float32), adc_j)
    assert len(frames) == n
    ref = np.concatenate(engine.ref)
    # microphone sample m was captured at adc[0] + m / RATE: the reference holds the sample
    # played at that time + LEAD
    start = round((adc[0] + LEAD - dac[0]) * RATE)
    expected = played[start : start + len(ref)]
    offset = find_delay(expected, ref, 200, -200)[0]
    assert abs(offset) <= 72, f"reference off by {offset} samples"  # within the 3 ms of jitter
    k = 0  # jitter under FOLLOW_STEP never moves it: contiguous from the start
    np.testing.assert_array_equal(ref[k:], played[start - offset + k : start - offset + len(ref)])
    assert path.resets == [] and engine.resets == 0


def test_the_reference_leads_its_echo_so_the_canceller_can_find_it():
    n = 50
    played = _played(n + 4, seed=2)
    dac = 5.0 + 0.02 + np.arange(n + 4) * B / RATE
    adc = 5.0 + 0.005 + np.arange(n) * B / RATE
    # the echo: what was played, heard 30 ms later at the microphone (timeline of ADC times)
    mic = np.zeros(n * B, np.float32)
    t = adc[0] + np.arange(n * B) / RATE - 0.030
    index = np.round((t - dac[0]) * RATE).astype(int)
    ok = (index >= 0) & (index < len(played))
    mic[ok] = 0.5 * played[index[ok]]
    path, engine = _fresh()
    _drive(path, played, dac, mic, adc)
    ref, heard = np.concatenate(engine.ref), np.concatenate(engine.mic)
    lag, _ = find_delay(ref, heard, 4800, -4800)
    assert lag == round((LEAD + 0.030) * RATE)  # echo delay + lead: the reference comes first


def test_a_lasting_jump_in_the_timestamps_is_followed_and_keeps_the_filter():
    n = 60
    played = _played(n + 4, seed=3)
    dac = 1.0 + 0.05 + np.arange(n + 4) * B / RATE
    dac[20:] += 0.2  # the output stalled: later blocks play 200 ms later than counted
    adc = 1.0 + np.arange(n) * B / RATE
    path, engine = _fresh()
    _drive(path, played, dac, np.zeros(n * B, np.float32), adc)
    assert engine.resets == 0 and path.resets == []  # the room did not change
    assert path.moves == ["-200 ms"], path.moves
    ref = np.concatenate(engine.ref)

    def expected(m):  # the sample at the DAC at microphone sample m's time + LEAD
        t = adc[0] + m / RATE + LEAD
        j = int(np.searchsorted(dac, t, side="right") - 1)
        k = j * B + round((t - dac[j]) * RATE)
        return played[k : k + B]

    # once the median of the last 2 s has moved, each microphone sample gets its DAC time's
    # sample again (before that, for about 1 s, the sample counts carry on)
    np.testing.assert_array_equal(ref[10 * B : 11 * B], expected(10 * B))
    np.testing.assert_array_equal(ref[50 * B : 51 * B], expected(50 * B))


def test_small_timing_noise_and_drift_do_not_reset():
    n = 120
    played = _played(n + 4, seed=4)
    drift = 1 + 100e-6  # the microphone's clock runs 100 ppm fast
    dac = 2.0 + np.arange(n + 4) * B / RATE
    adc = 2.0 + 0.01 + np.arange(n) * B / (RATE * drift)
    adc += np.random.default_rng(5).uniform(-3e-3, 3e-3, n)
    path, engine = _fresh()
    _drive(path, played, dac, np.zeros(n * B, np.float32), adc)
    assert engine.resets == 0


def test_underruns_and_skips_in_the_played_blocks_are_in_the_reference():
    n = 40
    played = _played(n + 4, seed=6)
    played[10 * B : 12 * B] = 0  # the jitter buffer ran dry: silence was played
    played[20 * B : 20 * B + 100] *= np.linspace(1, 0, 100)  # a fade before a skip
    dac = 3.0 + np.arange(n + 4) * B / RATE
    adc = 3.0 - LEAD + np.arange(n) * B / RATE  # so the reference is played block for block
    path, engine = _fresh()
    _drive(path, played, dac, np.zeros(n * B, np.float32), adc)
    np.testing.assert_array_equal(np.concatenate(engine.ref), played[: n * B])


def test_nothing_played_is_silence_and_a_stalled_speaker_does_not_hold_the_microphone():
    n = 30
    played = _played(n, seed=7)
    path, engine = _fresh(max_wait_blocks=3)
    adc = 4.0 + np.arange(n) * B / RATE
    mic = np.ones(n * B, np.float32)
    for i in range(5):  # before the speaker starts: silence, no waiting
        path.add_mic(adc[i], mic[:B])
    assert len(path.frames()) == 5
    assert all((r == 0).all() for r in engine.ref)
    dac = 4.0 + np.arange(n) * B / RATE
    for j in range(5, 8):
        path.add_played(dac[j], played[j * B : (j + 1) * B])
    # the speaker stops after block 7; the microphone goes on: held at most 3 blocks
    got = []
    for i in range(5, 15):
        path.add_mic(adc[i], mic[:B])
        got.append(len(path.frames()))
    assert sum(got) >= 10 - 3 and path.silent_reference_samples > 0
    assert not (np.concatenate(engine.ref[5:7]) == 0).all()  # what did play is there


def test_a_speaker_at_another_rate_is_interpolated_onto_the_microphone_timeline():
    n = 40
    t_out = np.arange((n + 4) * 2 * B) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t_out)).astype(np.float32)
    path, engine = _fresh(RATE, 48000)
    dac = 1.0 + np.arange(n + 4) * 2 * B / 48000
    adc = 1.0 - LEAD + np.arange(n) * B / RATE
    _drive.fed = set()
    for i in range(n):
        for j in range(min(n + 4, i + 3)):
            if j not in _drive.fed:
                path.add_played(dac[j], tone[j * 2 * B : (j + 1) * 2 * B])
                _drive.fed.add(j)
        path.add_mic(adc[i], np.zeros(B, np.float32))
        path.frames()
    ref = np.concatenate(engine.ref)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(ref)) / RATE)
    assert np.abs(ref - expected).max() < 2e-3


# -- the engine --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    moshi = speech("I am Moshi. Let me tell you a story about a cat in the sun.", "en-us+f3")
    user = speech("Hello Moshi, how are you today?", "en-gb+m1")
    return moshi, user


def _room_signals(voices, room, lag_reference=0.0):
    moshi, user = voices
    far = np.concatenate([moshi, moshi, np.zeros(len(user) + RATE, np.float32)])
    echo = echo_of(far, room)
    near = np.zeros_like(far)
    near[-len(user) - 2400 : -2400] = user  # the user while Moshi is silent (after its echo)
    noise = np.random.default_rng(0).standard_normal(len(far)).astype(np.float32) * 1e-4
    shift = round(lag_reference * RATE)
    reference = np.concatenate([np.zeros(shift, np.float32), far])[: len(far)]
    return far, echo, near, echo + near + noise, reference


def _run(canceller, mic, reference):
    n = len(mic) // B * B
    return np.concatenate(
        [canceller.process(mic[i : i + B], reference[i : i + B]) for i in range(0, n, B)]
    )


@pytest.mark.parametrize("room", [Room(0.04, 0.0, seed=1), Room(0.2, 6.0, 100.0, seed=2)])
def test_the_engine_removes_the_echo_and_keeps_the_user(voices, room):
    far, echo, near, mic, reference = _room_signals(voices, room)
    c = Canceller(lead=0.0)  # the reference here is what was played, not led
    out = _run(c, mic, reference)
    f = 480
    t = np.arange(len(out) // f) * f / RATE
    echo_only = (frame_power(echo[: len(out)], f) > 1e-7) & (frame_power(near[: len(out)]) == 0)
    erle = erle_db(mic, out, echo_only & (t >= 2), f)
    print(f"{room.name}: ERLE {erle:.1f} dB, delay {c.delay_ms} ms, stats {c.stats()}")
    assert erle >= 30
    assert abs(c.delay_ms - 1000 * room.delay) < 10  # its own estimate of the echo delay
    lag = best_lag(mic, out, RATE // 20)  # AEC3 delays its output by about 10 ms
    out = out[lag:]
    user = frame_power(near[: len(out)]) > 1e-6  # the user while Moshi is silent: kept
    kept = level_db(out, near[: len(out)], user)
    distance = spectral_distance(out, near[: len(out)], user)
    print(f"user alone: level {kept:+.2f} dB, band distance {distance:.2f} dB")
    assert abs(kept) < 1.0 and distance < 3.0


def test_a_reference_that_comes_after_its_echo_cannot_be_cancelled(voices):
    """Why the reference must lead: the same room with the reference 60 ms late."""
    room = Room(0.02, 0.0, seed=3)
    far, echo, near, mic, late = _room_signals(voices, room, lag_reference=0.06)
    out = _run(Canceller(), mic, late)
    f = 480
    t = np.arange(len(out) // f) * f / RATE
    echo_only = (frame_power(echo[: len(out)], f) > 1e-7) & (frame_power(near[: len(out)]) == 0)
    assert erle_db(mic, out, echo_only & (t >= 2), f) < 20


def test_offline_command_finds_the_echo_and_removes_it(voices, tmp_path):
    import soundfile as sf

    room = Room(0.15, 3.0, seed=4)
    far, echo, near, mic, _ = _room_signals(voices, room)
    start = RATE // 2  # the microphone's recording starts 0.5 s after the speaker's
    sf.write(tmp_path / "mic.wav", mic[start:], RATE, subtype="FLOAT")
    sf.write(tmp_path / "played.wav", far, RATE, subtype="FLOAT")
    r = cli("echo-cancel", tmp_path / "mic.wav", tmp_path / "played.wav", tmp_path / "out.wav")
    assert r.returncode == 0, r.stderr
    assert "found at -350 ms" in r.stderr, r.stderr  # 150 ms echo, recording 500 ms later
    out = read(tmp_path / "out.wav")
    assert len(out) == len(mic) - start
    direct = cancel_recording(mic[start:], far)
    np.testing.assert_array_equal(out, direct.audio)
    reduction = float(r.stderr.split("reduced by ")[1].split(" dB")[0])
    assert reduction > 25
    again = cli("echo-cancel", tmp_path / "mic.wav", tmp_path / "played.wav", tmp_path / "out.wav")
    assert again.returncode == 1 and "exists" in again.stderr


@pytest.mark.parametrize("found_ms, step", [(-60.0, 1.0), (500.0, 0.0)])
def test_an_echo_out_of_reach_moves_the_reference_onto_it_and_resets(found_ms, step):
    """Timestamps can lie: where the echo is found before its reference (it could not be
    cancelled) or too far after it, the echo decides."""
    n = 40
    played = _played(n + 8, seed=8)
    dac = 6.0 + np.arange(n + 8) * B / RATE
    adc = 6.0 + 0.3 + np.arange(n) * B / RATE
    path, engine = _fresh()
    _drive.fed = set()
    for i in range(n):
        for j in range(min(n + 8, i + 7)):
            if j not in _drive.fed:
                path.add_played(dac[j], played[j * B : (j + 1) * B])
                _drive.fed.add(j)
        if i in (20, 21):  # two estimates in a row that agree (the second moves it)
            engine.delay_ms = found_ms + step * (i - 20)  # echo this far after reference + lead
            engine.estimates += 1
        path.add_mic(adc[i], np.zeros(B, np.float32))
        path.frames()
    assert engine.resets == 1 and len(path.resets) == 1, path.resets
    ref = np.concatenate(engine.ref)
    before = round((adc[0] + LEAD - dac[0]) * RATE)
    np.testing.assert_array_equal(ref[:B], played[before : before + B])
    # after the reset, the reference is shifted so that the echo (found by the second estimate)
    # comes LEAD + REALIGN_MARGIN after it
    m = 30 * B
    k = before - round((found_ms + step - 1000 * REALIGN_MARGIN) / 1000 * RATE) + m
    np.testing.assert_array_equal(ref[m : m + B], played[k : k + B])
