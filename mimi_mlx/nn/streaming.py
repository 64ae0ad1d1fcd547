"""The streaming protocol every stateful module follows: batch `__call__`, `step`, `reset`."""

from __future__ import annotations

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
