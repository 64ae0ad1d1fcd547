"""Streaming equals batch, causality, bounded state, and the ring KV cache."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mimi_reference as R
from mimi_mlx.nn.attention import attend, attention_mask
from mimi_mlx.nn.kv_cache import RingKVCache, ring_positions

FRAME = 1920


def speech_frames(refs, n: int) -> np.ndarray:
    return refs.speech[: n * FRAME][None, None]


def stream(mimi, audio: np.ndarray, split: list[int], n_q: int = 8):
    """Encode then decode `audio` through the stream in pieces of `split` frames."""
    mimi.reset()
    codes, out, start = [], [], 0
    for n in split:
        c = mimi.encode_step(audio[..., start * FRAME : (start + n) * FRAME], num_quantizers=n_q)
        out.append(np.array(mimi.decode_step(c)))
        codes.append(np.array(c))
        start += n
    return np.concatenate(codes, -1), np.concatenate(out, -1)


@pytest.mark.parametrize(
    "split",
    [[1] * 20, [2, 3, 1, 5, 4, 5], [20], [7, 13]],
    ids=["frame-by-frame", "uneven", "one-call", "two-calls"],
)
def test_streaming_equals_batch(tiny_refs, tiny_mimi, split):
    audio = speech_frames(tiny_refs, 20)  # 20 frames: the tiny context (3 frames) wraps often
    codes = np.array(tiny_mimi.encode(audio, num_quantizers=8))
    decoded = np.array(tiny_mimi.decode(codes))
    stream_codes, stream_audio = stream(tiny_mimi, audio, split)
    np.testing.assert_array_equal(stream_codes, codes)
    np.testing.assert_allclose(stream_audio, decoded, rtol=0, atol=1e-5 * np.abs(decoded).max())


def test_full_size_streaming_equals_batch(full_refs):
    from mimi_mlx import load_mimi

    mimi = load_mimi(full_refs.kyutai_dir)
    audio = speech_frames(full_refs, 12)
    codes = np.array(mimi.encode(audio, num_quantizers=32))
    decoded = np.array(mimi.decode(codes))
    stream_codes, stream_audio = stream(mimi, audio, [1, 2, 4, 5], n_q=32)
    np.testing.assert_array_equal(stream_codes, codes)
    np.testing.assert_allclose(stream_audio, decoded, rtol=0, atol=1e-5 * np.abs(decoded).max())


def test_causal_prefix_is_unchanged_by_what_follows(tiny_refs, tiny_mimi):
    audio = speech_frames(tiny_refs, 16)
    codes = np.array(tiny_mimi.encode(audio))
    decoded = np.array(tiny_mimi.decode(codes))
    for k in (1, 5, 11):
        prefix = np.array(tiny_mimi.encode(audio[..., : k * FRAME]))
        np.testing.assert_array_equal(prefix, codes[..., :k])
        head = np.array(tiny_mimi.decode(codes[..., :k]))
        np.testing.assert_allclose(head, decoded[..., : k * FRAME], rtol=0, atol=1e-6)


def test_batch_calls_leave_the_stream_alone_and_reset_restarts_it(tiny_refs, tiny_mimi):
    audio = speech_frames(tiny_refs, 8)
    first, _ = stream(tiny_mimi, audio, [4, 4])
    tiny_mimi.reset()
    c = [np.array(tiny_mimi.encode_step(audio[..., : 4 * FRAME], num_quantizers=8))]
    tiny_mimi.encode(R.noise(1.0)[None, None])  # a batch call in the middle of the stream
    tiny_mimi.decode(c[0])
    c.append(np.array(tiny_mimi.encode_step(audio[..., 4 * FRAME :], num_quantizers=8)))
    np.testing.assert_array_equal(np.concatenate(c, -1), first)


def test_batch_of_two_matches_single_items(tiny_refs, tiny_mimi):
    a = speech_frames(tiny_refs, 6)
    b = R.noise(6 * FRAME / 24000, seed=5)[None, None]
    both = np.array(tiny_mimi.encode(np.concatenate([a, b], axis=0)))
    np.testing.assert_array_equal(both[:1], np.array(tiny_mimi.encode(a)))
    np.testing.assert_array_equal(both[1:], np.array(tiny_mimi.encode(b)))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_long_stream_keeps_constant_memory(tiny_mimi):
    """20 000 frames (26 minutes of audio) through encode_step + decode_step."""
    rng = np.random.default_rng(0)
    chunk = 20  # frames per call
    block = (0.1 * rng.standard_normal((1, 1, chunk * FRAME))).astype(np.float32)
    tiny_mimi.reset()
    memory = {}
    for i in range(20_000 // chunk):
        codes = tiny_mimi.encode_step(block, num_quantizers=8)
        audio = tiny_mimi.decode_step(codes)
        mx.eval(codes, audio)
        if i in (99, 999):
            memory[i] = (mx.get_active_memory(), rss_bytes())
    assert tiny_mimi.encoder_transformer.offset == 2 * 20_000  # 25 Hz tokens
    assert audio.shape == (1, 1, chunk * FRAME) and bool(mx.all(mx.isfinite(audio)))
    # The rings hold the newest `context + 1` positions (room for a frame's two tokens).
    cache = tiny_mimi.encoder_transformer._caches[0]
    assert cache.keys.shape[2] == cache.capacity == 7
    held = np.array(ring_positions(cache.offset, cache.capacity)).tolist()
    assert sorted(held) == list(range(40_000 - 7, 40_000))
    (active_a, rss_a), (active_b, rss_b) = memory[99], memory[999]
    assert active_b - active_a < 1 << 20
    assert rss_b - rss_a < 32 << 20


def naive_windowed_attention(q, k, v, context):
    """Full causal attention with a sliding window, over the whole sequence at once."""
    T = q.shape[2]
    positions = mx.arange(T, dtype=mx.int32)
    return attend(q, k, v, attention_mask(positions, positions, context))


@pytest.mark.parametrize("capacity, context", [(5, 5), (8, 5), (6, 6)])
def test_ring_cache_matches_full_attention_over_many_wraps(capacity, context):
    rng = np.random.default_rng(1)
    B, H, T, D = 2, 3, 97, 8
    q, k, v = (mx.array(rng.standard_normal((B, H, T, D)).astype(np.float32)) for _ in range(3))
    expected = naive_windowed_attention(q, k, v, context)
    cache, outs, t = RingKVCache(capacity, context), [], 0
    for n in [1, 1, 3, 1, 7, 2, 1, 1, 12, 5, 4] * 10:
        if t >= T:
            break
        n = min(n, T - t)
        positions = cache.key_positions(n)
        keys, values = cache.update_and_fetch(k[:, :, t : t + n], v[:, :, t : t + n])
        mask = attention_mask(mx.arange(t, t + n, dtype=mx.int32), positions, context)
        outs.append(attend(q[:, :, t : t + n], keys, values, mask))
        t += n
    assert t == T
    np.testing.assert_allclose(np.array(mx.concatenate(outs, 1)), np.array(expected), atol=1e-5)
    assert cache.keys.shape[2] == capacity and cache.offset == T
