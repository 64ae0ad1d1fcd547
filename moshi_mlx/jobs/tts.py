"""Kyutai's TTS (`kyutai/tts-1.6b-en_fr`): text in, Mimi frames and audio out, streamed.

The language model is the same as Moshi's, driven the other way round: the word state machine
(`tts_script.py`) feeds the text, the depth decoder generates all the audio codebooks, and the
audio streams lag the text by `tts_config.audio_delay` (1.28 s, 16 steps), their first steps
forced to "no audio". The voices (`speaker_wavs` embeddings of `kyutai/tts-voices`) are attended
to by cross-attention; the `cfg` condition selects the distilled classifier-free guidance (no
second batch row). Step for step this is Kyutai's `TTSModel.generate` (greedy decoding gives the
same tokens; `tests/test_tts_generate.py`).

Long texts are cut into chunks of whole sentences that fit the model's attention context, each
generated as its own utterance with the same voices, the audio streamed without a break: memory
stays bounded (ring caches, nothing kept but the word timings).

    from moshi_mlx import load_checkpoint
    from moshi_mlx.jobs.tts import TextToSpeech, load_voice
    tts = TextToSpeech(load_checkpoint("kyutai/tts-1.6b-en_fr"))
    voice = load_voice("expresso/ex03-ex01_happy_001_channel1_334s.wav", tts)
    for pcm in tts.audio("Hello there.", [voice]):  # (1920,) float32 blocks at 24 kHz
        ...
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from mimi_mlx.constants import FRAME_RATE
from mimi_mlx.io.hub import CheckpointError, hub_file

from ..formats.words import Word
from ..model.checkpoint import Checkpoint
from .generate import MoshiGenerator
from .tts_script import Entry, TokenIds, script_entries
from .tts_stream import Step, Utterance

VOICE_REPO = "kyutai/tts-voices"
MAX_SPEAKERS = 5  # voice slots of Kyutai's TTS cross-attention source


@dataclass
class TtsSettings:
    """How to speak (Kyutai's `TTSModel` defaults).

    Attributes:
        temperature: for text and audio (0: greedy); top-k 25 for text, 250 for audio.
        cfg: the distilled classifier-free guidance value (one of the model's `cfg` values,
            1.0 .. 4.0), None for no guidance condition.
        num_codebooks: audio codebooks to generate (fewer decode faster); None: all.
        seed: random seed (None: random).
        padding_between: pads forced after each word (1 articulates a bit better).
        initial_padding, max_padding, final_padding: see `StateMachine`; steps after the end.
        chunk_tokens: text tokens per utterance of a long text (default: a quarter of the
            model's attention context).
    """

    temperature: float = 0.6
    cfg: float | None = 2.0
    num_codebooks: int | None = None
    seed: int | None = None
    padding_between: int = 1
    initial_padding: int = 2
    max_padding: int = 8
    final_padding: int = 4
    chunk_tokens: int | None = None


@dataclass
class TTSFrame:
    """One 80 ms frame of speech: Mimi codes (num_codebooks,) and the words started so far."""

    codes: np.ndarray
    index: int  # frame number in the whole output
    words: list[Word] = field(default_factory=list)  # words that start in this frame


def voice_condition(voices: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Kyutai's `speaker_wavs` condition: up to 5 voices (1, dim, T) each in its slot, the empty
    slots masked -> tensor (5 T, dim), mask (5 T,)."""
    if not 1 <= len(voices) <= MAX_SPEAKERS:
        raise ValueError(f"give 1 to {MAX_SPEAKERS} voices, got {len(voices)}")
    length = voices[0].shape[2]
    if any(v.shape != voices[0].shape for v in voices):
        raise ValueError("the voices differ in length: use voices made for the same model")
    tensor = np.zeros((MAX_SPEAKERS, length, dim), np.float32)
    mask = np.zeros((MAX_SPEAKERS, length), bool)
    for i, v in enumerate(voices):
        tensor[i] = v[0].T
        mask[i] = True
    return tensor.reshape(-1, dim), mask.reshape(-1)


class TextToSpeech:
    """Kyutai's TTS on a loaded checkpoint (`load_checkpoint` of a TTS repo or folder).

    Raises:
        ValueError: the checkpoint is not a TTS model (no `tts_config`, no voice conditioner).
    """

    def __init__(self, checkpoint: Checkpoint):
        raw = checkpoint.raw_config or {}
        lm = checkpoint.lm
        if "tts_config" not in raw or "speaker_wavs" not in (lm.cfg.conditioners or {}):
            raise ValueError(
                f"{checkpoint.source} is not a text-to-speech model (its config.json has no "
                "tts_config and no speaker_wavs conditioner); use a TTS checkpoint such as "
                "kyutai/tts-1.6b-en_fr"
            )
        if checkpoint.tokenizer is None:
            raise ValueError(f"{checkpoint.source} has no text tokenizer")
        self.checkpoint = checkpoint
        self.folder = checkpoint.folder
        self.lm, self.mimi, self.tokenizer = lm, checkpoint.mimi, checkpoint.tokenizer
        tts = raw["tts_config"]
        self.delay_steps = int(tts["audio_delay"] * FRAME_RATE)
        self.second_stream_ahead = int(tts.get("second_stream_ahead", 0))
        model_id = raw.get("model_id") or {}
        self.voice_suffix = f".{model_id.get('sig')}@{model_id.get('epoch')}.safetensors"
        self.token_ids = TokenIds(lm.cfg.text_card + 1)
        self.voice_dim = lm.cfg.conditioners["speaker_wavs"]["tensor"]["dim"]
        cfg_lut = (lm.cfg.conditioners.get("cfg") or {}).get("lut") or {}
        self.cfg_values = [float(v) for v in cfg_lut.get("possible_values") or []]

    # -- conditions ------------------------------------------------------------------------------
    def conditions(self, voices: list[np.ndarray], cfg: float | None) -> dict:
        """The model's conditions for these voices and guidance value."""
        names = self.lm.cfg.conditioners
        cond: dict = {"speaker_wavs": voice_condition(voices, self.voice_dim)}
        if "control" in names:
            cond["control"] = "ok"
        if "cfg" in names:
            if cfg is not None and cfg not in self.cfg_values:
                values = ", ".join(f"{v:g}" for v in self.cfg_values)
                raise ValueError(f"--cfg {cfg:g} is not one this model knows: use one of {values}")
            cond["cfg"] = None if cfg is None else format(cfg, ".1f")
        return cond

    def entries(self, script: list[str], padding_between: int = 1) -> list[Entry]:
        return script_entries(
            self.tokenizer.encode, self.token_ids, FRAME_RATE, script, True, padding_between
        )

    # -- generation ------------------------------------------------------------------------------
    def generator(self, voices: list[np.ndarray], settings: TtsSettings) -> MoshiGenerator:
        """The streaming generator with the voices' cross-attention keys and values, computed
        once for every utterance it speaks."""
        t = settings.temperature
        return MoshiGenerator(
            self.lm,
            text_temperature=t,
            text_top_k=25,
            audio_temperature=t,
            audio_top_k=250,
            seed=settings.seed,
            conditions=self.conditions(voices, settings.cfg),
            num_codebooks=settings.num_codebooks,
        )

    def utterance(
        self,
        gen: MoshiGenerator,
        entries: list[Entry],
        settings: TtsSettings,
        seed: int | None = None,
    ) -> Iterator[Step]:
        """One utterance, step by step, as Kyutai's `TTSModel.generate` (the generator reset,
        its random stream seeded with `seed`, default `settings.seed`)."""
        utterance = Utterance(self, gen, settings, seed)
        utterance.add(entries)
        utterance.end()
        while not utterance.done:
            yield utterance.step()

    def frames(
        self, text: str | list[str], voices: list[np.ndarray], settings: TtsSettings | None = None
    ) -> Iterator[TTSFrame]:
        """Speak a text (or a dialogue script: one string per turn, alternating the voices'
        speakers) and yield its Mimi frames as soon as they are generated."""
        settings = settings or TtsSettings()
        gen = self.generator(voices, settings)
        index = 0
        max_delay = self.lm.cfg.max_delay
        base = settings.seed if settings.seed is not None else secrets.randbits(62)
        for i, chunk in enumerate(self.chunks(text, settings.chunk_tokens)):
            start = index  # the chunk's first audio frame is its step `delay_steps + max_delay`
            pending: list[Word] = []
            entries = self.entries(chunk, settings.padding_between)
            for st in self.utterance(gen, entries, settings, base + i):  # a new stream each
                pending += [Word(w, (start + s) / FRAME_RATE) for w, s in st.words]
                codes = st.codes
                if codes is None or st.step - max_delay < self.delay_steps:
                    continue
                ready = [w for w in pending if w.start * FRAME_RATE < index + 1]
                pending = pending[len(ready) :]
                yield TTSFrame(codes, index, ready)
                index += 1
            if pending:  # words after the last frame (a tiny or truncated output)
                yield TTSFrame(np.zeros(0, np.int32), index, pending)

    def audio(
        self, text: str | list[str], voices: list[np.ndarray], settings: TtsSettings | None = None
    ) -> Iterator[np.ndarray]:
        """Speak a text: (1920,) float32 blocks at 24 kHz, in [-1, 1], as they are generated."""
        for frame in self.frames(text, voices, settings):
            if frame.codes.size:
                yield self.decode(frame)
        self.mimi.reset_decoder()

    def decode(self, frame: TTSFrame) -> np.ndarray:
        """One frame's audio through Mimi's streaming decoder (1920,)."""
        pcm = self.mimi.decode_step(mx.array(frame.codes)[None, :, None])
        return np.clip(np.array(pcm[0, 0]), -1, 1)

    # -- long texts ------------------------------------------------------------------------------
    def chunks(self, text: str | list[str], budget: int | None = None) -> list[list[str]]:
        """Cut a text into scripts that fit the attention context: whole sentences (whole turns
        for a dialogue), about `budget` text tokens each (default a quarter of the context)."""
        budget = budget or max(8, (self.lm.cfg.context or 3000) // 4)
        if isinstance(text, str):
            sentences = [s for s in re.split(r"(?<=[.!?…])\s+", text.strip()) if s]
            return [[" ".join(c)] for c in self._groups(sentences, budget)]
        chunks, first = [], 0
        for group in self._groups(list(text), budget):
            chunks.append(([""] if first % 2 else []) + group)  # keep each turn's speaker
            first += len(group)
        return chunks

    def _groups(self, parts: list[str], budget: int) -> list[list[str]]:
        groups: list[list[str]] = [[]]
        used = 0
        for part in parts:
            size = len(self.tokenizer.encode(part))
            if groups[-1] and used + size > budget:
                groups.append([])
                used = 0
            groups[-1].append(part)
            used += size
        return [g for g in groups if g]


VOICE_FILE = re.compile(r"(\.[^./]+@\d+)?\.safetensors$")  # NAME[.<sig>@<epoch>].safetensors


def voice_names(folder: Path | None) -> list[str]:
    """The voices a folder holds, by the names `--voice` takes (sorted; [] without a folder)."""
    if folder is None or not folder.is_dir():
        return []
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    return sorted({VOICE_FILE.sub("", f) for f in files})


def folder_voices(tts: TextToSpeech) -> list[str]:
    """The voices of the checkpoint's own `voices/` folder that fit this model."""
    if tts.folder is None:
        return []
    voices = tts.folder / "voices"
    files = sorted(voices.rglob(f"*{tts.voice_suffix}")) if voices.is_dir() else []
    return [p.relative_to(voices).as_posix()[: -len(tts.voice_suffix)] for p in files]


def load_voice(voice: str | Path, tts: TextToSpeech) -> np.ndarray:
    """A voice embedding (1, dim, T) from a `.safetensors` file or a `kyutai/tts-voices` name
    (the checkpoint's own `voices/` folder first, then the hub or its local cache).

    Raises:
        ValueError: no such voice, or not a voice file of this model's shape.
    """
    path = Path(voice).expanduser()
    if not path.is_file():
        name = f"{voice}{tts.voice_suffix}"
        local = tts.folder / "voices" / name if tts.folder is not None else None
        if local is not None and local.is_file():
            path = local
        else:
            try:
                path = hub_file(VOICE_REPO, name)
            except CheckpointError as e:
                raise ValueError(f"voice {voice!r} not found: not a file, and {e}") from e
            if path is None:
                raise ValueError(
                    f"unknown voice {voice!r}: {VOICE_REPO} has no {name}; give a voice name "
                    "from https://huggingface.co/kyutai/tts-voices or a .safetensors file"
                )
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a voice must be a .safetensors file (speaker_wavs)")
    try:
        tensors = mx.load(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read it as safetensors ({e})") from e
    emb = tensors.get("speaker_wavs")
    if emb is None or emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[1] != tts.voice_dim:
        shape = None if emb is None else tuple(emb.shape)
        raise ValueError(
            f"{path} is not a voice for this model: expected a speaker_wavs tensor of shape "
            f"(1, {tts.voice_dim}, T), found {shape if shape else 'no speaker_wavs'}"
        )
    return np.array(emb.astype(mx.float32))
