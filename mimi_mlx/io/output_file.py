"""Output files that are checked before any work starts and appear only when complete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import
    os.umask(mask)
    return mask


UMASK = _umask()


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


def disk_full(path: str | Path) -> bool:
    """True when the file system holding `path` (or its folder) has less than 1 MiB free."""
    path = Path(path)
    for where in (path, path.parent):
        try:
            st = os.statvfs(where)
        except (OSError, AttributeError):
            continue
        return st.f_bavail * st.f_frsize < 2**20
    return False


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists (a partial output it owns may still be growing)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale(folder: Path, prefix: str, suffix: str = "") -> None:
    """Delete `prefix<pid>[-...]suffix` leftovers in `folder` whose process is gone (a run killed
    before it could clean up); those of live processes are left alone."""
    import shutil

    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix) : len(name) - len(suffix)].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextmanager
def replace_on_success(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds.

    An interrupted or failed write never leaves a partial file, nor clobbers an existing one;
    partial files of earlier runs that were killed are removed. The file gets the mode a newly
    created file would (the umask's), not the temporary file's.
    """
    path = Path(path)
    remove_stale(path.parent, f".{path.name}.", ".partial")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` name one existing file, through a symlink, `..`, another spelling
    (a case-insensitive file system) or a hard link."""
    try:
        return os.path.samefile(Path(a).expanduser(), Path(b).expanduser())
    except OSError:  # one of them does not exist: writing it cannot clobber the other
        return False


def overwritten_input(
    outputs: list[str | Path], inputs: list[str | Path | None]
) -> tuple[Path, Path] | None:
    """The first (output, input) pair that names one file, else None."""
    for out in outputs:
        for inp in inputs:
            if inp is not None and same_file(out, inp):
                return Path(out), Path(inp)
    return None
