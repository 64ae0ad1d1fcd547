"""A local Hugging Face cache in huggingface_hub's exact layout, so hub repo ids resolve with the
network off: `models--ORG--NAME/blobs/<sha256>`, `snapshots/<commit>/<file>` as relative symlinks
to the blobs, `refs/main` holding the commit, and `.no_exist/<commit>/<file>` markers for files
an earlier online run found missing (what `hf_hub_download` writes after a 404)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_repo(
    cache: Path,
    repo_id: str,
    files: dict[str, Path],
    missing: tuple[str, ...] = (),
    commit: str = COMMIT,
) -> Path:
    """Put `files` (name in the repo -> local file) into `cache` as `repo_id`; returns its
    snapshot folder."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for name in missing:
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def hub_env(cache: Path, offline: bool = True) -> dict[str, str]:
    """Environment for a subprocess that uses `cache`: offline, or online with an unreachable hub
    (a closed local port: it fails at once, and nothing reaches the real hub)."""
    env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(Path(cache).parent / "hf-home")}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_HUB_OFFLINE"] = "0"
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return env
