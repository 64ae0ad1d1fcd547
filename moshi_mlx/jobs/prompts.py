"""System prompts before a conversation: a voice and a text persona (NVIDIA's PersonaPlex).

NVIDIA's `LMGen.step_system_prompts` (NVIDIA/personaplex `moshi/moshi/models/lm.py`) teacher-
forces every stream, frame by frame, in four phases:

| phase        | text            | Moshi's audio           | user's audio |
|--------------|-----------------|-------------------------|--------------|
| voice prompt | PAD (3)         | Mimi codes of the voice | sine codes   |
| silence      | PAD             | silence codes           | sine codes   |
| text prompt  | one token/frame | silence codes           | sine codes   |
| silence      | PAD             | silence codes           | sine codes   |

with 0.5 s (6 frames) of silence, the text `"<system> {text} <system>"`, and the voice recording
resampled to 24 kHz and normalised to -24 LUFS. Their generator discards the very first frame it
is given (its tokens are overwritten by the start tokens), so the model's past is the sequence
without its first frame: `PromptFrames` holds exactly that, ready for `MoshiGenerator.prefill`.

A voice preset (NVIDIA's `voices/*.pt`, converted once to safetensors by `quantize voices`)
replaces the voice phase by the input embeddings NVIDIA saved and the token ring they left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import AudioError, read_audio

# NVIDIA's constants (lm.py L56-57): the Mimi codes of a silent frame and of a 440 Hz sine frame
SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
PAD = 3  # NVIDIA's `zero_text_code`
SILENCE_FRAMES = int(0.5 * 12.5)  # `audio_silence_frame_cnt`: 0.5 s at 12.5 frames/s
TARGET_LUFS = -24.0


def wrap_with_system_tags(text: str) -> str:
    """`"<system> {text} <system>"`, unless already wrapped (NVIDIA's `offline.py`)."""
    cleaned = text.strip()
    if cleaned.startswith("<system>") and cleaned.endswith("<system>"):
        return cleaned
    return f"<system> {cleaned} <system>"


def normalize_loudness(audio: np.ndarray, sample_rate: int, target: float = TARGET_LUFS):
    """Scale mono audio to `target` LUFS (ITU-R BS.1770 integrated loudness, pyloudnorm)."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate)
    with np.errstate(divide="ignore"):
        loudness = meter.integrated_loudness(audio.astype(np.float64))
    if not np.isfinite(loudness):
        raise AudioError("the voice prompt is silent (its loudness cannot be measured)")
    return (audio * 10.0 ** ((target - loudness) / 20.0)).astype(np.float32)


def voice_codes(path: str | Path, mimi, num_codebooks: int = 8) -> np.ndarray:
    """Mimi codes (8, n) of a voice recording, as NVIDIA encodes its voice prompt.

    The audio is read as mono at 24 kHz, normalised to -24 LUFS, cut into 80 ms frames (the last
    one padded with zeros) and encoded by a fresh Mimi stream (reset again afterwards).

    Raises:
        AudioError: not audio, empty, or silent (one line).
    """
    audio = read_audio(path, SAMPLE_RATE)
    if len(audio) < SAMPLE_RATE // 2:
        raise AudioError(f"the voice prompt {path} is shorter than 0.5 s")
    audio = normalize_loudness(audio, SAMPLE_RATE)
    audio = np.pad(audio, (0, -len(audio) % FRAME_SIZE))
    mimi.reset()
    codes = []
    for start in range(0, len(audio), FRAME_SIZE):
        frame = mx.array(audio[start : start + FRAME_SIZE])[None, None]
        codes.append(np.array(mimi.encode_step(frame, num_codebooks))[0, :, 0])
    mimi.reset()
    return np.stack(codes, axis=1)


@dataclass
class VoicePreset:
    """A saved voice prompt: NVIDIA's input embeddings of its steps and the tokens it left.

    Attributes:
        embeddings: (n, dim) the input of the temporal transformer at steps 0 .. n - 1.
        last_frames: (17, 2) the text, Moshi and user tokens of the preset's last two
            frames (times n - 2 and n - 1), undelayed.
    """

    embeddings: np.ndarray
    last_frames: np.ndarray


def load_voice_preset(path: str | Path, delays: list[int]) -> VoicePreset:
    """Read a preset converted by `quantize voices` (keys `embeddings`, `cache`).

    NVIDIA's ring `cache` (17, max_delay + 3) after n + 1 calls holds the frame of time t
    (call t + 1) at position `(t + 1 + delay_k) % size` for stream k.
    """
    from mimi_mlx.io.safetensors import read_safetensors

    try:
        tensors = read_safetensors(Path(path))
        embeddings = np.array(tensors["embeddings"].astype(mx.float32))
        cache = np.array(tensors["cache"]).astype(np.int64)
    except Exception as e:
        raise AudioError(f"{path} is not a converted voice preset ({e})") from None
    embeddings = embeddings.reshape(embeddings.shape[0], -1)
    cache = cache.reshape(len(delays), -1)
    n = embeddings.shape[0]
    size = cache.shape[1]
    frames = np.zeros((len(delays), 2), np.int64)
    for j, t in enumerate((n - 2, n - 1)):
        for k, d in enumerate(delays):
            frames[k, j] = cache[k, (t + 1 + d) % size]
    return VoicePreset(embeddings, frames)


@dataclass
class PromptFrames:
    """Teacher-forced frames before the conversation (for `MoshiGenerator.prefill`).

    Attributes:
        text: (T,) text tokens; audio: (8, T) Moshi's codes; user: (8, T) the user's codes.
        embeddings: (E, dim) a voice preset's input embeddings, replayed before the frames,
            or None. With a preset, the first two frames are the preset's last two (the tokens
            its embeddings stand for, which later steps read); the others follow its steps.
    """

    text: np.ndarray
    audio: np.ndarray
    user: np.ndarray
    embeddings: np.ndarray | None = None

    @property
    def steps(self) -> int:
        """Generator steps the prompt takes."""
        return len(self.text) + (0 if self.embeddings is None else len(self.embeddings) - 2)


def system_prompt(
    text_tokens: list[int] | None,
    voice: np.ndarray | VoicePreset | None,
    user_fill: tuple[int, ...] = SINE_TOKENS,
    drop_first: bool = True,
) -> PromptFrames:
    """NVIDIA's four prompt phases as the model's past (their generator's first frame dropped).

    Args:
        text_tokens: the SentencePiece tokens of `wrap_with_system_tags(prompt)`, or None.
        voice: Mimi codes (8, n) of a voice recording, a converted preset, or None.
        user_fill: the user's codes during the prompts (NVIDIA's sine; silence for Moshi).
        drop_first: drop the first frame as NVIDIA's generator does (False for Moshi's prefill).
    """
    silence = np.array(SILENCE_TOKENS)[:, None]
    sine = np.array(user_fill)[:, None]
    columns: list[tuple[int, np.ndarray, np.ndarray]] = []  # (text, audio (8,), user (8,))
    embeddings = None
    if isinstance(voice, VoicePreset):
        embeddings = voice.embeddings
        for j in range(2):  # the preset's last two frames, whose tokens later steps read
            f = voice.last_frames[:, j]
            columns.append((int(f[0]), f[1:9], f[9:17]))
    elif voice is not None:
        columns += [(PAD, voice[:, i], sine[:, 0]) for i in range(voice.shape[1])]
    columns += [(PAD, silence[:, 0], sine[:, 0])] * SILENCE_FRAMES
    columns += [(int(t), silence[:, 0], sine[:, 0]) for t in text_tokens or []]
    columns += [(PAD, silence[:, 0], sine[:, 0])] * SILENCE_FRAMES
    if embeddings is None and drop_first:
        columns = columns[1:]  # NVIDIA's first call only writes the start tokens
    return PromptFrames(
        text=np.array([c[0] for c in columns], np.int64),
        audio=np.stack([c[1] for c in columns], axis=1).astype(np.int64),
        user=np.stack([c[2] for c in columns], axis=1).astype(np.int64),
        embeddings=embeddings,
    )


def prefill_prompt(generator, prompt: PromptFrames) -> None:
    """Run the prompt through a freshly reset generator (one batched forward pass per part)."""
    B = generator.batch_size

    def rows(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x[None], (B, *x.shape))

    if prompt.embeddings is not None:
        # the preset's steps: its embeddings, with its last two frames' tokens for later steps
        n = len(prompt.embeddings)
        text = np.full((n,), PAD)
        audio = np.full((8, n), -1)
        user = np.full((8, n), -1)
        text[-2:], audio[:, -2:], user[:, -2:] = (
            prompt.text[:2],
            prompt.audio[:, :2],
            prompt.user[:, :2],
        )
        generator.prefill(
            text=rows(text),
            audio=rows(audio),
            user=rows(user),
            embeddings=mx.array(rows(prompt.embeddings)),
        )
        prompt = PromptFrames(prompt.text[2:], prompt.audio[:, 2:], prompt.user[:, 2:])
    generator.prefill(text=rows(prompt.text), audio=rows(prompt.audio), user=rows(prompt.user))


def make_voice_preset(lm, voice: np.ndarray) -> dict[str, np.ndarray]:
    """A voice preset in NVIDIA's format from Mimi codes (8, V) of a voice recording.

    What NVIDIA's `LMGen` saves after a voice prompt (`save_voice_prompt_embeddings`): the input
    embeddings of its V - 1 steps, (V - 1, 1, 1, dim), and its token ring (1, 17, 4) (slots
    their generator never reads again are left at the start tokens).
    """
    from ..model.lm import delay_codes

    frames = system_prompt(None, voice)  # the voice frames, NVIDIA's first one dropped
    n = voice.shape[1] - 1
    codes = np.concatenate([frames.text[None], frames.audio, frames.user])[:, :n]
    initial = lm.initial_tokens
    delayed = delay_codes(mx.array(codes)[None], lm.cfg.delays, initial)
    inputs = mx.concatenate([initial[None, :, None], delayed[:, :, : n - 1]], axis=2)
    embeddings = np.array(lm.embed(inputs).astype(mx.float32))[0]  # (n, dim)
    size = lm.cfg.max_delay + 3
    cache = np.repeat(np.array(initial)[:, None], size, axis=1).astype(np.int32)
    for t in (n - 2, n - 1):
        for k, d in enumerate(lm.cfg.delays):
            cache[k, (t + 1 + d) % size] = codes[k, t]
    return {"embeddings": embeddings[:, None, None], "cache": cache[None]}
