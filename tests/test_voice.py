"""The user's voice told from the speaker's echo (`moshi_mlx.live.voice`), on the echo tests'
simulated room: espeak-ng voices, the echo through a loudspeaker, a room and a delay."""

from __future__ import annotations

import numpy as np
import pytest
from echo_room import Room, echo_of, fill, speech

from mimi_mlx.constants import FRAME_SIZE as F
from moshi_mlx.live.voice import EchoGuard, voiced

AEC_DELAY = round(0.0094 * 24000)  # AEC3's output lags its input (measured in the test below)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    far = speech("The weather today is sunny with a light breeze from the west.", "en-us", folder)
    users = [speech("Stop, stop, please stop talking now.", v, folder) for v in ("en-gb", "fr")]
    return fill(far, 6.0), [fill(u, 6.0) for u in users]


def late(x: np.ndarray, n: int = AEC_DELAY) -> np.ndarray:
    return np.concatenate([np.zeros(n, np.float32), x[:-n]])


def hear(heard, mic, reference, echo_delay=None, guard=None) -> np.ndarray:
    """The guard's answer per frame (bool per 80 ms)."""
    guard = guard or EchoGuard()
    n = len(heard) // F * F
    return np.array(
        [
            guard.hear(heard[i : i + F], mic[i : i + F], reference[i : i + F], echo_delay)
            for i in range(0, n, F)
        ]
    )


def loud(x: np.ndarray) -> np.ndarray:
    return np.array([voiced(x[i : i + F]) for i in range(0, len(x) // F * F, F)])


@pytest.mark.parametrize("known", [True, False], ids=["delay known", "delay unknown"])
@pytest.mark.parametrize("delay", [0.05, 0.12, 0.4])
def test_an_echo_the_canceller_let_through_is_no_voice(voices, delay, known):
    far, _ = voices
    echo = echo_of(far, Room(delay=delay, gain_db=3.0, seed=1))
    assert loud(echo).sum() > 40  # loud enough for the level rule alone to hear a voice
    said = hear(late(echo), echo, far, delay if known else None)
    assert not said.any(), np.flatnonzero(said)


def test_the_users_voice_over_a_cancelled_echo_is_heard_at_its_second_frame(voices):
    far, users = voices
    for seed, user in enumerate(users):
        echo = echo_of(far, Room(delay=0.12, gain_db=3.0, seed=seed))
        said = hear(late(user), user + echo, far, 0.12)
        first = np.flatnonzero(loud(late(user)))[0]
        assert np.flatnonzero(said)[0] <= first + 1  # 80 ms after its first loud frame
        assert said.sum() > loud(user).sum() / 2


def test_with_nothing_played_the_level_alone_decides(voices):
    _, users = voices
    user = users[0]
    silent = np.zeros_like(user)
    assert (hear(user, user, silent) == loud(user)).all()


def test_the_guard_on_aec3s_own_output(voices):
    """The real canceller lags its input by about 10 ms (`CANCELLER_DELAY`), and the user's
    voice in its output is heard."""
    pytest.importorskip("pywebrtc_audio", reason="echo cancellation needs pywebrtc-audio")
    from moshi_mlx.live.echo import Canceller, find_delay

    far, users = voices
    echo = echo_of(far, Room(delay=0.12, gain_db=3.0, seed=0))
    canceller = Canceller()
    n = len(far) // F * F
    out = np.concatenate(
        [canceller.process(echo[i : i + F], far[i : i + F]) for i in range(0, n, F)]
    )
    lag, significance = find_delay(echo[:24000], out[:24000], 2400, -2400)
    assert significance > 2 and abs(lag - AEC_DELAY) <= 24  # within 1 ms
    mic = echo[:n] + users[0][:n]
    out = np.concatenate(
        [canceller.process(mic[i : i + F], far[i : i + F]) for i in range(0, n, F)]
    )
    guard = EchoGuard()
    said = hear(out, mic, far, canceller.echo_delay, guard)
    assert canceller.echo_delay is not None and abs(canceller.echo_delay - 0.12) < 0.03
    # in double talk AEC3 lets the user through in bursts (it suppresses the rest, which can
    # then pass for the echo's residual): the guard hears the user's first burst as the level
    # rule does (two loud frames), and most of the rest
    level = loud(out)
    pairs = level[1:] & level[:-1]
    assert np.flatnonzero(said)[0] == np.flatnonzero(pairs)[0] + 1
    assert said.sum() >= pairs.sum() / 2, (said.sum(), pairs.sum(), guard.echo_frames)
