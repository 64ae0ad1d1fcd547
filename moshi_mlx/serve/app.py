"""The aiohttp application: the routes of every protocol, the page, and what guards them.

- `--api-key`: every request to the API carries the key, as its clients send it:
  `Authorization: Bearer KEY` (OpenAI's SDK), the `kyutai-api-key` header or the `auth_id` query
  parameter (Kyutai's clients; the page passes it on from its own URL); 401 otherwise. The page's
  own files need none (a browser loads a page's scripts without it; they give no model access).
- Requests from another web origin (a page elsewhere calling this server, WebSockets included)
  are refused unless `--allow-origin` names it (CORS headers are then sent).
- The web page is one folder (`ServeOptions.page`: ours, or another client's with `--static
  DIR`, as Kyutai's server serves their built client): its index.html at `/`, its files below
  `/`, after every API route; nothing from outside the folder (no `..`, no symbolic links).
"""

from __future__ import annotations

import hmac
import importlib
from pathlib import Path

from aiohttp import web

from .services import SERVICES, Services

# protocol modules, each with `add_routes(app, services)`; those not written yet are skipped
PROTOCOLS = ("chat_ws", "asr_ws", "tts_ws", "openai_api", "assistant_ws")
PAGE_ROUTES = ("page", "page-files")  # the names of the page's routes (served without the key)
KEY_HEADER = "kyutai-api-key"
KEY_QUERY = "auth_id"
CORS_HEADERS = "Authorization, Content-Type, kyutai-api-key"
MAX_UPLOAD = 64 << 20  # bytes of one HTTP request body (an audio file to transcribe)


def build_app(services: Services) -> web.Application:
    """The application serving `services`."""
    app = web.Application(middlewares=[_origins, _auth], client_max_size=MAX_UPLOAD)
    app[SERVICES] = services
    app.router.add_get("/api/info", _info)
    for name in PROTOCOLS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
            continue
        module.add_routes(app, services)
    add_page(app, services.options.page)
    return app


def add_page(app: web.Application, folder: Path | None) -> None:
    """`folder`/index.html at `/`, the folder's files at their paths below `/` (added last: the
    API routes come first); none when `folder` is None."""
    if folder is None:
        return
    app.router.add_get("/", _index, name=PAGE_ROUTES[0])
    if folder.is_dir():
        app.router.add_static("/", folder, follow_symlinks=False, name=PAGE_ROUTES[1])


async def _info(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICES].info())


async def _index(request: web.Request) -> web.StreamResponse:
    index = request.app[SERVICES].options.page / "index.html"
    if not index.is_file():
        raise web.HTTPNotFound(text=f"no web page here ({index} is missing)")
    return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


def authorized(request: web.Request, key: str) -> bool:
    """Whether the request carries `key` in one of the ways clients send it."""
    given = [request.headers.get(KEY_HEADER), request.query.get(KEY_QUERY)]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given.append(token.strip())
    return any(g is not None and hmac.compare_digest(g.encode(), key.encode()) for g in given)


@web.middleware
async def _auth(request: web.Request, handler):
    key = request.app[SERVICES].options.api_key
    if key is None or _is_page(request) or authorized(request, key):
        return await handler(request)
    message = (
        "a valid API key is needed: `Authorization: Bearer KEY`, the `kyutai-api-key` header "
        "or the `auth_id` query parameter"
    )
    if request.path.startswith("/v1/"):  # OpenAI's error shape
        error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)
    return web.Response(status=401, text=message)


def _is_page(request: web.Request) -> bool:
    """A request for the page or one of its files."""
    return request.method in ("GET", "HEAD") and request.match_info.route.name in PAGE_ROUTES


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin == f"{request.scheme}://{request.host}"


@web.middleware
async def _origins(request: web.Request, handler):
    origin = request.headers.get("Origin")
    if origin is None or _same_origin(request, origin):
        return await handler(request)
    allowed = request.app[SERVICES].options.allow_origins
    if origin not in allowed and "*" not in allowed:
        return web.Response(
            status=403,
            text=f"requests from the web origin {origin} are refused (start the server with "
            f"--allow-origin {origin} to allow them)",
        )
    cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if request.method == "OPTIONS":  # a preflight
        cors["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        cors["Access-Control-Allow-Headers"] = CORS_HEADERS
        return web.Response(status=204, headers=cors)
    response = await handler(request)
    if not response.prepared:  # (a WebSocket is already under way)
        response.headers.update(cors)
    return response
