"""Tiny random Moshi, STT and TTS checkpoints in Kyutai's real repo layouts, to try the apps
anywhere.

The folder holds what `kyutai/moshiko-mlx-*` holds: `config.json` (the model's keys and the file
names), the language model in Kyutai's MLX layout (`model.safetensors`, or quantized
`model.q8.safetensors` / `model.q4.safetensors`), Mimi in Kyutai's PyTorch layout
(`tokenizer-e351c8d8-checkpoint125.safetensors`, with `mimi_config.json` for its tiny size) and a
SentencePiece model (`tokenizer_spm_32k_3.model`). The weights are random: it makes noise.
The TTS folder holds what `kyutai/tts-1.6b-en_fr` holds (the language model, here in Kyutai's MLX
layout, `tokenizer_spm_8k_en_fr_audio.model`, Mimi) and a voice as `kyutai/tts-voices` has them
(`voices/tiny.<sig>@<epoch>.safetensors`, a `speaker_wavs` tensor (1, dim, 125)).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mimi_mlx.constants import KYUTAI_FILE

from ..model.config import LmConfig
from ..model.lm import Lm
from ..model.tokenizer import TOKENIZER_FILE
from .tiny_parts import write_tiny_mimi, write_tiny_mimi_as, write_tiny_tokenizer

# Moshi's architecture (16 codebooks, 8 generated, delays 0/1, card 2048) at a tiny width.
TINY_LM = {
    "dim": 64,
    "text_card": 512,
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": 2048,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.5,  # gated hidden width 192: a multiple of the quantization groups
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 64,
    "depformer_dim_feedforward": 288,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
    "depformer_causal": True,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}


# NVIDIA's PersonaPlex at a tiny width: a 16-step depth decoder (8 for Moshi, 8 for the user).
TINY_PERSONAPLEX = {**TINY_LM, "dep_q": 16, "depformer_context": 16}

# Kyutai's Hibiki at a tiny width: the "description" condition, acoustic delay 2, 8 + 8 codebooks.
TINY_HIBIKI = {
    **TINY_LM,
    "max_period": 100000,
    "delays": [0, 0] + [2] * 7 + [0] + [2] * 7,
    "conditioners": {
        "description": {
            "type": "lut",
            "lut": {
                "n_bins": 31,
                "dim": 16,
                "tokenizer": "noop",
                "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"],
            },
        }
    },
    "fuser": {"sum": ["description"]},
}

# Kyutai's STT architecture (`kyutai/stt-1b-en_fr`: all 32 Mimi codebooks in, no depth decoder,
# delays 0, voice-activity heads, text 0.5 s behind the audio) at a tiny width. The depformer
# keys are there, as in Kyutai's config, and ignored.
TINY_STT = {
    **{k: v for k, v in TINY_LM.items() if not k.startswith("depformer_")},
    "text_card": 96,
    "n_q": 32,
    "dep_q": 0,
    "context": 750,
    "max_period": 100000,
    "delays": [0] * 33,
    "depformer_dim": 64,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
    "depformer_multi_linear": True,
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "extra_heads_num_heads": 4,
    "extra_heads_dim": 6,
}
STT_FILES = {  # the names Kyutai's STT repos use
    "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
}
STT_KEYS = {
    "model_type": "stt",
    "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
    "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
}
HEAD_SCALE = 12.0  # the random extra heads' weights, scaled so their softmax is not flat
TINY_KINDS = {
    "moshi": TINY_LM,
    "stt": TINY_STT,
    "personaplex": TINY_PERSONAPLEX,
    "hibiki": TINY_HIBIKI,
}
KINDS = (*TINY_KINDS, "tts", "hibiki-zero")


# Kyutai's TTS architecture (kyutai/tts-1.6b-en_fr: every codebook generated, a demuxed second
# text stream, cross-attention over voices, `cfg` and `control` conditions) at a tiny width.
TTS_SIG, TTS_EPOCH = "0000tiny", 1
TINY_TTS_LM = {
    **{k: v for k, v in TINY_LM.items() if k != "delays"},
    "text_card": 256,
    "n_q": 8,
    "dep_q": 8,
    "context": 500,
    "delays": [0, 0] + [2] * 7,
    "depformer_weights_per_step_schedule": [0, 1, 2, 3, 3, 4, 4, 4],
    "depformer_low_rank_embeddings": 32,
    "demux_second_stream": True,
    "cross_attention": True,
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 32}},
        "cfg": {
            "type": "lut",
            "lut": {
                "n_bins": 7,
                "dim": 16,
                "tokenizer": "noop",
                "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"],
            },
        },
        "control": {
            "type": "lut",
            "lut": {"n_bins": 1, "dim": 64, "tokenizer": "noop", "possible_values": ["ok"]},
        },
    },
    "fuser": {
        "cross_attention_pos_emb": True,
        "cross_attention_pos_emb_scale": 1,
        "sum": ["control", "cfg"],
        "prepend": [],
        "cross": ["speaker_wavs"],
    },
}
TTS_TOKENIZER_FILE = "tokenizer_spm_8k_en_fr_audio.model"


QUANTIZATION = {8: 64, 4: 32}  # bits -> group size of Kyutai's q8 and q4 files


def save_random_lm(
    cfg: LmConfig, folder: str | Path, seed: int = 0, quantize_bits: int | None = None
) -> Path:
    """Write random weights for `cfg` in Kyutai's MLX layout (bf16, or q8 / q4) and return the
    file. One tensor is computed at a time, so even the 7B model never sits in full precision
    in memory; `config.json` is left to the caller.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    lm = Lm(cfg)  # lazy random weights: nothing is computed yet
    for head in lm.extra_heads:  # confident voice-activity heads: ends of turn do happen
        head.weight = head.weight * HEAD_SCALE
    name = "model.safetensors"
    if quantize_bits is not None:
        nn.quantize(lm, group_size=QUANTIZATION[quantize_bits], bits=quantize_bits)
        name = f"model.q{quantize_bits}.safetensors"
    tensors = {}
    for key, value in tree_flatten(lm.parameters()):
        value = value if value.dtype == mx.uint32 else value.astype(mx.bfloat16)
        mx.eval(value)  # this tensor only: its float32 source is freed right away
        tensors[key] = value
    mx.save_safetensors(str(folder / name), tensors)
    return folder / name


def make_tiny_checkpoint(
    folder: str | Path, seed: int = 0, quantize_bits: int | None = None, kind: str = "moshi"
) -> Path:
    """Write a tiny random Moshi (or STT) repo folder (Kyutai's layout) and return its path.

    Args:
        folder: where to write (created if needed).
        seed: seed of the random weights.
        quantize_bits: None for float weights (`model.safetensors`), 8 or 4 for Kyutai's
            `model.q8.safetensors` (group 64) / `model.q4.safetensors` (group 32).
        kind: "moshi" (`kyutai/moshiko-mlx-*`'s architecture), "stt"
            (`kyutai/stt-1b-en_fr-mlx`'s, with the voice-activity heads), "tts"
            (`kyutai/tts-1.6b-en_fr`'s, with two voices; `make_tiny_tts_checkpoint`),
            "personaplex" (16 depth steps; its voice presets are written by
            `scripts/make_tiny_checkpoint.py`), "hibiki" (conditioned, acoustic delay 2) or
            "hibiki-zero" (Kyutai's PyTorch layout; `tiny_hibiki_zero`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "tts":
        return make_tiny_tts_checkpoint(folder, seed, quantize_bits)
    if kind == "hibiki-zero":
        if quantize_bits is not None:
            raise ValueError(
                "the hibiki-zero kind is Kyutai's PyTorch bf16 layout: quantize it with "
                "`moshi-mlx-quantize FOLDER OUT --recipe q4`"
            )
        from .tiny_hibiki_zero import make_tiny_hibiki_zero

        return make_tiny_hibiki_zero(folder, seed)
    folder = Path(folder)
    lm = TINY_KINDS[kind]
    files = (
        STT_FILES if kind == "stt" else {"mimi_name": KYUTAI_FILE, "tokenizer_name": TOKENIZER_FILE}
    )
    moshi_name = save_random_lm(LmConfig.from_dict(lm), folder, seed, quantize_bits).name
    write_tiny_mimi_as(folder, files["mimi_name"], seed + 1)
    write_tiny_tokenizer(folder, files["tokenizer_name"])

    config = {
        **lm,
        "moshi_name": moshi_name,
        **files,
        "mimi_config_name": "mimi_config.json",
        **(
            STT_KEYS if kind == "stt" else {"model_type": "hibiki" if kind == "hibiki" else "moshi"}
        ),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def save_voice(path: str | Path, dim: int, seed: int, length: int = 125) -> Path:
    """A random voice embedding as `kyutai/tts-voices` files hold them: `speaker_wavs`
    (1, dim, length)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    mx.save_safetensors(str(path), {"speaker_wavs": mx.random.normal((1, dim, length))})
    return path


def make_tiny_tts_checkpoint(
    folder: str | Path, seed: int = 0, quantize_bits: int | None = None
) -> Path:
    """Write a tiny random TTS repo folder (Kyutai's `kyutai/tts-1.6b-en_fr` layout, the language
    model in Kyutai's MLX names) with two voices `voices/tiny` and `voices/tiny2`."""
    folder = Path(folder)
    cfg = LmConfig.from_dict(TINY_TTS_LM)
    written = save_random_lm(cfg, folder, seed, quantize_bits)
    moshi_name = f"dsm_tts_{TTS_SIG}@{TTS_EPOCH}.safetensors"
    if quantize_bits is not None:
        moshi_name = moshi_name.replace(".safetensors", f".q{quantize_bits}.safetensors")
    written.rename(folder / moshi_name)
    write_tiny_mimi(folder, seed + 1)
    write_tiny_tokenizer(folder, TTS_TOKENIZER_FILE)
    dim = TINY_TTS_LM["conditioners"]["speaker_wavs"]["tensor"]["dim"]
    for i, name in enumerate(("tiny", "tiny2")):
        save_voice(
            folder / "voices" / f"{name}.{TTS_SIG}@{TTS_EPOCH}.safetensors", dim, seed + 2 + i
        )
    config = {
        **TINY_TTS_LM,
        "moshi_name": moshi_name,
        "mimi_name": KYUTAI_FILE,
        "mimi_config_name": "mimi_config.json",
        "tokenizer_name": TTS_TOKENIZER_FILE,
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": {"sig": TTS_SIG, "epoch": TTS_EPOCH},
        "model_type": "tts",
        "lm_gen_config": {"temp": 0.6, "temp_text": 0.6},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def strip_vad_heads(stt: str | Path, folder: str | Path) -> Path:
    """A copy of an STT checkpoint folder as Kyutai's -mlx repos ship it: without the
    voice-activity heads (config keys and weights)."""
    import shutil

    stt, folder = Path(stt), Path(folder)
    shutil.copytree(stt, folder)
    config = json.loads((stt / "config.json").read_text())
    del config["extra_heads_num_heads"], config["extra_heads_dim"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    weights = mx.load(str(stt / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if not k.startswith("extra_heads.")}
    mx.save_safetensors(str(folder / "model.safetensors"), kept)
    return folder
