"""The server's life: listen, load, say where it is, serve until Ctrl-C or SIGTERM, end cleanly.

The socket is bound before the (long) model load, so a port in use fails at once. Ctrl-C and
SIGTERM end it the same way: new sessions are refused, the open ones are told (`b"\\x05"` +
the reason) and closed, their recordings kept; a second signal aborts.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .app import build_app
from .services import SHUTDOWN_MESSAGE, ServeOptions, Services

CLOSE_TIMEOUT = 10.0  # seconds the open sessions get to end


def bind(options: ServeOptions) -> socket.socket:
    """The listening socket (port 0: any free port); one-line errors."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    try:
        return socket.create_server((options.host, options.port), family=family, backlog=128)
    except OSError as e:
        hint = ""
        if e.errno == errno.EADDRINUSE:
            hint = ": the port is in use (another server?); choose one with --port"
        elif e.errno == errno.EACCES:
            hint = ": permission denied (ports under 1024 need privileges); choose another --port"
        else:
            hint = f": {e.strerror or e}"
        raise OSError(f"cannot listen on {options.host}:{options.port}{hint}") from None


def ssl_context(folder: Path) -> ssl.SSLContext:
    """https from `folder`/cert.pem and key.pem, as Kyutai's servers take them."""
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    for path in (cert, key):
        if not path.is_file():
            raise ValueError(
                f"--ssl {folder}: no {path.name} there (make a self-signed pair with `openssl "
                f"req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=moshi -keyout "
                f"{key} -out {cert}`)"
            )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"--ssl {folder}: cannot use cert.pem and key.pem ({e})") from None
    return context


def urls(options: ServeOptions, port: int) -> list[str]:
    """Where clients reach the server: this machine, and its network address when public."""
    hosts = [options.host]
    if options.host in ("0.0.0.0", "::", ""):
        hosts = ["127.0.0.1", *_lan_addresses()]
    return [f"{options.scheme}://{_bracket(h)}:{port}/" for h in hosts]


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _lan_addresses() -> list[str]:
    """This machine's address on its network (the route to the internet; none if offline)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # a documentation address: no packet is sent
            return [s.getsockname()[0]]
    except OSError:
        return []


def warnings(options: ServeOptions) -> list[str]:
    lines = []
    if options.public:
        lines.append(
            f"warning: listening on {options.host}: the models are reachable from the network"
            + ("" if options.api_key else " by anyone (protect them with --api-key KEY)")
        )
        if options.ssl is None:
            lines.append(
                "note: browsers give a page the microphone only over https or on localhost: "
                "for a phone or another computer, serve with --ssl DIR (cert.pem, key.pem)"
            )
    return lines


async def serve(
    services: Services,
    sock: socket.socket,
    load: Callable[[], Awaitable[None]],
    describe: Callable[[Services, str], list[str]],
    wyoming: socket.socket | None = None,
) -> None:
    """Load the models (`load`), serve on `sock` until Ctrl-C or SIGTERM, then end cleanly.

    Args:
        services: the server's state (filled by `load`).
        sock: the bound socket (`bind`).
        load: fills `services` (on its model thread).
        describe: the lines that say what is served, given the base URL.
        wyoming: a bound socket for Home Assistant's Wyoming protocol (`wyoming_server`).
    """
    options = services.options
    context = ssl_context(options.ssl) if options.ssl is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    await load()
    runner = web.AppRunner(build_app(services), handle_signals=False, access_log=None)
    await runner.setup()
    wyoming_server = None
    try:
        await web.SockSite(runner, sock, ssl_context=context, shutdown_timeout=1.0).start()
        if wyoming is not None:
            from . import wyoming_server as protocol

            wyoming_server = await protocol.start(services, wyoming)
        for s in signals:
            loop.add_signal_handler(s, _first_signal, stop, loop, signals)
        where = urls(options, sock.getsockname()[1])
        for line in warnings(options):
            print(line, file=sys.stderr)
        print(f"serving on {' and '.join(where)} (Ctrl-C to stop)", file=sys.stderr)
        for line in describe(services, where[0]):
            print(f"  {line}", file=sys.stderr)
        if wyoming is not None:
            port = wyoming.getsockname()[1]
            tcp = [u.replace(options.scheme, "tcp", 1).rstrip("/") for u in urls(options, port)]
            print(
                f"  wyoming: {' and '.join(tcp)} (Home Assistant: add the Wyoming Protocol "
                f"integration with this machine's address and port {port})",
                file=sys.stderr,
            )
            if options.public:
                print(
                    "  warning: the Wyoming protocol has no API key: anyone on the network can "
                    "use the speech models on that port",
                    file=sys.stderr,
                )
        sys.stderr.flush()
        await stop.wait()
        await shutdown(services)
    finally:
        for s in signals:
            loop.remove_signal_handler(s)
        if wyoming_server is not None:
            wyoming_server.close()
        await runner.cleanup()


def _first_signal(stop: asyncio.Event, loop, signals) -> None:
    """Ask the server to stop; the next signal gets Python's default (abort)."""
    for s in signals:
        loop.remove_signal_handler(s)
    stop.set()


async def shutdown(services: Services) -> None:
    """Refuse new sessions, tell and close the open ones (their recordings are kept)."""
    services.closing = True
    sessions = list(services.sessions)
    if sessions:
        print(f"stopping: closing {len(sessions)} open session(s)", file=sys.stderr, flush=True)
        closing = [asyncio.ensure_future(s.close(SHUTDOWN_MESSAGE)) for s in sessions]
        _, late = await asyncio.wait(closing, timeout=CLOSE_TIMEOUT)
        for task in late:
            task.cancel()
    print("stopped", file=sys.stderr, flush=True)
