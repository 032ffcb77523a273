"""`imatui serve`: the explorer in a browser tab, through textual-serve.

textual-serve starts one app process per browser connection (the same `python -m imatui PATH` that a
terminal runs, with Textual's web driver) and streams its screen to xterm.js in the page. It has no
authentication: whoever reaches the port drives the app. So it listens on loopback unless told
otherwise, and the sockets are bound here, before the server starts, so that a port in use or a host
that cannot be bound is one line and exit 2 rather than a traceback from inside aiohttp.

Sits beside cli.py (layer 5): it runs the app as a command and never imports it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import shlex
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.server import Server

from imatui.errors import ImatrixError, NotFoundError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (as aiohttp would bind them).

    Port 0 takes a free port (the same one on every address). Raises ImatrixError with one line
    a user can act on when the host does not resolve or an address cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ImatrixError(f"--port must be between 0 and 65535, not {port}")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ImatrixError(f"cannot listen on {host!r}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        if sockets and port == 0:
            address = (address[0], sockets[0].getsockname()[1], *address[2:])
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart within TIME_WAIT
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            for s in sockets:
                s.close()
            if exc.errno == errno.EADDRINUSE:
                raise ImatrixError(f"port {port} on {host} is in use (choose another with --port)") from None
            raise ImatrixError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def app_command(path: str, chunk_size: int) -> str:
    """The shell command textual-serve runs for each connection: this Python, this package."""
    return shlex.join([sys.executable, "-m", "imatui", "--chunk-size", str(chunk_size), path])


class ImatuiServer(Server):
    """textual-serve's server on sockets bound beforehand, with two guards it lacks.

    The page's URLs follow the address the browser used (an SSH tunnel's local port, a host name)
    rather than the bound one, and a server bound to loopback answers only requests addressed to a
    loopback name (or one of `allowed_hosts`: a reverse proxy's) and websockets opened from its own
    page: a web site open in the same browser cannot drive the app (WebSockets are not covered by the
    same-origin policy, and a DNS name can be rebound to 127.0.0.1).
    """

    def __init__(self, command: str, sockets: list[socket.socket], *, title: str,
                 allowed_hosts: tuple[str, ...] = ()) -> None:
        host, port = sockets[0].getsockname()[:2]
        super().__init__(command, host=host, port=port, title=title)
        self.sockets = sockets
        self.loopback_only = all(is_loopback(s.getsockname()[0]) for s in sockets)
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    def _check_request(self, request: web.Request) -> None:
        name = urlsplit(f"//{request.host}").hostname or ""
        if self.loopback_only and not is_loopback(name) and name.lower() not in self.allowed_hosts:
            raise web.HTTPForbidden(text=f"this server answers only to localhost, not {name!r}")

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        self._check_request(request)
        # behind a proxy that ends TLS the page must ask for wss://, or the browser refuses the socket
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
        # read synchronously by the template right after this line, before any other request runs
        self.public_url = f"{'https' if scheme == 'https' else 'http'}://{request.host}"
        return await super().handle_index(request)

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        self._check_request(request)
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="a websocket from another site's page is refused")
        return await super().handle_websocket(request)

    async def handle_download(self, request: web.Request) -> web.StreamResponse:
        self._check_request(request)
        return await super().handle_download(request)

    async def on_startup(self, app: web.Application) -> None:
        pass  # serve() has said where to connect; textual-serve's banner names the wrong URL

    def serve(self, debug: bool = False) -> None:
        """textual-serve's serve(), on our sockets; Ctrl+C and SIGTERM stop it gracefully."""
        self.debug = debug
        self.initialize_logging()
        loop = asyncio.new_event_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_exit)
        # open browser sessions are cancelled (and their apps told to quit) after 3 s, not aiohttp's 60
        web.run_app(self._make_app(), sock=self.sockets, handle_signals=False, loop=loop,
                    shutdown_timeout=3.0, print=lambda *args: None)


def announce(target: str, addresses: list[tuple[str, int]]) -> tuple[str, str | None]:
    """What serve prints: where to connect (stdout), and the warning (stderr) unless loopback only."""
    port = addresses[0][1]
    tunnel = f"ssh -L {port}:localhost:{port} THIS_HOST, then open http://localhost:{port}"
    urls = " and ".join(f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}" for h, p in addresses)
    if all(is_loopback(h) for h, _ in addresses):
        return (f"imatui serve: {target} on {urls} (this machine only)\n"
                f"  from another computer: {tunnel}\n  Ctrl+C stops it"), None
    hosts = ", ".join(h for h, _ in addresses)
    return (f"imatui serve: {target} on {urls}\n  Ctrl+C stops it",
            f"imatui: warning: listening on {hosts}, reachable from the network, with NO authentication: "
            "anyone who reaches this port uses the app (and its file browser) as you. Safer: keep the "
            f"default --host {DEFAULT_HOST} and forward the port: {tunnel}")


def serve(path: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, chunk_size: int = 512,
          allowed_hosts: tuple[str, ...] = ()) -> int:
    """Check the input, bind, say where to connect, serve until Ctrl+C."""
    target = Path(path)
    if not target.exists():
        raise NotFoundError("no such file or folder (serve its folder to wait for a file not yet written)",
                            path)
    sockets = bind(host, port)
    text, warning = announce(str(target), [s.getsockname()[:2] for s in sockets])
    print(text, flush=True)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    command = app_command(str(target.resolve()), chunk_size)
    server = ImatuiServer(command, sockets, title=f"imatui {target.resolve().name}",
                          allowed_hosts=allowed_hosts)
    server.serve()
    return 0


__all__ = ["ImatuiServer", "announce", "app_command", "bind", "is_loopback", "serve"]
