"""What quantization gave up: the quantized models' teacher-forced logits against the float
model's, and each quantized layer's weight error.

For a set of inputs (random codes, or the Mimi codes of an audio file), every model runs Kyutai's
teacher-forced `forward`; per stream (the text, then each generated audio codebook) the report
gives the KL divergence KL(float || quantized) of the next-token distributions, averaged over the
valid positions, and the top-1 agreement (how often both models rank the same token first).
The float model runs first, alone; then each quantized model, alone: one model in memory at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from mimi_mlx.io.hub import recorded_name
from moshi_mlx.model.checkpoint import load_model, resolve
from moshi_mlx.model.config import LmConfig
from moshi_mlx.system.memory import format_bytes

from .recipes import PARTS, part_of
from .source import SourceCheckpoint


@dataclass
class StreamStats:
    """One stream's agreement: mean KL(float || quantized) in nats, top-1 agreement in [0, 1]."""

    kl: float
    top1: float
    positions: int


@dataclass
class RecipeResult:
    """One quantized checkpoint against the float model."""

    name: str  # the recipe (from its config.json), else the folder name
    checkpoint: str
    nbytes: int  # size of its weights file
    streams: dict[str, StreamStats]  # "text", "audio 0", ...
    weight_errors: dict[str, float] = field(default_factory=dict)  # path -> relative L2 error

    def mean_audio(self) -> StreamStats | None:
        """The audio streams' mean (None for a text-only model, such as Kyutai's STT)."""
        audio = [s for k, s in self.streams.items() if k.startswith("audio")]
        if not audio:
            return None
        return StreamStats(
            float(np.mean([s.kl for s in audio])),
            float(np.mean([s.top1 for s in audio])),
            sum(s.positions for s in audio),
        )

    def part_errors(self) -> dict[str, tuple[float, float]]:
        """Recipe part -> (mean, max) relative weight error of its quantized layers."""
        by_part: dict[str, list[float]] = {}
        for path, err in self.weight_errors.items():
            by_part.setdefault(part_of(path) or "other", []).append(err)
        order = [*PARTS, "other"]
        return {
            p: (float(np.mean(by_part[p])), float(np.max(by_part[p])))
            for p in order
            if p in by_part
        }


@dataclass
class Report:
    """The accuracy report of one or more quantized checkpoints of the same float model."""

    source: str
    inputs: str  # how the codes were made
    shape: tuple[int, int, int]  # (batch, streams, steps)
    results: list[RecipeResult]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "inputs": self.inputs,
            "shape": list(self.shape),
            "results": [
                {
                    **asdict(r),
                    "mean_audio": asdict(r.mean_audio()) if r.mean_audio() else None,
                    "part_errors": r.part_errors(),
                }
                for r in self.results
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the report as JSON (atomically: a temp file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    def table(self) -> str:
        """The logits table (streams x recipes) and the weight-error table (parts x recipes)."""
        col = max(19, *(len(r.name) + 2 for r in self.results))
        lines = [
            f"{self.inputs}; codes (batch, streams, steps) = {self.shape}",
            f"{'':20}" + "".join(f"{r.name:>{col}}" for r in self.results),
            f"{'stream':20}" + f"{'KL':>{col - 9}}{'top-1':>9}" * len(self.results),
        ]

        def row(label: str, stats: list[StreamStats]) -> str:
            cells = "".join(f"{s.kl:>{col - 9}.2e}{100 * s.top1:>8.1f}%" for s in stats)
            return f"{label:20}{cells}"

        for stream in self.results[0].streams:
            lines.append(row(stream, [r.streams[stream] for r in self.results]))
        if self.results[0].mean_audio() is not None:
            lines.append(row("audio mean", [r.mean_audio() for r in self.results]))
        lines.append(
            f"{'size':20}" + "".join(f"{format_bytes(r.nbytes):>{col}}" for r in self.results)
        )
        lines += ["", "relative weight error, mean / max over the part's layers"]
        parts = [p for p in [*PARTS, "other"] if any(p in r.part_errors() for r in self.results)]
        for p in parts:
            cells = []
            for r in self.results:
                e = r.part_errors().get(p)
                cells.append(f"{e[0]:.4f} / {e[1]:.4f}" if e else "float")
            lines.append(f"{p:20}" + "".join(f"{c:>{col}}" for c in cells))
        return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------------
def random_codes(cfg: LmConfig, batch: int = 2, steps: int = 32, seed: int = 0) -> mx.array:
    """(batch, 1 + n_q, steps) valid tokens: text in [0, text_card), audio in [0, card)."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, cfg.text_card, size=(batch, 1, steps))
    audio = rng.integers(0, cfg.card, size=(batch, cfg.n_q, steps))
    return mx.array(np.concatenate([text, audio], axis=1).astype(np.int32))


def audio_codes(path: str | Path, mimi, cfg: LmConfig, steps: int | None = None) -> mx.array:
    """(1, 1 + n_q, T) codes of an audio file through Mimi: its first codebooks fill both the
    model's and the user's audio streams; the text stream holds the padding token."""
    from mimi_mlx.io.audio import read_audio

    audio = read_audio(path, mimi.sample_rate)
    if steps is not None:
        audio = audio[: steps * mimi.frame_size]
    n = max(cfg.dep_q, cfg.num_user_codebooks)
    if mimi.cardinality > cfg.card or n > mimi.num_codebooks:
        raise ValueError(
            f"this Mimi ({mimi.num_codebooks} codebooks of {mimi.cardinality}) does not fit the "
            f"model ({n} codebooks of {cfg.card})"
        )
    codes = mimi.encode(mx.array(audio)[None, None], num_quantizers=n)  # (1, n, T)
    user = codes[:, : cfg.num_user_codebooks]
    text = mx.full((1, 1, codes.shape[-1]), cfg.existing_text_padding_id, dtype=mx.int32)
    return mx.concatenate([text, codes[:, : cfg.dep_q], user], axis=1).astype(mx.int32)


def default_conditions(cfg: LmConfig, seed: int = 0) -> dict | None:
    """Conditions for a conditioned model's forward (None for Moshi): each lookup table's first
    value, and a random sequence (10 steps) for each tensor condition (the TTS's voice)."""
    if not cfg.conditioners:
        return None
    rng = np.random.default_rng(seed)
    conditions: dict = {}
    for name, spec in cfg.conditioners.items():
        if spec.get("type") == "tensor":
            dim = spec["tensor"]["dim"]
            conditions[name] = (
                rng.standard_normal((10, dim)).astype(np.float32),
                np.ones(10, bool),
            )
        else:
            values = (spec.get("lut") or {}).get("possible_values") or ["0"]
            conditions[name] = values[0]
    return conditions


# -- measures ----------------------------------------------------------------------------------
def _log_softmax(logits: mx.array) -> mx.array:
    x = logits.astype(mx.float32)
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def log_probs(model, codes: mx.array, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stream (text, audio 0, ...): log-probabilities (N, V) at the valid positions, and
    the valid positions' mask (B, T). Conditioned models get `default_conditions`."""
    texts, audios, tmasks, amasks = [], [], [], []
    conditions = default_conditions(model.cfg)
    for i in range(0, codes.shape[0], batch):
        out = model.forward(codes[i : i + batch], conditions)
        texts.append(_log_softmax(out.text_logits))
        # (a model without a depth decoder, as Kyutai's STT, has no audio logits)
        audios.append(_log_softmax(out.logits) if out.logits.shape[1] else out.logits)
        tmasks.append(out.text_mask)
        amasks.append(out.mask)
        mx.eval(texts[-1], audios[-1], tmasks[-1], amasks[-1])
    text, audio = mx.concatenate(texts), mx.concatenate(audios)
    tmask, amask = mx.concatenate(tmasks), mx.concatenate(amasks)
    streams = [(np.array(text[:, 0]), np.array(tmask[:, 0]))]
    streams += [(np.array(audio[:, k]), np.array(amask[:, k])) for k in range(audio.shape[1])]
    return streams


def compare(
    ref: list[tuple[np.ndarray, np.ndarray]], out: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, StreamStats]:
    """KL(ref || out) and top-1 agreement per stream, over the reference's valid positions."""
    stats = {}
    for k, ((lp, mask), (lq, _)) in enumerate(zip(ref, out, strict=True)):
        p, q = lp[mask], lq[mask]  # (N, V)
        kl = np.sum(np.exp(p) * (p - q), axis=-1)
        agree = np.argmax(p, axis=-1) == np.argmax(q, axis=-1)
        name = "text" if k == 0 else f"audio {k - 1}"
        stats[name] = StreamStats(float(np.mean(kl)), float(np.mean(agree)), int(mask.sum()))
    return stats


def weight_errors(source: str | Path | SourceCheckpoint, quantized: str | Path) -> dict[str, float]:
    """Relative L2 error ||W - dequantize(Q)|| / ||W|| of every quantized layer, read one layer at
    a time (bits and group size found from the shapes)."""
    src = source if isinstance(source, SourceCheckpoint) else SourceCheckpoint(source)
    (path,) = resolve(quantized).weights
    errors = {}
    packed = [n[: -len(".scales")] for n in mx.load(str(path)) if n.endswith(".scales")]
    for module in packed:
        q = mx.load(str(path))
        w = src.param(f"{module}.weight").astype(mx.float32)
        scales, packed_w = q[f"{module}.scales"], q[f"{module}.weight"]
        width = w.shape[-1]
        bits = 32 * packed_w.shape[-1] // width
        group_size = width // scales.shape[-1]
        deq = mx.dequantize(packed_w, scales, q[f"{module}.biases"], group_size, bits)
        err = mx.linalg.norm(w - deq.astype(mx.float32)) / mx.linalg.norm(w)
        errors[module] = float(err.item())
        del q, w, deq
        src.release()
    return errors


def accuracy_report(
    source: str | Path,
    quantized: list[str | Path],
    codes: mx.array | None = None,
    *,
    steps: int = 32,
    batch: int = 2,
    seed: int = 0,
    audio: str | Path | None = None,
    dtype: mx.Dtype | None = None,
    names: list[str] | None = None,
    inputs: str | None = None,
    lora: str | Path | None = None,
    lora_scaling: float | None = None,
) -> Report:
    """Compare quantized checkpoints with the float checkpoint they came from.

    Args:
        source: the float checkpoint (any layout `moshi_mlx.load_model` reads).
        quantized: quantized checkpoint folders (or files).
        codes: (B, 1 + n_q, T) input codes; default: `audio`'s codes if given, else `batch`
            sequences of `steps` random codes drawn with `seed`.
        steps, batch, seed: for the default inputs.
        audio: an audio file, encoded with the Mimi of the first quantized checkpoint.
        dtype: compute dtype (default: the backend's, float32 on CPU).
        names: labels of the quantized checkpoints (default: their recipe).
        inputs: a description of `codes` for the report.
        lora, lora_scaling: the adapter fused into `source` (a fine-tune quantized with
            `--lora`): the reference is the fused float model.

    Returns:
        The report (`.table()` to print, `.save(path)` for JSON).
    """
    src = SourceCheckpoint(source, lora=lora, lora_scaling=lora_scaling)
    cfg = src.config
    if codes is None and audio is not None:
        from mimi_mlx import load_mimi

        codes = audio_codes(audio, load_mimi(quantized[0]), cfg, steps)
        inputs = f"Mimi codes of {recorded_name(audio)}, text padding"
    elif codes is None:
        codes = random_codes(cfg, batch, steps, seed)
        inputs = f"random codes (seed {seed})"
    float_model = load_model(source, dtype=dtype, lora=lora, lora_scaling=lora_scaling)
    ref = log_probs(float_model, codes, batch)
    del float_model
    mx.clear_cache()
    results = []
    for i, q in enumerate(quantized):
        model = load_model(q, dtype=dtype)
        out = log_probs(model, codes, batch)
        del model
        mx.clear_cache()
        files = resolve(q)
        recipe = ((files.config or {}).get("quantization") or {}).get("recipe", Path(q).name)
        results.append(
            RecipeResult(
                name=names[i] if names else recipe,
                checkpoint=str(q),
                nbytes=sum(Path(p).stat().st_size for p in files.weights),
                streams=compare(ref, out),
                weight_errors=weight_errors(src, q),
            )
        )
    return Report(recorded_name(source), inputs or "given codes", tuple(codes.shape), results)
