"""The assistant's text model: an mlx-lm model in this process, or any OpenAI-compatible server.

Both stream the reply to a conversation (`[{"role": ..., "content": ...}]`) as text pieces the
moment they are written; closing the iterator cancels the generation (the server's response is
closed, mlx-lm simply stops being stepped). Sampling is named as mlx-lm names it.

    llm = MlxTextModel("mlx-community/Qwen2.5-3B-Instruct-4bit", LlmSettings(temperature=0))
    for piece in llm.stream([{"role": "user", "content": "Hello!"}]):
        print(piece, end="")
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

SERVER_TIMEOUT = 60.0  # seconds to wait for a server's first byte
SERVER_MODEL = "default_model"  # what mlx_lm.server calls the model it was started with


class LlmError(RuntimeError):
    """The text model could not be loaded or reached."""


@dataclass(frozen=True)
class LlmSettings:
    """How the text model writes (mlx-lm's names).

    Attributes:
        temperature: 0 is greedy (the same reply every time).
        top_p: nucleus sampling (1.0: off).
        max_tokens: an answer's length bound, in tokens.
        seed: random seed of the sampling (None: not seeded).
    """

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 200
    seed: int | None = None


class TextModel(Protocol):
    """A chat model that streams its reply."""

    name: str

    def stream(self, messages: list[dict]) -> Iterator[str]:
        """The reply to `messages`, piece by piece."""
        ...

    def with_settings(self, settings: LlmSettings) -> TextModel:
        """The same model with other sampling settings."""
        ...


class MlxTextModel:
    """An mlx-lm model (hub id or folder), run in this process with its chat template.

    Raises:
        LlmError: mlx-lm cannot load it, or it has no chat template.
    """

    def __init__(self, source: str, settings: LlmSettings):
        import mlx.core as mx
        import mlx_lm

        try:
            self.model, self.tokenizer = mlx_lm.load(source)
        except Exception as e:  # mlx-lm raises many kinds (hub, config, weights)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LlmError(f"mlx-lm cannot load {source!r}: {first}") from e
        if not self.tokenizer.has_chat_template:
            raise LlmError(f"{source} has no chat template: use an instruction (chat) model")
        self.name, self.settings = source, settings
        if settings.seed is not None:
            mx.random.seed(settings.seed)

    def with_settings(self, settings: LlmSettings) -> MlxTextModel:
        """The same loaded model, writing with other settings (a server's session)."""
        import mlx.core as mx

        other = copy.copy(self)
        other.settings = settings
        if settings.seed is not None:
            mx.random.seed(settings.seed)
        return other

    def prompt(self, messages: list[dict]) -> list[int]:
        """The conversation through the model's chat template, ready for the reply."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def stream(self, messages: list[dict]) -> Iterator[str]:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        s = self.settings
        sampler = make_sampler(s.temperature, s.top_p)
        prompt = self.prompt(messages)
        for response in stream_generate(
            self.model, self.tokenizer, prompt, max_tokens=s.max_tokens, sampler=sampler
        ):
            if response.text:
                yield response.text


class ServerTextModel:
    """A model behind an OpenAI-compatible chat API (`mlx_lm.server`, Ollama, LM Studio, ...).

    Args:
        url: the server (`http://127.0.0.1:8080`, with or without `/v1`).
        settings: sampling, sent with each request.
        model: the server's model name (default: `default_model`, mlx_lm.server's own).
    """

    def __init__(self, url: str, settings: LlmSettings, model: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise LlmError(f"--llm-url must be an http:// or https:// URL, got {url!r}")
        base = url.rstrip("/")
        self.endpoint = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = model or SERVER_MODEL
        self.name = f"{self.model} at {url}"
        self.settings = settings

    def with_settings(self, settings: LlmSettings) -> ServerTextModel:
        """The same server, asked with other settings."""
        other = copy.copy(self)
        other.settings = settings
        return other

    def _request(self, messages: list[dict]) -> urllib.request.Request:
        s = self.settings
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        return urllib.request.Request(
            self.endpoint,
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Accept": "text/event-stream"},
        )

    def stream(self, messages: list[dict]) -> Iterator[str]:
        try:
            response = urllib.request.urlopen(self._request(messages), timeout=SERVER_TIMEOUT)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()[:200]
            raise LlmError(
                f"{self.endpoint} answered {e.code}: {detail or e.reason} (name the server's "
                "model with --llm NAME)"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LlmError(f"cannot reach {self.endpoint}: {reason}") from None
        with response:  # closed when the caller stops reading: the server stops generating
            for line in response:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                choices = json.loads(data).get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    yield piece
