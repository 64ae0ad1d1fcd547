"""PersonaPlex's voice presets: NVIDIA's PyTorch `.pt` files -> safetensors, once.

NVIDIA's `voices.tgz` (in `nvidia/personaplex-7b-v1`) holds `voices/NAME.pt`, each a dict written
by their `LMGen._step_voice_prompt_core`: `embeddings` (V, 1, 1, 4096), the input embeddings of
the voice prompt's steps, and `cache` (1, 17, 4), the token ring it left. The tensors are copied
as they are (float32 and int32) into `NAME.safetensors`, which `moshi-mlx --voice-prompt NAME`
reads without PyTorch. PyTorch is needed here only.

This is a conversion, not quantization: it lives in `quantize`, the package of one-time checkpoint
conversions run before use (`moshi-mlx-quantize convert` rewrites a language model's layout too),
so that `moshi_mlx`, which runs the models, never needs PyTorch.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

VOICES_ARCHIVE = "voices.tgz"
# PyTorch's CPU build (the default index's Linux wheel pulls gigabytes of CUDA libraries)
TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def _read_pt(data: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"converting PersonaPlex's .pt voice presets needs PyTorch once: `{TORCH_INSTALL}`"
        ) from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        embeddings = state["embeddings"].float().numpy()
        cache = state["cache"].numpy().astype(np.int32)
    except Exception as e:
        raise ValueError(
            f"{name} is not a PersonaPlex voice preset ({' '.join(str(e).split())})"
        ) from None
    if embeddings.ndim != 4 or cache.ndim != 3:
        raise ValueError(
            f"{name}: expected embeddings (V, 1, 1, dim) and cache (1, 17, n), got "
            f"{embeddings.shape} and {cache.shape}"
        )
    return {"embeddings": embeddings, "cache": cache}


def _sources(src: Path) -> list[tuple[str, bytes]]:
    """(name, .pt bytes) of a voices.tgz archive, a folder of .pt files, or one .pt file."""
    if src.is_dir():
        return [(p.stem, p.read_bytes()) for p in sorted(src.glob("*.pt"))]
    if src.suffix == ".pt":
        return [(src.stem, src.read_bytes())]
    try:
        with tarfile.open(src) as tar:
            return [
                (Path(m.name).stem, tar.extractfile(m).read())
                for m in tar.getmembers()
                if m.isfile() and m.name.endswith(".pt") and not Path(m.name).name.startswith(".")
            ]
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"cannot read {src} as a voices archive ({e})") from None


def convert_voices(src: str | Path, output: str | Path, force: bool = False) -> list[Path]:
    """Convert NVIDIA's voice presets to `output/NAME.safetensors`; returns the files written.

    Args:
        src: `voices.tgz`, a folder of `.pt` files, or one `.pt` file.
        output: folder (created); existing presets are kept unless `force`.
    """
    from safetensors.numpy import save_file

    src, output = Path(src), Path(output)
    if not src.exists():
        raise ValueError(f"no such file or folder: {src}")
    voices = _sources(src)
    if not voices:
        raise ValueError(f"{src} holds no .pt voice presets")
    converted = [(name, _read_pt(data, name)) for name, data in voices]  # all checked first
    targets = [output / f"{name}.safetensors" for name, _ in converted]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ValueError(f"{existing[0]} exists (pass --force to replace the presets)")
    output.mkdir(parents=True, exist_ok=True)
    for (_, tensors), target in zip(converted, targets, strict=True):
        tmp = target.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": "personaplex-voice"})
        tmp.replace(target)
    return targets
