"""`moshi-mlx models`: the known models (`--model NAME`), their hub repos and what they take."""

from __future__ import annotations

import argparse

from ..jobs.known import MODELS


def register(command) -> None:
    """Add the `models` subcommand (`command(name, help)` makes a subparser)."""
    sub = command("models", "list the models --model knows: hub repos, defaults, prompts")
    sub.set_defaults(handler=_models)


def describe() -> str:
    """The table as text, one model a line (plus its repos)."""
    lines = []
    for m in MODELS.values():
        prompts = [
            f"{what} ({how})"
            for what, how in (("--prompt", m.text_prompt), ("--voice-prompt", m.voice_prompt))
            if how
        ]
        s = m.sampling
        guidance = f"; guidance {m.cfg_coef}: {m.conditions} vs {m.cfg_conditions}"
        lines.append(f"{m.name:16} {m.kind:12} {m.about}")
        repos = ", ".join(f"{p}: {r}" for p, r in m.repos.items())
        lines.append(f"{'':16} repos {repos} (default {m.precision})")
        lines.append(
            f"{'':16} sampling text T={s.text_temperature} top-k {s.text_top_k}, audio "
            f"T={s.audio_temperature} top-k {s.audio_top_k}" + (guidance if m.conditions else "")
        )
        if prompts:
            lines.append(f"{'':16} takes {', '.join(prompts)}")
        if m.voices:
            lines.append(f"{'':16} voice presets {' '.join(m.voices)}")
    return "\n".join(lines)


def _models(args: argparse.Namespace) -> None:
    print(describe())
