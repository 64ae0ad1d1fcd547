"""Speech to speech over the server: the loaded model, its one session slot, per-session settings.

The model serves one live session at a time: `ChatService.acquire` takes the slot at once or
says no (the caller then tells the client it is busy), never a wait. A session's settings come
from the query of its WebSocket URL, with the names Kyutai's and NVIDIA's servers take, over the
defaults of the command line; everything MLX happens on the model thread (`build_pipeline`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..jobs.pipeline import Pipeline
from ..jobs.sampling import Sampling
from .query import QueryError, non_negative, number, positive_int, probability
from .slot import SessionSlot

if TYPE_CHECKING:
    from ..commands.session import DialogueSession

FORMATS = ("opus", "pcm16")
SEED_LIMIT = 2**63
# Kyutai's web client always sends these; only their neutral values are implemented.
NEUTRAL = {"pad_mult": 0.0, "repetition_penalty": 1.0}
IGNORED = ("repetition_penalty_context", "audio_seed", "email", "worker_auth_id", "auth_id")
VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
VOICE_SUFFIXES = (".pt", ".safetensors")


@dataclass(frozen=True)
class ChatSettings:
    """One session's settings.

    Attributes:
        sampling: temperatures, top-k and seed.
        prompt: PersonaPlex's persona (`text_prompt`), None for the server's default.
        voice_prompt: a voice preset name beside the model (`voice_prompt`), None: the default.
        cfg_coef: Hibiki's classifier-free guidance, None: the server's.
        format: "opus" (Kyutai's protocol) or "pcm16" (our page: raw int16 PCM at 24 kHz).
        stats: send the kind-4 statistics messages (always with pcm16).
    """

    sampling: Sampling
    prompt: str | None = None
    voice_prompt: str | None = None
    cfg_coef: float | None = None
    format: str = "opus"
    stats: bool = False


def settings_from_query(query: Mapping[str, str], defaults: Sampling) -> ChatSettings:
    """Read a session's settings from its URL query (unknown names are ignored, as Kyutai's
    servers do; values out of range raise QueryError naming the parameter)."""
    sampling = {}
    for name, key, read in (
        ("text_temperature", "text_temperature", non_negative),
        ("audio_temperature", "audio_temperature", non_negative),
        ("text_topk", "text_top_k", positive_int),
        ("audio_topk", "audio_top_k", positive_int),
        ("top_p", "top_p", probability),
    ):
        if query.get(name, "") != "":
            sampling[key] = read(name, query[name])
    seed_name = "seed" if "seed" in query else "text_seed"  # (the Rust server's name)
    if query.get(seed_name, "") != "":
        seed = number(seed_name, query[seed_name], int)
        if seed != -1:  # NVIDIA's client sends -1 for "any"
            if not 0 <= seed < SEED_LIMIT:
                raise QueryError(f"{seed_name} must be in 0..2**63-1 (or -1), got {seed}")
            sampling["seed"] = seed
    for name, neutral in NEUTRAL.items():
        if query.get(name, "") != "" and number(name, query[name], float) != neutral:
            raise QueryError(f"{name} is not implemented here (only {neutral:g})")
    if query.get("image_url"):
        raise QueryError("image_url is not implemented here (MoshiVis is not served)")
    fmt = query.get("format", "opus") or "opus"
    if fmt not in FORMATS:
        raise QueryError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    cfg = query.get("cfg_coef", "")
    return ChatSettings(
        sampling=replace(defaults, **sampling),
        prompt=query.get("text_prompt") or None,
        voice_prompt=_voice_name(query.get("voice_prompt") or None),
        cfg_coef=number("cfg_coef", cfg, float) if cfg != "" else None,
        format=fmt,
        stats=fmt == "pcm16" or query.get("stats", "") in ("1", "true"),
    )


def _voice_name(value: str | None) -> str | None:
    """A preset name (NVIDIA's client sends `NATF2.pt`); never a path."""
    if value is None:
        return None
    for suffix in VOICE_SUFFIXES:
        value = value.removesuffix(suffix)
    if not VOICE_NAME.fullmatch(value):
        raise QueryError(f"voice_prompt must be a voice preset name, got {value!r}")
    return value


class ChatService(SessionSlot):
    """The speech-to-speech model and its session slot.

    Args:
        args: the command line (model, sampling and prompt options: the sessions' defaults).
        session: the default session, built (and warmed up) on the model thread.
    """

    def __init__(self, args: argparse.Namespace, session: DialogueSession):
        self.args, self.session = args, session
        self.default, self.profile = session.pipeline, session.profile
        super().__init__()

    @classmethod
    def load(cls, args: argparse.Namespace, source: str) -> ChatService:
        """Load the checkpoint and warm it up (on the model thread)."""
        from ..commands.session import dialogue_session

        session = dialogue_session(args, source, live=True)
        session.pipeline.warmup()
        return cls(args, session)

    @property
    def defaults(self) -> Sampling:
        """The command line's sampling, without its seed when it drew a random one."""
        return replace(self.default.sampling, seed=self.args.seed)

    def build_pipeline(self, settings: ChatSettings) -> Pipeline:
        """A fresh session's pipeline with `settings` (on the model thread); the prompt is
        prefilled, so the session can start at once."""
        from mimi_mlx.io.cli_support import UsageError

        from ..commands import prompting

        args, d = self.args, self.default
        session = argparse.Namespace(
            prompt=settings.prompt or args.prompt,
            voice_prompt=self._voice(settings.voice_prompt) or args.voice_prompt,
            cfg_coef=args.cfg_coef if settings.cfg_coef is None else settings.cfg_coef,
        )
        try:
            guidance = prompting.guidance_of(session, self.profile, d.lm)
            prompt = d.prompt
            if (settings.prompt, settings.voice_prompt) != (None, None):
                prompting.refuse_untaken_prompts(session, self.profile)
                prompt = prompting.build_prompt(session, self.profile, self.session.checkpoint)
        except UsageError as e:  # what this model cannot take
            raise QueryError(str(e).replace("--", "")) from None
        # a new pipeline each session: its own seed (drawn when the settings give none)
        pipeline = Pipeline(d.lm, d.mimi, d.tokenizer, settings.sampling, guidance, prompt)
        pipeline.reset()
        pipeline.prefill_prompt()
        return pipeline

    def _voice(self, name: str | None) -> str | None:
        if name is None:
            return None
        found = self.session.checkpoint.files.get(f"voices/{name}.safetensors")
        if found is None:
            voices = ", ".join(self.profile.voices) or "none"
            raise QueryError(f"no voice preset {name!r} beside the model (voices: {voices})")
        return str(found)

    def info(self) -> dict:
        """What `/api/info` says about the chat model."""
        from ..jobs.known import TRAINED

        profile = self.profile
        return {
            "model": self.session.info.get("model", profile.name),
            "checkpoint": self.session.info.get("checkpoint"),
            "kind": profile.kind,
            "prompts": profile.text_prompt == TRAINED,
            "voices": list(profile.voices),
            "sampling": self.defaults.to_dict(),
        }
