"""What a running server holds: its options, the model thread and one service per model kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from .worker import ModelThread

if TYPE_CHECKING:
    from .assistant_service import AssistantService
    from .chat_service import ChatService

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8998
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    """How the server listens and what it allows.

    Attributes:
        host, port: where it listens (127.0.0.1: this machine only).
        ssl: a folder with `cert.pem` and `key.pem` (https and wss, as Kyutai's servers take it).
        api_key: required from every client (Bearer, `kyutai-api-key` or `auth_id`); None: open.
        record: a folder that gets one sub-folder per speech-to-speech session.
        allow_origins: web origins allowed to call the server from their pages (CORS); empty:
            only the server's own page.
        max_lag_frames: input frames a chat may have waiting before the oldest are skipped.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    ssl: Path | None = None
    api_key: str | None = None
    record: Path | None = None
    allow_origins: tuple[str, ...] = ()
    max_lag_frames: int = 3

    @property
    def scheme(self) -> str:
        return "https" if self.ssl is not None else "http"

    @property
    def public(self) -> bool:
        """Reachable from other machines (not a loopback address)."""
        return self.host not in LOCAL_HOSTS


@dataclass
class Services:
    """The server's state, shared by every route (`app[SERVICES]`).

    `chat` serves speech to speech (Moshi, PersonaPlex, Hibiki), `stt` and `tts` speech to text
    and text to speech, `assistant` a text LLM spoken through them; any may be None (not
    served). Each service keeps its loaded models
    (used on `thread` only) and the queue or session slot of its kind.
    """

    thread: ModelThread
    options: ServeOptions
    chat: ChatService | None = None
    stt: object | None = None  # SttService
    tts: object | None = None  # TtsService
    assistant: AssistantService | None = None  # (with stt and tts)
    closing: bool = False  # shutting down: new sessions are refused
    sessions: set = field(default_factory=set)  # open sessions: `await s.close(message)`

    def info(self) -> dict:
        """`GET /api/info`: what is served, for the page."""
        return {
            "chat": self.chat.info() if self.chat is not None else None,
            "stt": self.stt.info() if self.stt is not None else None,
            "tts": self.tts.info() if self.tts is not None else None,
            "assistant": self.assistant.info() if self.assistant is not None else None,
        }


SERVICES = web.AppKey("services", Services)  # `request.app[SERVICES]`
