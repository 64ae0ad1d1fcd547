"""Kyutai's Moshi speech model on Apple's MLX: the language model, its streaming generator and
checkpoint loading (Kyutai MLX bf16/q8/q4, Kyutai PyTorch, transformers).

Scoring a sequence (teacher forcing, Kyutai's `LMModel.forward` semantics)::

    from moshi_mlx import load_model
    model = load_model("kyutai/moshiko-mlx-q4")  # repo id, folder or .safetensors file
    out = model.forward(codes)  # codes (B, 1 + n_q, T): text, Moshi's 8, the user's 8 codebooks
    out.text_logits  # (B, 1, T, text_card), out.text_mask (B, 1, T)
    out.logits  # (B, dep_q, T, card), NaN where out.mask (B, dep_q, T) is False

Streaming, one 80 ms frame at a time::

    from moshi_mlx import MoshiGenerator, load_checkpoint
    ck = load_checkpoint("kyutai/moshiko-mlx-q4")  # lm, mimi, tokenizer, config
    gen = MoshiGenerator(ck.lm, seed=0)  # text 0.7 / top-k 25, audio 0.8 / top-k 250
    codes = ck.mimi.encode_step(pcm)  # (1, K, 1) the user's frame
    text_token, audio_codes = gen.step(codes[:, :8])  # (B,), (B, 8) or None at first
    if audio_codes is not None:
        out_pcm = ck.mimi.decode_step(audio_codes[:, :, None])  # (1, 1, 1920)
    piece = ck.tokenizer.piece(int(text_token[0]))  # None for padding
    gen.reset()  # between sessions

Speech to text with Kyutai's STT models (`kyutai/stt-1b-en_fr-mlx`, ...)::

    from moshi_mlx import SttStream, load_checkpoint, transcribe_files
    ck = load_checkpoint("kyutai/stt-1b-en_fr-mlx")
    (result,) = transcribe_files(ck.lm, ck.mimi, ck.tokenizer, ["talk.wav"])
    result.text, result.words  # words with start and end times in seconds
    stream = SttStream(ck, vad=True)  # vad: the -candle weights' end-of-turn head
    for (step,) in stream.feed(pcm):  # any number of 24 kHz samples, e.g. 80 ms at a time
        step.words, step.end_of_turn  # the words this step finished, P(speaker finished)
    steps, last_words = stream.finish()  # the tail of silence, the last words

Text to speech (Kyutai's TTS, `kyutai/tts-1.6b-en_fr`)::

    from moshi_mlx import TextToSpeech, load_checkpoint, load_voice
    tts = TextToSpeech(load_checkpoint("kyutai/tts-1.6b-en_fr"))
    voice = load_voice("expresso/ex03-ex01_happy_001_channel1_334s.wav", tts)
    for pcm in tts.audio("Hello there.", [voice]):  # (1920,) float32 blocks, as generated
        ...
"""

from mimi_mlx.io.hub import CheckpointError

from .jobs.generate import MoshiGenerator
from .jobs.sampling import Rng, Sampler
from .jobs.stt import SttStream
from .jobs.transcribe import transcribe_files
from .jobs.tts import TextToSpeech, TtsSettings, load_voice
from .model.checkpoint import Checkpoint, load_checkpoint, load_model
from .model.config import LmConfig
from .model.lm import Lm, LmOutput
from .model.tokenizer import TextTokenizer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Lm",
    "LmConfig",
    "LmOutput",
    "MoshiGenerator",
    "Rng",
    "Sampler",
    "SttStream",
    "TtsSettings",
    "TextTokenizer",
    "TextToSpeech",
    "load_checkpoint",
    "load_model",
    "load_voice",
    "transcribe_files",
]
