"""Reference Mimi models (Kyutai's `moshi`, transformers) with random weights that catch bugs.

The references' own initialisation leaves LayerScale at 0.01 and every codebook at zero, so a broken
transformer or quantizer would still "match". Here LayerScale is drawn in U(0.2, 1), norms are
perturbed, and each codebook gets well-separated centroids at the scale of the residuals it sees.
The same weights are saved in Kyutai's released layout and in transformers' hub layout.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from mimi_mlx.constants import KYUTAI_FILE
from mimi_mlx.weights import name_table

TINY = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": 32,
        "causal": True,
        "n_filters": 4,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {
        "dimension": 16,
        "n_q": 32,
        "bins": 64,
        "input_dimension": 32,
        "output_dimension": 32,
    },
    "transformer": {
        "d_model": 32,
        "num_heads": 4,
        "num_layers": 2,
        "causal": True,
        "layer_scale": 0.01,
        "context": 6,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 64,
        "input_dimension": 32,
        "output_dimensions": [32],
    },
}


def full_config() -> dict:
    from moshi.models import loaders

    return loaders._mimi_config


def hf_config(cfg: dict):
    from transformers import MimiConfig

    s, q, t = cfg["seanet"], cfg["quantizer"], cfg["transformer"]
    return MimiConfig(
        sampling_rate=cfg["sample_rate"],
        frame_rate=cfg["frame_rate"],
        audio_channels=1,
        hidden_size=s["dimension"],
        num_filters=s["n_filters"],
        num_residual_layers=s["n_residual_layers"],
        upsampling_ratios=list(s["ratios"]),
        kernel_size=s["kernel_size"],
        last_kernel_size=s["last_kernel_size"],
        residual_kernel_size=s["residual_kernel_size"],
        dilation_growth_rate=s["dilation_base"],
        compress=s["compress"],
        num_attention_heads=t["num_heads"],
        num_key_value_heads=t["num_heads"],
        head_dim=t["d_model"] // t["num_heads"],
        num_hidden_layers=t["num_layers"],
        intermediate_size=t["dim_feedforward"],
        sliding_window=t["context"],
        codebook_size=q["bins"],
        codebook_dim=q["dimension"],
        vector_quantization_hidden_dimension=q["dimension"],
        num_quantizers=q["n_q"],
        upsample_groups=s["dimension"],
    )


def speech(seconds: float, path: Path, text: str | None = None) -> np.ndarray:
    """Deterministic speech from espeak-ng at 24 kHz, trimmed or padded to `seconds`."""
    text = text or (
        "Mimi is a neural audio codec. It turns speech into a few tokens per frame, "
        "and back into speech. The quick brown fox jumps over the lazy dog."
    )
    raw = path.with_suffix(".22k.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    audio, rate = sf.read(raw, dtype="float32")
    audio = soxr.resample(audio, rate, 24000).astype(np.float32)
    n = int(seconds * 24000)
    audio = np.pad(audio, (0, max(0, n - len(audio))))[:n]
    sf.write(path, audio, 24000)
    return audio


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 24000))).astype(np.float32)


@torch.no_grad()
def make_kyutai_mimi(cfg: dict, seed: int, calibration: np.ndarray):
    """Kyutai's MimiModel with bug-catching random weights (see the module docstring)."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    model = loaders.get_mimi(None, cfg, num_codebooks=cfg["quantizer"]["n_q"])
    model.eval()
    for name, p in model.named_parameters():
        if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
            p.uniform_(0.2, 1.0)
        elif ".norm" in name and name.endswith(".weight"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif ".norm" in name and name.endswith(".bias"):
            p.copy_(0.2 * torch.randn_like(p))
    # Codebooks: centroids around the residuals each codebook actually sees.
    x = torch.from_numpy(calibration)[None, None]
    emb = model._encode_to_unquantized_latent(x)  # (1, D, T)
    gen = torch.Generator().manual_seed(seed + 1)
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        residual = rvq.input_proj(emb).transpose(1, 2).reshape(-1, rvq.dimension)
        for layer in rvq.vq.layers:
            book = layer._codebook
            mean, std = residual.mean(0), residual.std(0)
            bins = book.embedding_sum.shape[0]
            centroids = mean + 0.5 * std * torch.randn(bins, rvq.dimension, generator=gen)
            usage = 0.5 + torch.rand(bins, generator=gen)
            book.cluster_usage.copy_(usage)
            book.embedding_sum.copy_(centroids * usage[:, None])
            book._initialized.fill_(1.0)
            book._embedding = None  # drop any cached centroids
            codes = layer.encode(residual.T[None])  # (1, T)
            residual = residual - layer.decode(codes)[0].T
    return model


def kyutai_state(model) -> dict[str, torch.Tensor]:
    """The released-file layout: `in_proj_weight` / `out_proj.weight`, contiguous tensors."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight")
        k = k.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
        out[k] = v.detach().contiguous().clone()
    return out


def save_kyutai(model, cfg: dict, folder: Path, with_config: bool) -> Path:
    """Kyutai's files: the tokenizer checkpoint, and for a non-default config a repo config."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KYUTAI_FILE
    save_file(kyutai_state(model), str(path))
    if with_config:
        (folder / "mimi_config.json").write_text(json.dumps(cfg))
        (folder / "config.json").write_text(
            json.dumps({"mimi_name": KYUTAI_FILE, "mimi_config_name": "mimi_config.json"})
        )
    return path


def _permute_rope_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Kyutai's interleaved RoPE rows -> transformers' split-half rows (their converter's step)."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // num_heads
    w = w.view(num_heads, head_dim // 2, 2, in_dim).transpose(1, 2)
    return w.reshape(out_dim, in_dim)


def make_hf_mimi(kyutai_model, cfg: dict, folder: Path):
    """transformers' MimiModel holding the same weights, saved with `save_pretrained`."""
    from transformers import MimiModel

    from mimi_mlx.config import MimiConfig as OurConfig

    ours = OurConfig.from_dict(cfg)
    state = kyutai_state(kyutai_model)
    hf_rows = {r[0]: r[1] for r in name_table(ours, "hf")}
    hf_state = {}
    heads = cfg["transformer"]["num_heads"]
    for our_name, sources, _ in name_table(ours, "kyutai"):
        targets = hf_rows[our_name]
        tensors = [state[s] for s in sources]
        if len(targets) == 3:  # fused qkv -> q, k, v
            q, k, v = tensors[0].chunk(3, dim=0)
            tensors = [_permute_rope_rows(q, heads), _permute_rope_rows(k, heads), v]
        for t, x in zip(targets, tensors, strict=True):
            hf_state[t] = x.clone()
    for k in state:
        if k.endswith("_codebook._initialized"):
            hf_state[k.replace("_codebook._initialized", "codebook.initialized")] = state[k]
    hf_state = {
        k.replace(
            "quantizer.rvq_first.vq.", "quantizer.semantic_residual_vector_quantizer."
        ).replace("quantizer.rvq_rest.vq.", "quantizer.acoustic_residual_vector_quantizer."): v
        for k, v in hf_state.items()
    }
    model = MimiModel(hf_config(cfg))
    model.eval()
    model.save_pretrained(str(folder))  # the hub layout names, then overwrite with our weights
    from safetensors.torch import load_file, save_file

    saved = load_file(str(folder / "model.safetensors"))
    missing = set(saved) - set(hf_state)
    extra = set(hf_state) - set(saved)
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    save_file(hf_state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return MimiModel.from_pretrained(str(folder)).eval()
