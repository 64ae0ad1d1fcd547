"""Bounded-memory output: a safetensors file written tensor by tensor, and an output folder that
appears under its name only once complete.

`mx.save_safetensors` needs every tensor in memory at once (7.7 GB for Moshi's 7B in 8 bits). The
safetensors format is a JSON header of names, dtypes, shapes and byte offsets, then the raw bytes:
with the shapes known in advance (MLX computes them without evaluating anything), the header is
written first and each tensor's bytes follow as soon as it is computed, then freed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx

from mimi_mlx.io.output_file import OutputError, remove_stale

# MLX dtype -> (safetensors dtype name, a same-width dtype whose buffer Python can export)
DTYPES: dict[mx.Dtype, tuple[str, mx.Dtype]] = {
    mx.bfloat16: ("BF16", mx.uint16),
    mx.float16: ("F16", mx.float16),
    mx.float32: ("F32", mx.float32),
    mx.uint32: ("U32", mx.uint32),
    mx.int32: ("I32", mx.int32),
    mx.uint8: ("U8", mx.uint8),
}

Spec = tuple[str, mx.Dtype, tuple[int, ...]]  # name, dtype, shape


class SafetensorsWriter:
    """Write a safetensors file whose tensors are known by name, dtype and shape in advance.

    Args:
        path: the file to write.
        specs: every tensor, in the order `write` will be called.
        metadata: string entries for the header's `__metadata__` (MLX writes `format: mlx`).
    """

    def __init__(self, path: str | Path, specs: list[Spec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        header: dict = {"__metadata__": dict(metadata or {"format": "mlx"})}
        offset = 0
        for name, dtype, shape in specs:
            nbytes = dtype.size * math.prod(shape)
            header[name] = {
                "dtype": DTYPES[dtype][0],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writers do
        self._specs = list(specs)
        self._next = 0
        self.data_bytes = offset
        self.nbytes = 8 + len(raw) + offset
        self._file = open(self.path, "wb")  # closed by close() or abort()
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)

    def write(self, name: str, array: mx.array) -> int:
        """Write the next tensor (it must match the next spec); returns its size in bytes."""
        expected = self._specs[self._next]
        got = (name, array.dtype, tuple(array.shape))
        if got != expected:
            raise ValueError(f"tensor {got} written where {expected} was announced")
        buffer = mx.contiguous(array).view(DTYPES[array.dtype][1])
        mx.eval(buffer)
        view = memoryview(buffer)
        self._file.write(view)
        self._next += 1
        return view.nbytes

    def close(self) -> None:
        """Flush to disk. Raises if some announced tensor was never written."""
        if self._next != len(self._specs):
            self._file.close()
            raise ValueError(f"{self.path}: {len(self._specs) - self._next} tensors not written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def looks_like_checkpoint(folder: Path) -> bool:
    """A folder `--force` may replace: one holding a config.json or safetensors files."""
    return (folder / "config.json").is_file() or any(folder.glob("*.safetensors"))


def check_output_folder(output: Path, force: bool, protected: list[Path] = ()) -> None:
    """Refuse an output folder that exists (unless `force`), is a file, or would delete
    `protected` (`mimi_mlx.io.output_file.check_output` checks an output file).

    Raises:
        OutputError: with the reason.
    """
    resolved = output.resolve()
    for p in protected:
        p = Path(p).resolve()
        if resolved == p or resolved in p.parents:
            raise OutputError(f"the output {output} would overwrite the source {p}")
    if not output.exists():
        return
    if not output.is_dir():
        raise OutputError(f"{output} exists and is not a folder")
    if not any(output.iterdir()):
        return
    if not force:
        raise OutputError(f"{output} already exists; pass --force to replace it")
    if not looks_like_checkpoint(output):
        raise OutputError(
            f"{output} is not a checkpoint folder (no config.json, no .safetensors): "
            "not replacing it, even with --force"
        )


@contextmanager
def staged_output(output: str | Path, force: bool = False) -> Iterator[Path]:
    """A temporary sibling folder to write into, renamed to `output` when the block succeeds.

    On any error (or Ctrl-C) the temporary folder and any parent folders created for it are
    removed: `output` is either absent, as it was before, or complete. With `force`, an existing
    `output` is replaced only once the new one is complete.
    """
    output = Path(output)
    check_output_folder(output, force)
    created = [p for p in [output.parent, *output.parent.parents] if not p.exists()]
    # `.OUT.incomplete-<pid>-<random>`: what a killed run left is removed by the next one
    remove_stale(output.parent, f".{output.name}.incomplete-")
    remove_stale(output.parent, f".{output.name}.old-")
    stage = output.parent / f".{output.name}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
    except OSError as e:
        _remove_empty(created)
        raise OutputError(f"cannot create {output}: {e.strerror or e}") from e
    try:
        yield stage
        _replace(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        raise


def _replace(stage: Path, output: Path) -> None:
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        output.rename(old)
    try:
        stage.rename(output)
    except OSError:
        if old is not None:
            old.rename(output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass
