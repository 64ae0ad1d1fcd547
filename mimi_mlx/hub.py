"""Checkpoint files: resolving a hub repo id through huggingface_hub, and reporting problems."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or matched to the model. The message says why."""


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


def looks_like_repo_id(name: str) -> bool:
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "/", "~"))


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """Download (or find in the local cache) one file of a hub repo; None if the repo lacks it.

    Raises CheckpointError when the hub cannot be reached and the file is not cached.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: catch it first
        raise CheckpointError(
            f"cannot fetch {filename!r} from the hub repo {repo_id!r} (no network, and it is not "
            f"in the local cache). Download it once with `huggingface-cli download {repo_id}` "
            "or pass a local folder or file instead."
        ) from e
    except EntryNotFoundError:
        return None
    except Exception as e:  # repository not found, gated, HTTP errors
        raise CheckpointError(
            f"cannot fetch {filename!r} from the hub repo {repo_id!r}: {e}"
        ) from e
