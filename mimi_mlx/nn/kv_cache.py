"""A bounded key/value cache for streaming attention, with absolute positions."""

from __future__ import annotations

import mlx.core as mx


def ring_positions(end: int, capacity: int) -> mx.array:
    """Absolute position held by each slot of a ring after positions [0, end) were written in order.

    Position p lives in slot p % capacity, so slot s holds the newest p < end with that slot;
    -1 marks a slot not written yet.
    """
    slots = mx.arange(capacity, dtype=mx.int32)
    held = (end - 1) - ((end - 1 - slots) % capacity)
    return mx.where(held >= 0, held, -1)


GROW_BLOCK = 256  # ring slots allocated at a time, so memory follows the history actually held


class RingKVCache:
    """Keys and values of the last `capacity` positions of one attention layer, in a ring buffer.

    Slot positions follow from `offset` alone (`ring_positions`), so the attention mask is computed
    once per step for all layers (`key_positions`) and the order of the slots never matters. Memory
    is constant however long the stream runs; `offset` is a Python int and never overflows.

    A step of T tokens is written into the ring before attending when the ring has room for them
    beyond the `context` every query needs (`T <= capacity - context + 1`); a longer step attends
    `ring + new` before the newest are written, so no query ever loses a key it is entitled to.
    """

    def __init__(self, capacity: int, context: int | None = None):
        self.capacity = capacity
        self.context = capacity if context is None else context
        if self.context > capacity:
            raise ValueError(f"capacity {capacity} is smaller than the context {self.context}")
        self.offset = 0  # absolute position of the next token
        self.keys: mx.array | None = None  # (B, H, capacity, D)
        self.values: mx.array | None = None

    @property
    def state(self) -> list[mx.array]:
        """The cache's arrays, `[keys, values]` (`[]` before the first write), as mlx-lm's caches
        have them: the inputs and outputs of a compiled step (`mimi_mlx.nn.compiled`)."""
        return [] if self.keys is None else [self.keys, self.values]

    @state.setter
    def state(self, arrays: list[mx.array]) -> None:
        self.keys, self.values = arrays if arrays else (None, None)

    @property
    def meta_state(self) -> tuple[int, int, int | mx.array]:
        """What the arrays do not say: capacity, context and offset."""
        return self.capacity, self.context, self.offset

    @classmethod
    def from_state(cls, state: list[mx.array], meta_state: tuple) -> RingKVCache:
        """A cache holding `state` at `meta_state`; inside a compiled step the offset may be a
        traced scalar (`mx.array`), so one graph serves every position."""
        capacity, context, offset = meta_state
        cache = cls(capacity, context)
        cache.state, cache.offset = state, offset
        return cache

    def reset(self) -> None:
        """Forget everything: the next token is position 0."""
        self.offset = 0
        self.keys = self.values = None

    def resize_batch(self, batch: int) -> None:
        """Hold `batch` rows: zero rows added at the end (a mask must hide them), or the last
        rows dropped."""
        if self.keys is None or self.keys.shape[0] == batch:
            return
        B, H, S, D = self.keys.shape
        if batch < B:
            self.keys, self.values = self.keys[:batch], self.values[:batch]
            return
        more = mx.zeros((batch - B, H, S, D), dtype=self.keys.dtype)
        self.keys = mx.concatenate([self.keys, more], axis=0)
        self.values = mx.concatenate([self.values, more], axis=0)

    def _writes_first(self, T: int) -> bool:
        return T <= self.capacity - self.context + 1

    def _slots(self, end: int) -> int:
        """Slots allocated once positions [0, end) are written: whole blocks, up to capacity.

        Before the ring wraps, position p sits in slot p, so a long context (Moshi's 3000 steps)
        costs memory only for the steps streamed so far.
        """
        return min(self.capacity, -(-end // GROW_BLOCK) * GROW_BLOCK)

    def key_positions(self, T: int) -> mx.array:
        """Positions (S,) of the keys `update_and_fetch` will return for T tokens (-1: empty)."""
        new = mx.arange(self.offset, self.offset + T, dtype=mx.int32)
        if self._writes_first(T):
            end = self.offset + T
            return ring_positions(end, self.capacity)[: self._slots(end)]
        if self.offset == 0:
            return new
        held = ring_positions(self.offset, self.capacity)[: self._slots(self.offset)]
        return mx.concatenate([held, new])

    def _grow(self, T: int, shape: tuple[int, ...], dtype: mx.Dtype) -> None:
        """Allocate the slots positions up to `offset + T` need (shape: B, H, _, D)."""
        B, H, _, D = shape
        slots = self._slots(self.offset + T)
        if self.keys is None:
            self.keys = mx.zeros((B, H, slots, D), dtype=dtype)
            self.values = mx.zeros((B, H, slots, D), dtype=dtype)
        elif self.keys.shape[2] < slots:  # grow by whole blocks
            more = slots - self.keys.shape[2]
            self.keys = mx.concatenate([self.keys, mx.zeros((B, H, more, D), dtype)], axis=2)
            self.values = mx.concatenate([self.values, mx.zeros((B, H, more, D), dtype)], 2)

    def reserve(self, T: int) -> bool:
        """Make room for T more tokens written in place; False if that cannot be done here.

        The ring must already hold arrays (their batch, heads, width and dtype) and the T
        tokens must be written before attending, into consecutive slots.
        """
        if self.keys is None or not self._writes_first(T):
            return False
        if self.offset % self.capacity + T > self.capacity:
            return False
        self._grow(T, self.keys.shape, self.keys.dtype)
        return True

    def _write(self, k: mx.array, v: mx.array) -> None:
        """Store the last `min(T, capacity)` of `k, v` (B, H, T, D) at their ring slots."""
        T = k.shape[2]
        if isinstance(self.offset, mx.array):  # a traced offset: `reserve(T)` made the room
            slot = (self.offset % self.capacity).reshape(1)
            self.keys = mx.slice_update(self.keys, k, slot, axes=(2,))
            self.values = mx.slice_update(self.values, v, slot, axes=(2,))
            return
        self._grow(T, k.shape, k.dtype)
        n = min(T, self.capacity)
        k, v = k[:, :, T - n :], v[:, :, T - n :]
        start = (self.offset + T - n) % self.capacity
        if start + n <= self.capacity:
            self.keys[:, :, start : start + n] = k
            self.values[:, :, start : start + n] = v
        else:
            slots = (mx.arange(n) + start) % self.capacity
            self.keys[:, :, slots] = k
            self.values[:, :, slots] = v

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Add new keys/values (B, H, T, D); return all keys/values to attend, (B, H, S, D).

        Their positions are `key_positions(T)`, taken before this call.
        """
        T = k.shape[2]
        if self._writes_first(T):
            self._write(k, v)
            keys, values = self.keys, self.values
        elif self.offset == 0:
            keys, values = k, v
            self._write(k, v)
        else:
            keys = mx.concatenate([self.keys, k], axis=2)
            values = mx.concatenate([self.values, v], axis=2)
            self._write(k, v)
        self.offset += T
        return keys, values
