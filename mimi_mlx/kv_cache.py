"""A bounded key/value cache for streaming attention, with absolute positions."""

from __future__ import annotations

import mlx.core as mx


class RingKVCache:
    """Keys and values of the last `capacity` positions, kept in a ring buffer.

    Each slot remembers the absolute position it holds (-1 while empty), so attention masks are
    computed from positions and the order of the slots never matters. Memory is constant however
    long the stream runs; `offset` is a Python int and never overflows.

    `capacity` must be at least the attention context. One new position at a time is written into
    the ring before attending (the common streaming case); several at once are attended as
    `ring + new` before the newest are written, so no query loses a key it is entitled to.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.offset = 0  # absolute position of the next token
        self.keys: mx.array | None = None  # (B, H, capacity, D)
        self.values: mx.array | None = None
        self.positions: mx.array | None = None  # (capacity,) int32, -1 for an empty slot

    def reset(self) -> None:
        """Forget everything: the next token is position 0."""
        self.offset = 0
        self.keys = self.values = self.positions = None

    def _allocate(self, k: mx.array) -> None:
        B, H, _, D = k.shape
        self.keys = mx.zeros((B, H, self.capacity, D), dtype=k.dtype)
        self.values = mx.zeros((B, H, self.capacity, D), dtype=k.dtype)
        self.positions = mx.full((self.capacity,), -1, dtype=mx.int32)

    def _write(self, k: mx.array, v: mx.array) -> None:
        """Store the last `min(T, capacity)` of `k, v` (B, H, T, D) at their ring slots."""
        T = k.shape[2]
        n = min(T, self.capacity)
        first = self.offset + T - n
        start = first % self.capacity
        positions = mx.arange(first, first + n, dtype=mx.int32)
        k, v = k[:, :, T - n :], v[:, :, T - n :]
        if start + n <= self.capacity:
            self.keys[:, :, start : start + n] = k
            self.values[:, :, start : start + n] = v
            self.positions[start : start + n] = positions
        else:
            slots = (mx.arange(n) + start) % self.capacity
            self.keys[:, :, slots] = k
            self.values[:, :, slots] = v
            self.positions[slots] = positions

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """Add new keys/values (B, H, T, D); return the keys, values and key positions to attend.

        Returns:
            keys, values of shape (B, H, S, D) and positions (S,), -1 marking empty slots.
        """
        T = k.shape[2]
        if self.keys is None:
            self._allocate(k)
            fresh = True
        else:
            fresh = False
        if T == 1:
            self._write(k, v)
            keys, values, positions = self.keys, self.values, self.positions
        elif fresh:
            keys, values = k, v
            positions = mx.arange(self.offset, self.offset + T, dtype=mx.int32)
            self._write(k, v)
        else:
            new_positions = mx.arange(self.offset, self.offset + T, dtype=mx.int32)
            keys = mx.concatenate([self.keys, k], axis=2)
            values = mx.concatenate([self.values, v], axis=2)
            positions = mx.concatenate([self.positions, new_positions])
            self._write(k, v)
        self.offset += T
        return keys, values, positions
