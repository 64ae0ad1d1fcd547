"""The streaming protocol every stateful module follows: batch `__call__`, `step`, `reset`."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.nn as nn


class StreamingModule(nn.Module):
    """A module that can run on a whole input (`__call__`) or on consecutive pieces (`step`).

    Streaming state lives in private attributes (never parameters) and is set only by `step`;
    the batch call never reads or writes it. `reset()` clears the state of this module and of
    every streaming module inside it.
    """

    def reset(self) -> None:
        """Forget the stream: the next `step` starts from silence."""
        for module in self.modules():
            if isinstance(module, StreamingModule):
                module.reset_state()

    def reset_state(self) -> None:
        """Clear this module's own state (not its children's). Stateless containers do nothing."""

    def restart_rows(self, rows: Sequence[int]) -> None:
        """Start new streams on some rows of the batch: from the next `step` each of those rows
        gives what a fresh stream gives, while the other rows go on."""
        for module in self.modules():
            if isinstance(module, StreamingModule):
                module.restart_rows_state(list(rows))

    def resize_batch(self, batch: int) -> None:
        """Stream `batch` rows from the next `step`: rows added at the end start fresh streams,
        rows beyond `batch` are dropped (their streams forgotten)."""
        for module in self.modules():
            if isinstance(module, StreamingModule):
                module.resize_batch_state(batch)

    def restart_rows_state(self, rows: list[int]) -> None:
        """`restart_rows` for this module's own state. Stateless containers do nothing."""

    def resize_batch_state(self, batch: int) -> None:
        """`resize_batch` for this module's own state. Stateless containers do nothing."""
