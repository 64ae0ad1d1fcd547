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
SHUTDOWN_MESSAGE = "the server is shutting down"
OUR_PAGE = Path(__file__).resolve().parent / "static"  # our web page: index.html and its files
HEARTBEAT = 5.0  # seconds between a WebSocket's pings: a vanished client (no close) is noticed
# each kind of service: what it serves, the option that serves it
KINDS = {
    "chat": ("speech-to-speech", "--model"),
    "stt": ("speech-to-text", "--stt"),
    "tts": ("text-to-speech", "--tts"),
    "assistant": ("assistant", "--llm NAME or --llm-url URL, with --stt and --tts"),
}


class Unavailable(Exception):
    """A route's model cannot take a new session: not served, or the server is shutting down
    (the message says which, for the client)."""


def served_name(source: str) -> str:
    """How the server names a model from its source, for clients and the page (OpenAI's model
    ids, the page's badges): a known model's name as it is, a folder's name, a hub repo's last
    part. The full source is the page's tooltip."""
    return Path(source.rstrip("/")).name or source


def not_served(kind: str) -> str:
    """What a client of a route whose model is not served is told."""
    what, option = KINDS[kind]
    return f"no {what} model is served here (serve one with {option})"


async def accept(request: web.Request, max_message: int) -> web.WebSocketResponse:
    """A route's WebSocket, open (messages over `max_message` bytes close it; pinged)."""
    ws = web.WebSocketResponse(max_msg_size=max_message, heartbeat=HEARTBEAT)
    await ws.prepare(request)
    return ws


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
        page: the web page's folder, served at `/` (its index.html) and below (its files):
            ours, another web client's (`--static DIR`: Kyutai's built client), None: none.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    ssl: Path | None = None
    api_key: str | None = None
    record: Path | None = None
    allow_origins: tuple[str, ...] = ()
    max_lag_frames: int = 3
    page: Path | None = OUR_PAGE

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

    def serving(self, kind: str):
        """The service of `kind` ("chat", "stt", "tts", "assistant") for a new session.

        Raises:
            Unavailable: it is not served, or the server is shutting down.
        """
        service = getattr(self, kind)
        if service is None:
            raise Unavailable(not_served(kind))
        if self.closing:
            raise Unavailable(SHUTDOWN_MESSAGE)
        return service

    def info(self) -> dict:
        """`GET /api/info`: what is served, for the page."""
        return {
            "chat": self.chat.info() if self.chat is not None else None,
            "stt": self.stt.info() if self.stt is not None else None,
            "tts": self.tts.info() if self.tts is not None else None,
            "assistant": self.assistant.info() if self.assistant is not None else None,
        }


SERVICES = web.AppKey("services", Services)  # `request.app[SERVICES]`
