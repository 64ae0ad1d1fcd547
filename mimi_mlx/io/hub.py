"""Checkpoint files: resolving a hub repo id through huggingface_hub, and reporting problems.

Which files a hub repo has is decided from one listing, never by asking for names that may not
exist: online, the hub's file list (one request, `HfApi.model_info`); offline (`HF_HUB_OFFLINE=1`,
or the hub unreachable), the files of the repo's snapshot in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or matched to the model. The message says why."""


# A short line before the hub is contacted, at INFO (the CLIs show it on a terminal).
log = logging.getLogger(__name__)


def listing(names: list[str], limit: int = 12) -> str:
    """`(n): a, b, c ...` for an error message."""
    more = " ..." if len(names) > limit else ""
    return f"({len(names)}): {', '.join(names[:limit])}{more}"


def shape_mismatches(state: dict, params: dict, limit: int = 12) -> list[str]:
    """`name: checkpoint (..) vs model (..)` for each tensor shaped unlike the model's."""
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(params[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(params[k].shape)
    ]
    return wrong[:limit]


def read_json(path: str | Path) -> dict:
    """A JSON object from a file; a malformed file is a CheckpointError naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return value


def looks_like_repo_id(name: str) -> bool:
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "/", "~"))


def recorded_name(name: str | Path) -> str:
    """How outputs (JSON, codes files) record a checkpoint or file: an existing local path as an
    absolute path (valid from any folder), anything else (a hub repo id) as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else str(name)


def download_hint(repo_id: str) -> str:
    return f"`hf download {repo_id}`"


@dataclass(frozen=True)
class RepoFiles:
    """The files of one hub repo revision, from the hub's listing or from the local cache."""

    repo_id: str
    names: frozenset[str]
    revision: str | None  # the revision to download from (online)
    snapshot: Path | None  # the cached snapshot folder (offline), None online

    @property
    def cached_only(self) -> bool:
        return self.snapshot is not None


_listings: dict[tuple, RepoFiles] = {}


def repo_files(repo_id: str, revision: str | None = None) -> RepoFiles:
    """Which files `repo_id` holds: asked of the hub once, else read from the local cache.

    Raises:
        CheckpointError: the repo does not exist (or is gated), or the hub cannot be reached and
            the repo is not in the local cache.
    """
    from huggingface_hub import constants

    key = (repo_id, revision, str(constants.HF_HUB_CACHE), bool(constants.HF_HUB_OFFLINE))
    if key not in _listings:
        _listings[key] = _list_repo(repo_id, revision, offline=bool(constants.HF_HUB_OFFLINE))
    return _listings[key]


def _list_repo(repo_id: str, revision: str | None, offline: bool) -> RepoFiles:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    reason = "HF_HUB_OFFLINE is set"
    if not offline:
        log.info("asking the hub which files %s holds ...", repo_id)
        try:  # model_info is one request, not retried: no network fails at once
            info = HfApi().model_info(repo_id, revision=revision)
            names = frozenset(s.rfilename for s in info.siblings or ())
            # downloads name the revision asked for (not info.sha): the cache then records
            # refs/main, and the repo resolves offline afterwards
            return RepoFiles(repo_id, names, revision, None)
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:  # gated ones too
            raise CheckpointError(
                f"the hub has no repo {repo_id!r}"
                + (f" at revision {revision!r}" if revision else "")
                + f" (or it is gated or private): {_first_line(e)}"
            ) from e
        except Exception as e:  # no network, timeouts, hub errors: the local cache decides
            reason = f"the hub cannot be reached: {_first_line(e)}"
    snapshot = cached_snapshot(repo_id, revision)
    if snapshot is None:
        raise CheckpointError(
            f"cannot use the hub repo {repo_id!r}: {reason}, and it is not in the local cache. "
            f"Download it once with {download_hint(repo_id)} (then it works offline, also with "
            "HF_HUB_OFFLINE=1), or pass a local folder or file instead."
        )
    names = frozenset(
        p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()
    )
    return RepoFiles(repo_id, names, None, snapshot)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of `repo_id` in the local Hugging Face cache, None if not cached."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    revision = revision or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """One file of a hub repo (downloaded, or from the local cache); None if the repo lacks it.

    Offline, "the repo lacks it" means the local cache lacks it.

    Raises:
        CheckpointError: the repo cannot be listed, or the file cannot be downloaded.
    """
    files = repo_files(repo_id, revision)
    if filename not in files.names:
        return None
    if files.snapshot is not None:
        return files.snapshot / filename
    from huggingface_hub import hf_hub_download

    log.info("fetching %s from %s ...", filename, repo_id)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=files.revision))
    except Exception as e:  # network lost, disk full, ...
        raise CheckpointError(
            f"cannot fetch {filename!r} from the hub repo {repo_id!r}: {_first_line(e)}"
        ) from e


def missing_hint(root: str) -> str:
    """For a 'holds no X' error: where the files were looked for, when `root` is a hub repo."""
    if not looks_like_repo_id(root) or Path(root).expanduser().exists():
        return ""
    cached = [f for k, f in _listings.items() if k[0] == root and f.cached_only]
    if not cached:
        return ""
    return (
        f" in the local cache ({cached[-1].snapshot}); download the whole repo with "
        f"{download_hint(root)}"
    )


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]
