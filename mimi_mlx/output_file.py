"""Output files that are checked before any work starts and appear only when complete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot or must not be written. The message says why."""


def check_output(path: str | Path, force: bool = False) -> Path:
    """Fail early when `path` cannot be written, or exists and `force` is not set.

    Raises:
        OutputError: the file exists (without `force`), is a folder, or its folder is missing or
            not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output is a folder: {path}")
    if path.exists() and not force:
        raise OutputError(f"output exists: {path} (use --force to overwrite it)")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable")
    return path


@contextmanager
def replace_on_success(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds.

    An interrupted or failed write never leaves a partial file, nor clobbers an existing one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
