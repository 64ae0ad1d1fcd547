"""Kyutai's STT in PyTorch (their `moshi` 0.2.13) with bug-catching random weights, saved in
Kyutai's repo layouts, and transcribed exactly as their `run_inference` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import mimi_reference as MR
import moshi_reference as R

# Kyutai's STT architecture (all 32 codebooks in, no depth decoder, voice-activity heads) at a
# tiny width, with a context shorter than the tests' audio (the ring cache wraps). The depformer
# keys are there, as in Kyutai's hub config, and ignored.
TINY_STT = {
    "dim": 64,
    "text_card": 96,
    "existing_text_padding_id": 3,
    "n_q": 32,
    "dep_q": 0,
    "card": 2048,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 50,
    "max_period": 100000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 32,
    "depformer_num_heads": 2,
    "depformer_num_layers": 2,
    "depformer_multi_linear": True,
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "extra_heads_num_heads": 4,
    "extra_heads_dim": 6,
    "delays": [0] * 33,
}
STT_KEYS = {
    "model_type": "stt",
    "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
    "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
    "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
}
# the 2.6B model's padding: a second of silence first, the text 2.5 s behind
STT_2B6_KEYS = {
    **STT_KEYS,
    "stt_config": {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
}


def stt_1b(num_layers: int = 2) -> dict:
    """`kyutai/stt-1b-en_fr`'s config.json (network keys) with fewer layers (real widths)."""
    return {
        **TINY_STT,
        "dim": 2048,
        "num_heads": 16,
        "num_layers": num_layers,
        "text_card": 8000,
        "context": 750,
        "depformer_dim": 1024,
        "depformer_num_heads": 16,
        "depformer_num_layers": 6,
    }


def save_stt_repo(
    lm, cfg: dict, mimi, mimi_cfg: dict, folder: Path, keys: dict = STT_KEYS, dtype=torch.float32
) -> Path:
    """Kyutai's STT PyTorch repo: config.json, model.safetensors, Mimi, a SentencePiece model."""
    from moshi_mlx.testing.tiny_parts import _train_tokenizer

    R.save_pytorch(lm, cfg, folder, dtype=dtype)
    from safetensors.torch import save_file

    save_file(MR.kyutai_state(mimi), str(folder / keys["mimi_name"]))
    (folder / "mimi_config.json").write_text(json.dumps(mimi_cfg))
    tokenizer = Path(keys["tokenizer_name"])
    _train_tokenizer(folder / tokenizer.stem, vocab_size=200)
    config = {
        **cfg,
        **keys,
        "moshi_name": "model.safetensors",
        "mimi_config_name": "mimi_config.json",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def make_mimi(audio: np.ndarray, seed: int = 3):
    """Kyutai's tiny Mimi (32 codebooks) calibrated on `audio`, and its config."""
    return MR.make_kyutai_mimi(MR.TINY, seed, audio), MR.TINY


@torch.no_grad()
def kyutai_transcribe(lm, mimi, audio: np.ndarray, stt_config: dict):
    """Kyutai's `run_inference` for an STT model, greedy: the padded input (T * 1920,), Mimi's
    codes (32, T), the tokens (T,) and the extra heads' probabilities (T, num_heads, 6)."""
    from moshi.models.lm import LMGen

    pcm = torch.from_numpy(audio)[None, None]
    left = int(stt_config.get("audio_silence_prefix_seconds", 0.0) * 24000)
    right = int((stt_config.get("audio_delay_seconds", 0.0) + 1.0) * 24000)
    pcm = torch.nn.functional.pad(pcm, (left, right))
    n = pcm.shape[-1] // 1920  # whole frames only
    gen = LMGen(lm, use_sampling=False, temp=0.0, temp_text=0.0)
    tokens, heads = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small steps: threads only contend (10x slower here with 2)
    codes = []
    with mimi.streaming(1), gen.streaming(1):
        for i in range(n):
            frame = mimi.encode(pcm[..., i * 1920 : (i + 1) * 1920])
            codes.append(frame[0, :, 0].numpy())
            if i == 0:  # as run_inference: the first frame twice, the first result dropped
                gen.step(frame)
            out, probs = gen.step_with_extra_heads(frame)
            tokens.append(int(out[0, 0, 0]))
            heads.append(torch.stack([p[0, 0] for p in probs]).numpy())
    torch.set_num_threads(threads)
    padded = pcm[0, 0, : n * 1920].numpy()
    return padded, np.stack(codes, axis=1), np.array(tokens), np.stack(heads)


def speech_and_noise(path: Path, seconds: float = 30.0) -> np.ndarray:
    """espeak-ng speech, then noise, `seconds` long, written to `path` (24 kHz float WAV)."""
    import soundfile as sf

    text = (
        "Speech recognition turns what people say into text. This model listens to the audio "
        "one frame at a time and writes each word about half a second after it was spoken. "
        "The quick brown fox jumps over the lazy dog. Numbers like one, two and three are "
        "easy to say. It works on long recordings and on the live microphone."
    )
    speech = MR.speech(seconds - 4.0, path.with_suffix(".speech.wav"), text)
    audio = np.concatenate([speech, MR.noise(4.0, seed=5)]).astype(np.float32)
    sf.write(str(path), audio, 24000, subtype="FLOAT")
    return audio
