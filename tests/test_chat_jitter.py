"""The speaker's jitter buffer, driven block by block as the output callback drives it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from moshi_mlx.live.jitter import JitterBuffer

BLOCK, FADE = 1920, 120


def frames(n: int, start: int = 0) -> list[np.ndarray]:
    """Distinct frames: frame i holds the values i + 1 + k / BLOCK (never zero)."""
    ramp = np.arange(BLOCK, dtype=np.float32) / BLOCK
    return [(i + 1 + ramp).astype(np.float32) for i in range(start, start + n)]


def fill(buffer: JitterBuffer) -> np.ndarray:
    out = np.full(BLOCK, np.nan, np.float32)  # every sample must be written
    buffer.fill(out)
    assert np.isfinite(out).all()
    return out


def test_prefill_then_the_frames_in_order():
    buffer = JitterBuffer(2 * BLOCK, 4 * BLOCK, FADE, log_played=True)
    f = frames(5)
    assert not fill(buffer).any()  # nothing buffered yet: silence
    buffer.push(f[0])
    assert not fill(buffer).any() and not buffer.started  # below the prefill
    buffer.push(f[1])
    np.testing.assert_array_equal(fill(buffer), f[0])
    for i in range(2, 5):
        buffer.push(f[i])
        np.testing.assert_array_equal(fill(buffer), f[i - 1])
    assert buffer.buffered == BLOCK and buffer.underruns == 0 and buffer.trims == 0
    played = buffer.drain_played()
    assert [seq for seq, _ in played] == list(range(6)) and buffer.drain_played() == []


def test_an_underrun_ramps_to_silence_refills_and_fades_back_in():
    buffer = JitterBuffer(2 * BLOCK, 4 * BLOCK, FADE)
    f = frames(4)
    buffer.push(f[0])
    buffer.push(f[1])
    fill(buffer)
    np.testing.assert_array_equal(fill(buffer), f[1])
    out = fill(buffer)  # nothing left: ramp from the last sample down to zero
    last = f[1][-1]
    np.testing.assert_allclose(out[:FADE], last * np.linspace(1, 0, FADE + 1)[1:], rtol=1e-6)
    assert not out[FADE:].any() and buffer.underruns == 1 and not buffer.started
    buffer.push(f[2])
    assert not fill(buffer).any()  # refilling the margin
    buffer.push(f[3])
    out = fill(buffer)
    ramp = np.linspace(0, 1, FADE + 2)[1:-1]
    np.testing.assert_allclose(out[:FADE], f[2][:FADE] * ramp, rtol=1e-6)
    np.testing.assert_array_equal(out[FADE:], f[2][FADE:])
    assert buffer.silent_samples == 2 * BLOCK


def test_a_burst_beyond_capacity_skips_back_to_the_prefill():
    buffer = JitterBuffer(2 * BLOCK, 4 * BLOCK, FADE)
    f = frames(9)
    buffer.push(f[0])
    buffer.push(f[1])
    np.testing.assert_array_equal(fill(buffer), f[0])
    for i in range(2, 7):  # the model catches up after a stall: 5 frames at once
        buffer.push(f[i])
        assert buffer.buffered <= 4 * BLOCK
    # f1..f5 made 5 frames > 4: the 3 oldest are skipped, f4, f5 and then f6 remain
    assert buffer.trims == 1 and buffer.buffered == 3 * BLOCK
    out = fill(buffer)  # ramp out of frame 0, fade into frame 4
    last = f[0][-1]
    np.testing.assert_allclose(out[:FADE], last * np.linspace(1, 0, FADE + 1)[1:], rtol=1e-6)
    ramp = np.linspace(0, 1, FADE + 2)[1:-1]
    np.testing.assert_allclose(out[FADE : 2 * FADE], f[4][:FADE] * ramp, rtol=1e-6)
    np.testing.assert_array_equal(out[2 * FADE :], f[4][FADE : BLOCK - FADE])
    assert buffer.skipped == 3 * BLOCK
    out = fill(buffer)
    assert out[0] == f[4][BLOCK - FADE]  # then the stream goes on without a gap
    assert buffer.underruns == 0 and buffer.max_buffered <= 4 * BLOCK


def test_the_callback_path_allocates_nothing_while_playing():
    buffer = JitterBuffer(2 * BLOCK, 4 * BLOCK, FADE)
    f = frames(200)
    out = np.zeros(BLOCK, np.float32)
    buffer.push(f[0])
    buffer.push(f[1])
    tracemalloc.start()
    try:
        for i in range(2, 200):
            buffer.push(f[i])
            before = tracemalloc.get_traced_memory()[0]
            buffer.fill(out)
            assert tracemalloc.get_traced_memory()[0] - before < 512
    finally:
        tracemalloc.stop()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="prefill < capacity"):
        JitterBuffer(4 * BLOCK, 2 * BLOCK, FADE)
