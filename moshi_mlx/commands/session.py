"""The dialogue session `chat`, `run` and `serve` build from their options: the checkpoint
loaded once, the model's profile, its sampling, guidance and prompts, and what a replay needs.

The walk goes down once: options -> `dialogue_session` -> the checkpoint (resolved and loaded
once) -> the profile -> the pipeline; nothing is read back from the command line later.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from ..jobs.known import COMMAND_OF_KIND, KnownModel, with_lm_gen_config
from ..jobs.pipeline import Pipeline
from ..model.checkpoint import Checkpoint
from . import options, prompting

KIND_NAMES = {"stt": "a speech-to-text", "tts": "a text-to-speech"}


@dataclass
class DialogueSession:
    """A speech-to-speech model ready to run, and what it was built from.

    Attributes:
        pipeline: the per-frame pipeline (sampling, guidance and prompt applied).
        checkpoint: the loaded checkpoint (its files: voices, prompts beside it).
        profile: the known model whose defaults apply (named, or recognised by structure).
        info: what `session.json` and the transcript's JSON record for a replay.
    """

    pipeline: Pipeline
    checkpoint: Checkpoint
    profile: KnownModel
    info: dict


def dialogue_session(args: argparse.Namespace, source: str, live: bool = False) -> DialogueSession:
    """Load `source` and build its session from the options (a `--session` already applied:
    `prompting.with_session`)."""
    import sys

    known = options.known_of(args)
    prompting.check_prompts(args, known)  # before the (long) load
    lora, lora_scaling = options.lora_of_args(args)
    if sys.stderr.isatty():  # (errors stay one line where stderr is read by a program)
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    ckpt = options.load(source, live, lora, lora_scaling)
    refuse_other_kind(ckpt.lm.cfg, source)
    if ckpt.tokenizer is None:
        print("warning: the checkpoint has no text tokenizer: no transcript", file=sys.stderr)
    profile = prompting.profile_of(known, ckpt.lm)
    # the checkpoint's own `lm_gen_config` (as Kyutai's server and hibiki_zero pass to LMGen)
    gen = ckpt.lm.cfg.extra.get("lm_gen_config")
    if gen:
        profile = replace(profile, sampling=with_lm_gen_config(profile.sampling, gen))
    if known is None:  # recognised by structure: what that model takes
        prompting.refuse_untaken_prompts(args, profile)
    guidance = prompting.guidance_of(args, profile, ckpt.lm)
    prompt = prompting.build_prompt(args, profile, ckpt)
    pipeline = Pipeline(
        ckpt.lm, ckpt.mimi, ckpt.tokenizer, options.sampling_of(args, profile), guidance, prompt
    )
    info = prompting.session_info(args, source, profile, guidance)
    return DialogueSession(pipeline, ckpt, profile, info)


def refuse_other_kind(cfg, source: str) -> None:
    """`chat` and `run` drive dialogue and translation models: an STT or TTS checkpoint is
    refused with the command that runs it (ValueError: a failure, as transcribe's and speak's)."""
    kind = cfg.model_type
    if kind in KIND_NAMES:
        where = "--checkpoint" if Path(source).expanduser().exists() else "--hf-repo"
        raise ValueError(
            f"{source} is {KIND_NAMES[kind]} model ({kind}): `moshi-mlx {COMMAND_OF_KIND[kind]} "
            f"{where} {source} ...` runs it; chat and run drive Moshi, PersonaPlex and Hibiki"
        )


def resident(pipeline: Pipeline):
    """Context: the pipeline's models stay resident on Metal while it runs (no-op elsewhere)."""
    from ..system.wired import session_bytes, wired_limit

    return wired_limit(session_bytes(pipeline.lm, pipeline.mimi))
