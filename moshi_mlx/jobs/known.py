"""The models `--model NAME` knows: hub repo per precision, sampling defaults, prompts they take.

One row per model, declarative; the commands read it instead of carrying their own constants.
`--hf-repo` and `--checkpoint` still load anything (the model is then recognised from its files);
`--model` only picks the repo and the defaults that go with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .sampling import Sampling

# What a model does with a prompt phase before the conversation.
TRAINED = "trained"  # the model was trained with it (PersonaPlex)
PREFILL = "prefill"  # accepted as teacher-forced context; the model was not trained for it


# Kyutai's `lm_gen_config` keys (the `LMGen` arguments of a repo's config.json) -> ours
LM_GEN_KEYS = {
    "temp": "audio_temperature",
    "temp_text": "text_temperature",
    "top_k": "audio_top_k",
    "top_k_text": "text_top_k",
}


def with_lm_gen_config(sampling: Sampling, lm_gen_config: dict | None) -> Sampling:
    """`sampling` with a checkpoint's `lm_gen_config` applied (Kyutai's loops pass it to
    `LMGen`; `use_sampling: false` is greedy)."""
    gen = lm_gen_config or {}
    values = {ours: gen[k] for k, ours in LM_GEN_KEYS.items() if k in gen}
    if gen.get("use_sampling") is False:
        values.update(text_temperature=0.0, audio_temperature=0.0)
    return replace(sampling, **values)


@dataclass(frozen=True)
class KnownModel:
    """One row of the table.

    Attributes:
        name: the `--model` value.
        kind: "dialogue" (chat, run), "translation" (Hibiki), "stt" or "tts".
        repos: hub repo id per precision ("q4", "q8", "bf16"); `precision` is the default.
        sampling: sampling defaults (no seed: each session draws one).
        text_prompt, voice_prompt: TRAINED, PREFILL, or None (refused).
        conditions, cfg_conditions, cfg_coef: conditioned models (Hibiki): the condition, the
            negative of classifier-free guidance, and the default guidance coefficient.
        end_of_stream: offline runs feed Kyutai's end-of-stream frame and wait for end-of-text.
        warmup_silence: offline runs follow Kyutai's `hibiki_zero` `generate` instead of
            `run_inference`: `max_delay` frames of encoded silence first, the end-of-input frame
            in place of the frame after the input, the output cut at the first end-of-text.
        voices: preset voice names (PersonaPlex's `voices.tgz`).
        languages: the languages it speaks or hears (ISO 639-1; Wyoming's info lists them).
        about: one line for `--help`.
    """

    name: str
    kind: str
    repos: dict[str, str]
    precision: str
    about: str
    sampling: Sampling = Sampling()
    text_prompt: str | None = None
    voice_prompt: str | None = None
    conditions: dict | None = None
    cfg_conditions: dict | None = None
    cfg_coef: float = 1.0
    end_of_stream: bool = False
    warmup_silence: bool = False
    voices: tuple[str, ...] = field(default=())
    languages: tuple[str, ...] = ()

    @property
    def repo(self) -> str:
        """The hub repo of the default precision."""
        return self.repos[self.precision]


def _kyutai_mlx(voice: str) -> dict[str, str]:
    return {p: f"kyutai/{voice}-mlx-{p}" for p in ("q4", "q8", "bf16")}


def _hibiki(name: str, repo: str, model: str) -> KnownModel:
    """Hibiki: translation with Kyutai's `run_inference` guidance (very_good against very_bad)."""
    return KnownModel(
        name,
        "translation",
        {"bf16": repo},
        "bf16",
        f"{model}: live speech translation, French in, English out",
        sampling=Sampling(text_temperature=0.4, audio_temperature=0.8),
        conditions={"description": "very_good"},
        cfg_conditions={"description": "very_bad"},
        cfg_coef=3.0,
        end_of_stream=True,
    )


def _hibiki_zero() -> KnownModel:
    """Hibiki-Zero: no conditioner (no guidance); the sampling of `hibiki_zero` 0.0.4, which
    builds `LMGen(lm, cfg_coef=1, **lm_gen_config)`: LMGen's defaults (0.7 / 25 text, 0.8 / 250
    audio) unless the repo's config.json says otherwise (its `lm_gen_config` wins here too)."""
    return KnownModel(
        "hibiki-zero",
        "translation",
        {"bf16": "kyutai/hibiki-zero-3b-pytorch-bf16"},
        "bf16",
        "Kyutai's Hibiki-Zero 3B: French, Spanish, Portuguese, German in, English out",
        end_of_stream=True,
        warmup_silence=True,
    )


PERSONAPLEX_VOICES = tuple(
    [f"NAT{g}{i}" for g in "FM" for i in range(4)] + [f"VAR{g}{i}" for g in "FM" for i in range(5)]
)

MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "moshiko",
            "dialogue",
            _kyutai_mlx("moshiko"),
            "q4",
            "Kyutai's Moshi 7B, male voice",
            text_prompt=PREFILL,
            voice_prompt=PREFILL,
        ),
        KnownModel(
            "moshika",
            "dialogue",
            _kyutai_mlx("moshika"),
            "q4",
            "Kyutai's Moshi 7B, female voice",
            text_prompt=PREFILL,
            voice_prompt=PREFILL,
        ),
        KnownModel(
            "personaplex",
            "dialogue",
            {"bf16": "nvidia/personaplex-7b-v1"},
            "bf16",
            "NVIDIA's PersonaPlex 7B: a text persona (--prompt) and any voice (--voice-prompt)",
            text_prompt=TRAINED,
            voice_prompt=TRAINED,
            voices=PERSONAPLEX_VOICES,
        ),
        _hibiki("hibiki", "kyutai/hibiki-1b-mlx-bf16", "Kyutai's Hibiki 1B"),
        _hibiki("hibiki-2b", "kyutai/hibiki-2b-mlx-bf16", "Kyutai's Hibiki 2B"),
        _hibiki_zero(),
        KnownModel(
            "stt-1b-en_fr",
            "stt",
            {"bf16": "kyutai/stt-1b-en_fr-mlx"},
            "bf16",
            "Kyutai's speech-to-text 1B, English and French",
            sampling=Sampling(text_temperature=0.0, text_top_k=50, audio_temperature=0.0),
            languages=("en", "fr"),
        ),
        KnownModel(
            "stt-2.6b-en",
            "stt",
            {"bf16": "kyutai/stt-2.6b-en-mlx"},
            "bf16",
            "Kyutai's speech-to-text 2.6B, English",
            sampling=Sampling(text_temperature=0.0, text_top_k=50, audio_temperature=0.0),
            languages=("en",),
        ),
        KnownModel(
            "tts-1.6b-en_fr",
            "tts",
            {"bf16": "kyutai/tts-1.6b-en_fr"},
            "bf16",
            "Kyutai's text-to-speech 1.6B, English and French",
            sampling=Sampling(text_temperature=0.6, audio_temperature=0.6),
            languages=("en", "fr"),
        ),
    )
}


def _rl_tuned(parent: KnownModel, name: str, repo: str, licence: str) -> KnownModel:
    """Kyutai's RL-tuned checkpoints (arXiv 2606.11167, June 2026: GRPO on pause handling,
    turn-taking, backchannels and interruptions): the parent's architecture, prompts and
    sampling defaults (their model cards publish no other settings), one PyTorch bf16 repo."""
    return replace(
        parent,
        name=name,
        repos={"bf16": repo},
        precision="bf16",
        about=f"{parent.about.split(':')[0]}, RL-tuned for turn-taking, backchannels and "
        f"interruptions (gated, {licence})",
    )


MODELS.update(
    (m.name, m)
    for m in (
        _rl_tuned(MODELS["moshika"], "moshika-rl", "kyutai/moshika-rl-seamless", "CC BY-NC 4.0"),
        _rl_tuned(
            MODELS["personaplex"],
            "personaplex-rl",
            "kyutai/personaplex-rl-seamless",
            "CC BY-NC 4.0 and NVIDIA's Open Model License",
        ),
    )
)

DEFAULT_MODEL = "moshiko"

# the `moshi-mlx` command that runs each kind of model
COMMAND_OF_KIND = {"dialogue": "run", "translation": "run", "stt": "transcribe", "tts": "speak"}


class UnknownModelError(ValueError):
    pass


def known_model(name: str, kinds: tuple[str, ...] | None = None) -> KnownModel:
    """The row for `name`; UnknownModelError (one line, listing the choices) otherwise.

    Args:
        kinds: the kinds the caller can run (None: any).
    """
    choices = ", ".join(n for n, m in MODELS.items() if kinds is None or m.kind in kinds)
    model = MODELS.get(name)
    if model is None:
        raise UnknownModelError(
            f"unknown model {name!r}: choose one of {choices} (or pass --hf-repo / --checkpoint)"
        )
    if kinds is not None and model.kind not in kinds:
        raise UnknownModelError(
            f"{name} is a {model.kind} model, which this command does not run (`moshi-mlx "
            f"{COMMAND_OF_KIND[model.kind]} --model {name}` does): choose one of {choices}"
        )
    return model


def model_for_repo(repo: str) -> KnownModel | None:
    """The known model a hub repo id belongs to (None if none)."""
    for m in MODELS.values():
        if repo in m.repos.values():
            return m
    return None
