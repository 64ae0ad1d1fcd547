"""Reference Moshi language models (Kyutai's PyTorch `moshi`) with random weights that catch bugs.

Kyutai's initialisation leaves every norm at 1 and LayerScale at its init value; here norms are
perturbed and LayerScale drawn in U(0.2, 1), so a wrong norm, a missing scale or a swapped weight
set changes the outputs. The same weights are saved in the three layouts we load: Kyutai's
PyTorch release layout, Kyutai's MLX layout (bf16 or quantized, written from our model), and
transformers' hub layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# A tiny Moshi: 3 generated + 3 user codebooks, delays up to 2, a context shorter than the tests'
# sequences (the ring cache wraps), per-codebook depth-decoder weights.
TINY = {
    "dim": 64,
    "text_card": 50,
    "existing_text_padding_id": 3,
    "n_q": 6,
    "dep_q": 3,
    "card": 40,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 12,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 32,
    "depformer_dim_feedforward": 132,
    "depformer_num_heads": 2,
    "depformer_num_layers": 2,
    "depformer_causal": True,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 3,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 2, 0, 1, 2],
}

# Moshi's own architecture at tiny size (delays 0/1), the only one transformers can hold.
TINY_MOSHI = {**TINY, "card": 32, "delays": [0, 0, 1, 1, 0, 1, 1]}

# The other options: a weight-sharing schedule, low-rank embeddings, LayerNorm, plain MLP, GQA,
# sinusoidal positions, LayerScale, biases on the heads, a depth-decoder norm, and defaults
# (absent keys) for everything else.
VARIANT = {
    "dim": 48,
    "text_card": 30,
    "n_q": 8,
    "dep_q": 4,
    "card": 24,
    "num_heads": 4,
    "kv_repeat": 2,  # grouped keys and values (as Hibiki)
    "num_layers": 2,
    "hidden_scale": 2,
    "context": 10,
    "norm": "layer_norm",
    "gating": "none",
    "positional_embedding": "sin",
    "layer_scale": 0.1,
    "bias_proj": True,
    "depformer_dim": 32,
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
    "depformer_gating": "silu",
    "depformer_multi_linear": True,
    "depformer_weights_per_step": True,
    "depformer_weights_per_step_schedule": [0, 1, 1, 2],
    "depformer_low_rank_embeddings": 16,
    "depformer_norm": "layer_norm",  # Kyutai's RMSNorm here only takes 3D inputs
    "delays": [0, 0, 1, 1, 2, 0, 0, 1, 1],
}


# Kyutai's `LMModel` defaults for every absent key: one shared depth-decoder weight set and
# input projection, sinusoidal positions in both transformers, LayerNorm, plain GELU MLPs.
DEFAULTS = {
    "dim": 32,
    "num_heads": 4,
    "num_layers": 2,
    "n_q": 4,
    "dep_q": 2,
    "card": 20,
    "text_card": 25,
    "context": 8,
    "depformer_num_heads": 2,  # Kyutai's depth decoder has no default head count
    "delays": [0, 0, 1, 0, 1],
}

# A conditioned model (as Kyutai's moshi_dev_2b): a lookup-table "description" summed to the input.
CONDITIONED = {
    **TINY,
    "conditioners": {
        "description": {
            "type": "lut",
            "lut": {
                "n_bins": 5,
                "dim": 16,
                "tokenizer": "noop",
                "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"],
            },
        }
    },
    "fuser": {"sum": ["description"]},
}


# Kyutai's TTS architecture (`kyutai/tts-1.6b-en_fr`) at tiny size: every audio codebook generated
# (dep_q = n_q, no user stream), a demuxed second text stream, cross-attention over voice
# embeddings, lookup-table `cfg` and `control` conditions summed, low-rank depth-decoder
# embeddings with a weight schedule, LayerScale, and a context shorter than the tests' texts.
TTS_CONDITIONERS = {
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 24}},
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
TINY_TTS = {
    # (no `depformer_layer_scale`: the depth decoder inherits the LayerScale, in both)
    **{k: v for k, v in TINY.items() if k != "depformer_layer_scale"},
    "n_q": 6,
    "dep_q": 6,
    "card": 40,
    "text_card": 210,  # room for the tiny SentencePiece model's 200 pieces
    "context": 20,
    "layer_scale": 0.1,
    "delays": [0, 0, 2, 2, 2, 2, 2],
    "depformer_weights_per_step_schedule": [0, 1, 2, 3, 3, 3],
    "depformer_low_rank_embeddings": 16,
    "demux_second_stream": True,
    "cross_attention": True,
    **TTS_CONDITIONERS,
    "tts_config": {"audio_delay": 0.32, "second_stream_ahead": 2},
    "model_id": {"sig": "0000tiny", "epoch": 1},
    "model_type": "tts",
}


def tts_1_6b(num_layers: int = 2) -> dict:
    """Kyutai's `kyutai/tts-1.6b-en_fr` config (as published) with fewer temporal layers."""
    return {
        "card": 2048,
        "n_q": 32,
        "dep_q": 32,
        "delays": [0, 0] + [2] * 31,
        "dim": 2048,
        "text_card": 8000,
        "existing_text_padding_id": 3,
        "num_heads": 16,
        "num_layers": num_layers,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": 500,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 1024,
        "depformer_dim_feedforward": 3072,
        "depformer_num_heads": 16,
        "depformer_num_layers": 4,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 32,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
        "depformer_low_rank_embeddings": 128,
        "demux_second_stream": True,
        "text_card_out": None,
        "cross_attention": True,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
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
                "lut": {"n_bins": 1, "dim": 2048, "tokenizer": "noop", "possible_values": ["ok"]},
            },
        },
        "fuser": TTS_CONDITIONERS["fuser"],
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "model_id": {"sig": "1e68beda", "epoch": 240},
        "model_type": "tts",
        "lm_gen_config": {"temp": 0.6, "temp_text": 0.6},
    }


def random_voices(dim: int, count: int, seed: int, length: int = 10) -> list[np.ndarray]:
    """Voice embeddings as Kyutai's `kyutai/tts-voices` files hold them: (1, dim, length)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, dim, length)).astype(np.float32) for _ in range(count)]


def kyutai_voice_condition(voices: list[np.ndarray], max_speakers: int = 5):
    """Kyutai's `speaker_wavs` condition (their `TTSModel.make_condition_attributes`): the voices
    in `max_speakers` slots of (length, dim) each, the empty slots masked."""
    from moshi.conditioners import TensorCondition

    _, dim, length = voices[0].shape
    tensor = torch.zeros(1, max_speakers, length, dim)
    mask = torch.zeros(1, max_speakers, length, dtype=torch.bool)
    for i, v in enumerate(voices):
        tensor[:, i] = torch.from_numpy(v).transpose(1, 2)
        mask[:, i] = True
    return TensorCondition(tensor.view(1, -1, dim), mask.view(1, -1))


def kyutai_tts_conditions(model, voices: list[list[np.ndarray]], cfgs: list[str | None]):
    """Kyutai's condition tensors for one voice list and one `cfg` value per batch row."""
    from moshi.conditioners import ConditionAttributes

    attributes = [
        ConditionAttributes(
            text={"control": "ok", "cfg": c}, tensor={"speaker_wavs": kyutai_voice_condition(v)}
        )
        for v, c in zip(voices, cfgs, strict=True)
    ]
    return model.condition_provider.prepare_and_provide(attributes)


def kyutai_conditions(model, values: list[str | None]):
    """Kyutai's condition tensors for one "description" value per batch row."""
    from moshi.conditioners import ConditionAttributes

    attributes = [ConditionAttributes(text={"description": v}, tensor={}) for v in values]
    return model.condition_provider.prepare_and_provide(attributes)


def seven_b(num_layers: int = 2) -> dict:
    """Kyutai's 7B Moshiko config with fewer temporal-transformer layers (real widths)."""
    from moshi.models import loaders

    return {**loaders._lm_kwargs, "num_layers": num_layers}


@torch.no_grad()
def make_kyutai_lm(cfg: dict, seed: int, bf16_exact: bool = False):
    """Kyutai's `LMModel` in float32 with bug-catching random weights.

    Weights are drawn directly (their truncated-normal init is slow at 7B widths): N(0, 1/fan_in)
    for projections and embeddings, norms around 1, LayerScale in U(0.2, 1), small biases.
    With `bf16_exact`, every weight is a bfloat16 value, so a bf16 file holds them exactly.
    """
    import copy

    from moshi.models import loaders
    from moshi.models.lm import LMModel

    torch.manual_seed(seed)
    kwargs = copy.deepcopy(cfg)
    kwargs.pop("depformer_causal", None)  # deprecated, as Kyutai's loader drops it
    for key in ("tts_config", "model_id", "model_type", "lm_gen_config"):
        kwargs.pop(key, None)  # not the network's (Kyutai's loader reads them elsewhere)
    if "demux_second_stream" in kwargs:  # Kyutai's loader renames it
        kwargs["demux_second_text_stream"] = kwargs.pop("demux_second_stream")
    if "conditioners" in kwargs:  # as Kyutai's `get_moshi_lm`
        kwargs["condition_provider"] = loaders.get_conditioner_provider(
            kwargs["dim"], "cpu", kwargs
        )
        del kwargs["conditioners"]
    if kwargs.get("fuser") is not None:
        kwargs["fuser"] = loaders.get_condition_fuser(kwargs)
    model = LMModel(device="meta", dtype=torch.float32, **kwargs)
    model.to_empty(device="cpu")
    model.eval()
    for name, p in model.named_parameters():
        if name.endswith(("layer_scale_1.scale", "layer_scale_2.scale")):
            p.uniform_(0.2, 1.0)
        elif name.endswith(".alpha") or ("norm" in name and name.endswith(".weight")):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_((0.2 if "norm" in name else 0.1) * torch.randn_like(p))
        else:
            p.normal_(0.0, p.shape[-1] ** -0.5)
        if bf16_exact:
            p.copy_(p.bfloat16().float())
    return model


def kyutai_state(model) -> dict[str, torch.Tensor]:
    """Kyutai's released layout: per-step attention projections stacked into `in_proj_weight` and
    `out_proj.weight` (what their load hook splits again)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out = {}
    stacks: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for k, v in state.items():
        for attn, proj, released in (
            ("self_attn", "in_projs", "in_proj_weight"),
            ("self_attn", "out_projs", "out_proj.weight"),
            ("cross_attention", "in_projs", "in_proj_weight"),
            ("cross_attention", "out_projs", "out_proj.weight"),
        ):
            marker = f"{attn}.{proj}."
            if marker in k:
                prefix, rest = k.split(marker)
                i = int(rest.split(".")[0])
                stacks.setdefault(f"{prefix}{attn}.{released}", []).append((i, v))
                break
        else:
            out[k] = v
    for k, parts in stacks.items():
        out[k] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0).contiguous()
    return out


def save_pytorch(model, cfg: dict, folder: Path, dtype=torch.float32) -> Path:
    """Kyutai's PyTorch repo layout: `model.safetensors` + `config.json`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype) for k, v in kyutai_state(model).items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**cfg, "moshi_name": "model.safetensors"}))
    return folder / "model.safetensors"


def _permute_rope_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Kyutai's interleaved RoPE rows -> transformers' split-half rows (their converter's step)."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // num_heads
    return w.view(num_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_config(cfg: dict):
    """transformers' `MoshiConfig` for a Moshi-architecture Kyutai config (with a tiny Mimi)."""
    from transformers import MimiConfig, MoshiConfig

    mimi = MimiConfig(
        hidden_size=32,
        num_filters=4,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        codebook_size=cfg["card"],
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        upsample_groups=32,
        num_quantizers=8,
    )
    dep_ffn = 2 * (2 * cfg["depformer_dim_feedforward"] // 3)
    return MoshiConfig(
        vocab_size=cfg["text_card"],
        hidden_size=cfg["dim"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        num_key_value_heads=cfg["num_heads"],
        ffn_dim=2 * (2 * int(cfg["hidden_scale"] * cfg["dim"]) // 3),
        sliding_window=cfg["context"],
        max_position_embeddings=cfg["context"],
        num_codebooks=cfg["dep_q"],
        audio_vocab_size=cfg["card"],
        rms_norm_eps=1e-8,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg["max_period"])},
        audio_encoder_config=mimi.to_dict(),
        depth_decoder_config={
            "hidden_size": cfg["depformer_dim"],
            "num_hidden_layers": cfg["depformer_num_layers"],
            "num_attention_heads": cfg["depformer_num_heads"],
            "ffn_dim": dep_ffn,
            "sliding_window": cfg["dep_q"],
            "max_position_embeddings": cfg["dep_q"] + 1,
        },
    )


def hf_state(model, cfg: dict) -> dict[str, torch.Tensor]:
    """Kyutai's weights renamed and reshaped as transformers' converter does."""
    s = kyutai_state(model)
    n, heads = cfg["dep_q"], cfg["num_heads"]
    out = {
        "decoder.model.embed_tokens.weight": s["text_emb.weight"],
        "decoder.model.norm.weight": s["out_norm.alpha"].reshape(-1),
        "decoder.lm_head.weight": s["text_linear.weight"],
        "depth_decoder.text_embed_tokens.weight": s["depformer_text_emb.weight"],
        "depth_decoder.input_projections.weight": torch.stack(
            [s[f"depformer_in.{i}.weight"] for i in range(n)]
        ),
        "depth_decoder.lm_heads.weight": torch.stack([s[f"linears.{i}.weight"] for i in range(n)]),
    }
    for i in range(cfg["n_q"]):
        out[f"embed_tokens.{i}.weight"] = s[f"emb.{i}.weight"]
    for i in range(n - 1):
        out[f"depth_decoder.embed_tokens.{i}.weight"] = s[f"depformer_emb.{i}.weight"]
    for i in range(cfg["num_layers"]):
        src, dst = f"transformer.layers.{i}", f"decoder.model.layers.{i}"
        q, k, v = s[f"{src}.self_attn.in_proj_weight"].chunk(3, dim=0)
        out[f"{dst}.self_attn.q_proj.linear.weight"] = _permute_rope_rows(q, heads)
        out[f"{dst}.self_attn.k_proj.linear.weight"] = _permute_rope_rows(k, heads)
        out[f"{dst}.self_attn.v_proj.linear.weight"] = v
        out[f"{dst}.self_attn.o_proj.linear.weight"] = s[f"{src}.self_attn.out_proj.weight"]
        out[f"{dst}.input_layernorm.weight"] = s[f"{src}.norm1.alpha"].reshape(-1)
        out[f"{dst}.post_attention_layernorm.weight"] = s[f"{src}.norm2.alpha"].reshape(-1)
        out[f"{dst}.mlp.fc1.weight"] = s[f"{src}.gating.linear_in.weight"]
        out[f"{dst}.mlp.fc2.weight"] = s[f"{src}.gating.linear_out.weight"]
    for i in range(cfg["depformer_num_layers"]):
        src, dst = f"depformer.layers.{i}", f"depth_decoder.layers.{i}"
        qkv = s[f"{src}.self_attn.in_proj_weight"].view(n, 3, -1, cfg["depformer_dim"])
        for j, p in enumerate("qkv"):
            out[f"{dst}.self_attn.{p}_proj.linear.weight"] = qkv[:, j].contiguous()
        out[f"{dst}.self_attn.o_proj.linear.weight"] = s[f"{src}.self_attn.out_proj.weight"].view(
            n, cfg["depformer_dim"], -1
        )
        out[f"{dst}.input_layernorm.weight"] = s[f"{src}.norm1.alpha"].reshape(-1)
        out[f"{dst}.post_attention_layernorm.weight"] = s[f"{src}.norm2.alpha"].reshape(-1)
        for hf, ky in (("fc1", "linear_in"), ("fc2", "linear_out")):
            out[f"{dst}.mlp.{hf}.weight"] = torch.stack(
                [s[f"{src}.gating.{j}.{ky}.weight"] for j in range(n)]
            )
    return {k: v.contiguous() for k, v in out.items()}


def save_hf(model, cfg: dict, folder: Path) -> Path:
    """transformers' hub layout: `save_pretrained` of a `MoshiForConditionalGeneration` (with a
    random Mimi), its Moshi tensors then replaced by ours, name for name and shape for shape."""
    from safetensors.torch import load_file, save_file
    from transformers import MoshiForConditionalGeneration

    hf = MoshiForConditionalGeneration(hf_config(cfg)).eval()
    hf.save_pretrained(str(folder))  # the hub names (its Mimi is renamed on save)
    saved = load_file(str(folder / "model.safetensors"))
    state = hf_state(model, cfg)
    moshi = {k for k in saved if not k.startswith("audio_encoder.")}
    assert moshi == set(state), (sorted(moshi ^ set(state))[:5],)
    for k, v in state.items():
        assert tuple(saved[k].shape) == tuple(v.shape), (k, saved[k].shape, v.shape)
        saved[k] = v
    save_file(saved, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder / "model.safetensors"


def random_codes(cfg: dict, B: int, T: int, seed: int) -> np.ndarray:
    """(B, 1 + n_q, T) valid tokens: text in [0, text_card), audio in [0, card)."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, cfg["text_card"], size=(B, 1, T))
    audio = rng.integers(0, cfg["card"], size=(B, cfg["n_q"], T))
    return np.concatenate([text, audio], axis=1).astype(np.int64)


@torch.no_grad()
def kyutai_forward(model, codes: np.ndarray, condition_tensors=None):
    out = model(torch.from_numpy(codes), condition_tensors)
    return (
        out.text_logits.float().numpy(),
        out.text_mask.numpy(),
        out.logits.float().numpy(),
        out.mask.numpy(),
    )


@torch.no_grad()
def kyutai_generate(
    model, user: np.ndarray, steps: int, condition_tensors=None, cfg_coef: float = 1.0
) -> tuple[np.ndarray, list]:
    """Greedy `LMGen` with our user-stream alignment: the first frame is fed twice.

    Args:
        user: (B, n_user, steps) user codes, frame k given to our generator at step k.

    Returns:
        text (B, steps) as sampled at each step, and the audio frames (B, dep_q) per step
        (None while `LMGen` returns nothing).
    """
    from moshi.models.lm import LMGen

    texts: list[np.ndarray] = []
    gen = LMGen(
        model,
        use_sampling=False,
        temp=0.0,
        temp_text=0.0,
        on_text_hook=lambda t: texts.append(t.numpy().copy()),
        condition_tensors=condition_tensors,
        cfg_coef=cfg_coef,
    )
    B = user.shape[0]
    dep_q = model.dep_q
    frames = []
    with gen.streaming(B):
        for s in range(steps):
            frame = user[:, :, max(s - 1, 0)]  # u0, u0, u1, ...: frame k consumed at step k + 1
            out = gen.step(torch.from_numpy(frame[:, :, None]))
            frames.append(None if out is None else out[:, 1 : 1 + dep_q, 0].numpy())
    return np.stack(texts, axis=1), frames


TTS_TOKENIZER = "tokenizer_spm_8k_en_fr_audio.model"


def save_tts_folder(model, cfg: dict, folder: Path) -> Path:
    """Kyutai's TTS repo layout around a reference LM: its weights (PyTorch names), a tiny Mimi,
    a tiny SentencePiece model and two voices `voices/v0`, `voices/v1` (as `kyutai/tts-voices`)."""
    import mlx.core as mx

    from mimi_mlx.constants import KYUTAI_FILE
    from moshi_mlx.testing.tiny_parts import write_tiny_mimi, write_tiny_tokenizer

    save_pytorch(model, cfg, folder)
    write_tiny_mimi(folder, seed=3)
    write_tiny_tokenizer(folder, TTS_TOKENIZER)
    config = json.loads((folder / "config.json").read_text())
    config.update(mimi_name=KYUTAI_FILE, mimi_config_name="mimi_config.json")
    config.update(tokenizer_name=TTS_TOKENIZER)
    (folder / "config.json").write_text(json.dumps(config))
    dim = cfg["conditioners"]["speaker_wavs"]["tensor"]["dim"]
    sig = cfg["model_id"]
    for i, v in enumerate(random_voices(dim, 2, seed=9)):
        path = folder / "voices" / f"v{i}.{sig['sig']}@{sig['epoch']}.safetensors"
        path.parent.mkdir(exist_ok=True)
        mx.save_safetensors(str(path), {"speaker_wavs": mx.array(v)})
    return folder
