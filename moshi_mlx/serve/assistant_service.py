"""The assistant over the server: the text model, its one session slot, per-session settings.

The assistant is `moshi-mlx assistant` on the server's own STT and TTS (`--stt`, `--tts`): a
session holds both checkpoints for its whole life (their streaming caches are theirs), so
transcriptions and speech requests wait meanwhile. One session at a time: a second client is
told "busy" at once. A session's settings come from its WebSocket URL's query, with the
command's names (`temperature`, `top_p`, `max_tokens`, `seed`, `tts_temperature`, `voice`,
`system`), over the server's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..jobs.llm import LlmSettings, TextModel
from ..jobs.tts import TtsSettings
from .chat_service import FORMATS
from .query import QueryError, non_negative, positive_int, probability
from .query import seed as seed_value
from .slot import SessionSlot

MAX_SYSTEM = 4000  # characters of a session's system prompt


@dataclass(frozen=True)
class AssistantSettings:
    """One session's settings: the LLM's sampling, the TTS's, the voice, the system prompt."""

    llm: LlmSettings
    tts: TtsSettings
    voice: str | None = None  # None: the TTS service's default
    system: str | None = None
    format: str = "opus"


class AssistantService(SessionSlot):
    """The text model (mlx-lm in the process, or an OpenAI-compatible server) and the slot.

    Args:
        llm: the loaded text model.
        name: how clients and the page name it (`served_name` of a local model's source).
        system: the default system prompt (None: none).
        llm_defaults, tts_defaults: a session's settings when its query gives none.
    """

    def __init__(
        self,
        llm: TextModel,
        name: str,
        system: str | None,
        llm_defaults: LlmSettings,
        tts_defaults: TtsSettings,
    ):
        self.llm, self.name, self.system = llm, name, system
        self.llm_defaults, self.tts_defaults = llm_defaults, tts_defaults
        super().__init__()

    def info(self) -> dict:
        return {"llm": self.name, "llm_source": self.llm.name, "system": self.system}

    def settings(self, query: Mapping[str, str]) -> AssistantSettings:
        """A session's settings from its query (QueryError names a bad parameter)."""
        llm, tts = self.llm_defaults, self.tts_defaults
        values = {}
        for name, read in (
            ("temperature", non_negative),
            ("top_p", probability),
            ("max_tokens", positive_int),
            ("seed", seed_value),
            ("tts_temperature", non_negative),
        ):
            if query.get(name, "") != "":
                values[name] = read(name, query[name])
        seed = values.get("seed", llm.seed)
        llm = replace(
            llm,
            temperature=values.get("temperature", llm.temperature),
            top_p=values.get("top_p", llm.top_p),
            max_tokens=values.get("max_tokens", llm.max_tokens),
            seed=seed,
        )
        tts = replace(tts, temperature=values.get("tts_temperature", tts.temperature), seed=seed)
        system = query.get("system", "")
        if len(system) > MAX_SYSTEM:
            raise QueryError(f"system must be at most {MAX_SYSTEM} characters")
        fmt = query.get("format", "opus") or "opus"
        if fmt not in FORMATS:
            raise QueryError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return AssistantSettings(
            llm, tts, query.get("voice") or None, system.strip() or self.system, fmt
        )
