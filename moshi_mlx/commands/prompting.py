"""The options `chat` and `run` share for prompts and conditioned models: `--prompt`,
`--voice-prompt`, `--cfg-coef`, `--session` (replay a recorded session's settings).

What a model accepts comes from the known-models table (`--model`), or, for another checkpoint,
from what it is: a 16-step depth decoder is PersonaPlex, a "description" condition Hibiki.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mimi_mlx.io.cli_support import UsageError

from ..jobs.known import MODELS, TRAINED, KnownModel
from ..model.hibiki_zero import is_hibiki_zero

if TYPE_CHECKING:
    from ..model.checkpoint import Checkpoint

PRESET_SUFFIX = ".safetensors"


def add_prompt_options(sub: argparse.ArgumentParser) -> None:
    g = sub.add_argument_group("prompts and guidance")
    g.add_argument(
        "--prompt",
        metavar="TEXT",
        help="a text persona before the conversation (PersonaPlex: "
        '"You are a patient French teacher."; Moshiko/Moshika take it as an untrained prefill)',
    )
    g.add_argument(
        "--voice-prompt",
        metavar="FILE|PRESET",
        help="a voice to speak with: a recording (any audio file) or a PersonaPlex preset name "
        "(NATF0-3, NATM0-3, VARF0-4, VARM0-4, converted once by `moshi-mlx-quantize voices`) "
        "or its .safetensors file",
    )
    g.add_argument(
        "--cfg-coef",
        type=float,
        metavar="C",
        help="classifier-free guidance of conditioned models (Hibiki: default 3; 1: none)",
    )
    g.add_argument(
        "--session",
        type=Path,
        metavar="FILE",
        help="a recorded session.json: its checkpoint, prompts, seed and sampling (options "
        "given here win)",
    )


def with_session(args: argparse.Namespace) -> argparse.Namespace:
    """The options, with those not given filled from a recorded `session.json` (`--session`);
    `args` itself is left as the user gave it."""
    path = getattr(args, "session", None)
    if path is None:
        return args
    try:
        session = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the session {path}: {' '.join(str(e).split())}") from None
    filled = dict(vars(args))
    if not (args.checkpoint or args.hf_repo or args.model or getattr(args, "voice", None)):
        filled["checkpoint"] = session.get("checkpoint")
    sampling = session.get("sampling") or {}
    for key, recorded in (
        *((k, session.get(k)) for k in SESSION_KEYS),
        *((k, sampling.get(k)) for k in SAMPLING_KEYS),
    ):
        if filled.get(key) is None and recorded is not None:
            filled[key] = recorded
    return argparse.Namespace(**filled)


SESSION_KEYS = ("prompt", "voice_prompt", "cfg_coef", "seed", "lora", "lora_scaling")
SAMPLING_KEYS = ("text_temperature", "audio_temperature", "text_top_k", "audio_top_k", "top_p")


def check_prompts(args: argparse.Namespace, known: KnownModel | None) -> None:
    """Refuse prompts a known model cannot take, and a voice file that cannot be read (before
    loading anything)."""
    if known is not None:
        refuse_untaken_prompts(args, known)
        if known.conditions is None and args.cfg_coef not in (None, 1.0):
            raise UsageError(
                f"{known.name} takes no --cfg-coef: it has no conditioner, so no classifier-free "
                "guidance (--model hibiki and hibiki-2b have one)"
            )
    if args.voice_prompt is not None:
        _check_voice_file(args.voice_prompt)


def refuse_untaken_prompts(args: argparse.Namespace, known: KnownModel) -> None:
    """UsageError for a --prompt or --voice-prompt `known` cannot take."""
    for option, value, accepts in (
        ("--prompt", args.prompt, known.text_prompt),
        ("--voice-prompt", args.voice_prompt, known.voice_prompt),
    ):
        if value is not None and accepts is None:
            takers = [n for n, m in MODELS.items() if m.text_prompt == TRAINED]
            raise UsageError(
                f"{known.name} takes no {option}: use --model {' or '.join(takers)} for a "
                "persona and a voice"
            )


def _check_voice_file(value: str) -> None:
    from mimi_mlx.io.audio import AudioError, audio_info

    path = Path(value).expanduser()
    if not path.exists():
        if "/" in value or "." in Path(value).name:
            raise UsageError(f"--voice-prompt: no such file: {value}")
        return  # a preset name, looked up beside the model
    if path.suffix == ".pt":
        raise UsageError(
            f"--voice-prompt {value}: PyTorch presets are converted once with "
            f"`moshi-mlx-quantize voices {value} DIR`, then pass DIR/{path.stem}{PRESET_SUFFIX}"
        )
    if path.suffix != PRESET_SUFFIX:
        try:
            audio_info(path)
        except AudioError as e:
            raise UsageError(f"--voice-prompt: {e}") from None


def profile_of(known: KnownModel | None, lm) -> KnownModel:
    """The known model whose defaults apply: `known`, or the closest by structure."""
    if known is not None:
        return known
    if is_hibiki_zero(lm.cfg):
        return MODELS["hibiki-zero"]
    if lm.cfg.num_generated < lm.cfg.dep_q:
        return MODELS["personaplex"]
    if lm.condition_names:
        return MODELS["hibiki"]
    return MODELS["moshiko"]


def guidance_of(args: argparse.Namespace, profile: KnownModel, lm):
    """Conditions and guidance for a conditioned model (None for the others)."""
    from ..jobs.pipeline import Guidance

    if not lm.condition_names:
        if args.cfg_coef not in (None, 1.0):
            raise UsageError("--cfg-coef needs a conditioned model (Hibiki)")
        return None
    conditions = profile.conditions or {"description": "very_good"}
    coef = profile.cfg_coef if args.cfg_coef is None else args.cfg_coef
    negative = profile.cfg_conditions or {"description": "very_bad"}
    return Guidance(conditions, coef, negative if coef != 1.0 else None)


def build_prompt(args: argparse.Namespace, profile: KnownModel, ckpt: Checkpoint):
    """The frames to prefill before each session (None without --prompt / --voice-prompt);
    the prompts were checked (`check_prompts`, `refuse_untaken_prompts`)."""
    from ..jobs.prompts import (
        SILENCE_TOKENS,
        SINE_TOKENS,
        load_voice_preset,
        system_prompt,
        voice_codes,
        wrap_with_system_tags,
    )

    if args.prompt is None and args.voice_prompt is None:
        return None
    if ckpt.lm.cfg.num_generated != 8 or ckpt.lm.cfg.card != 2048:
        raise UsageError("prompts need Moshi's 8 + 8 Mimi codebooks of 2048 codes")
    trained = TRAINED in (profile.text_prompt, profile.voice_prompt)
    tokens = None
    if args.prompt:
        if ckpt.tokenizer is None:
            raise UsageError("--prompt needs a checkpoint with a text tokenizer")
        text = wrap_with_system_tags(args.prompt) if trained else args.prompt.strip()
        tokens = ckpt.tokenizer.encode(text)
    voice = None
    if args.voice_prompt is not None:
        path = voice_path(args.voice_prompt, ckpt, profile)
        if path.suffix == PRESET_SUFFIX:
            voice = load_voice_preset(path, ckpt.lm.cfg.delays)
            if voice.embeddings.shape[1] != ckpt.lm.cfg.dim:
                raise UsageError(f"the voice preset {path} was saved for another model size")
        else:
            voice = voice_codes(path, ckpt.mimi, 8)
    # PersonaPlex hears a 440 Hz sine from the user during its prompts; Moshi, silence
    user_fill = SINE_TOKENS if trained else SILENCE_TOKENS
    return system_prompt(tokens, voice, user_fill=user_fill, drop_first=trained)


def voice_path(value: str, ckpt: Checkpoint, profile: KnownModel) -> Path:
    """A voice prompt's file: `value` itself, or the preset of that name beside the model."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    found = ckpt.files.get(f"voices/{value}{PRESET_SUFFIX}")
    if found is not None:
        return found
    hint = f" ({', '.join(profile.voices)})" if profile.voices else ""
    raise UsageError(
        f"no voice preset {value!r}{hint} beside the model: convert NVIDIA's voices.tgz once with "
        "`moshi-mlx-quantize voices voices.tgz DIR/voices` (DIR: the checkpoint folder), or pass "
        "an audio file"
    )


def session_info(args: argparse.Namespace, source: str, profile: KnownModel, guidance) -> dict:
    """What `session.json` (and the transcript's JSON) records for a replay."""
    from mimi_mlx.io.hub import recorded_name

    info = {"checkpoint": recorded_name(source), "model": profile.name}
    if args.prompt is not None:
        info["prompt"] = args.prompt
    if args.voice_prompt is not None:
        info["voice_prompt"] = recorded_name(args.voice_prompt)  # a file, or a preset name
    if guidance is not None:
        info["cfg_coef"] = guidance.cfg_coef
    if getattr(args, "lora", None) is not None:  # a fine-tune: the adapter and its scaling
        info["lora"] = recorded_name(args.lora)
        if args.lora_scaling is not None:
            info["lora_scaling"] = args.lora_scaling
    return info
