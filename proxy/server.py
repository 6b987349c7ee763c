"""The proxy listener: aiohttp's low-level server turning requests into ``Exchange``s.

This module owns the HTTP side of the proxy port (target forms, limits, writing
the engine's ``ProxyResponse``) and the lifecycle of one worker: stores, origin
pool, engine, both listeners, signals and draining. The admin API lives in
``admin.py``; process management (``--workers``) in ``cli.py``'s ``run``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_exceptions import HTTPException

from proxy.admin import AdminState, build_admin_app
from proxy.engine import Engine, Exchange, ProxyResponse
from proxy.origin import OriginClient
from proxy.policy import LoadedPolicy
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores

log = logging.getLogger("sidecache")

BODY_CHUNK = 64 * 1024


@dataclass(slots=True)
class Limits:
    max_body_size: int
    max_header_size: int


def _error(status: int, text: str) -> web.Response:
    return web.Response(
        status=status,
        text=text + "\n",
        headers={"Cache-Control": "no-store", "X-Cache": "BYPASS"},
    )


class ProxyHandler:
    """The request handler of the proxy port."""

    def __init__(self, engine: Engine, limits: Limits) -> None:
        self.engine = engine
        self.limits = limits

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            exchange = self._exchange(request)
        except HTTPException as exc:
            return _error(exc.status, exc.reason)
        response = await self.engine.handle(exchange)
        return await self._write(request, response)

    def _exchange(self, request: web.BaseRequest) -> Exchange:
        method = request.method
        if method == "CONNECT":
            raise web.HTTPMethodNotAllowed(method, [])
        target = request.raw_path
        if not target.startswith("/"):
            if target == "*" and method == "OPTIONS":
                raise web.HTTPBadRequest(reason="asterisk-form is not proxied")
            # absolute-form: only the path and query are used; the authority never
            # selects where the request goes (the origin is fixed).
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.path.startswith("/"):
                raise web.HTTPBadRequest(reason="bad request target")
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        path, _, query = target.partition("?")
        path = path.split("#", 1)[0]
        if "\x00" in path:
            raise web.HTTPBadRequest(reason="bad request target")
        host = request.headers.get("Host")
        if host is None and request.version >= (1, 1):
            raise web.HTTPBadRequest(reason="missing Host")
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        body: AsyncIterator[bytes] | None = None
        if request.body_exists:
            length = request.content_length
            limit = self.limits.max_body_size
            if length is not None and length > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
            body = _limited_body(request, limit)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return Exchange.build(
            method,
            path,
            query,
            headers,
            host=(host or "").lower(),
            client=peer[0] if peer else "",
            scheme=request.scheme,
            body=body,
        )

    async def _write(self, request: web.BaseRequest, response: ProxyResponse) -> web.StreamResponse:
        if response.stream is None:
            out = web.Response(status=response.status, body=response.body or None)
            headers = out.headers
            for name, value in response.headers:
                headers.add(name, value)
            if response.head_length is not None:
                headers["Content-Length"] = str(response.head_length)
            elif response.status not in (204, 304) and response.status >= 200:
                headers["Content-Length"] = str(len(response.body))
            return out
        stream = web.StreamResponse(status=response.status)
        for name, value in response.headers:
            stream.headers.add(name, value)
        try:
            await stream.prepare(request)
            async for chunk in response.stream:
                await stream.write(chunk)
            await stream.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            await _close_stream(response.stream)
            raise
        except Exception:
            # the origin failed mid-body: we cannot change the status any more, so
            # cut the connection rather than end a truncated body cleanly.
            await _close_stream(response.stream)
            if request.transport is not None:
                request.transport.close()
            log.warning("origin body failed mid-stream", exc_info=True)
        return stream


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _limited_body(request: web.BaseRequest, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.content.iter_chunked(BODY_CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=seen)
        yield chunk


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def bind(address: tuple[str, int], *, reuse_port: bool) -> socket.socket:
    """A listening socket, bound now so errors surface before the loop starts."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class Worker:
    """One worker process's running proxy: both listeners around one engine."""

    loaded: LoadedPolicy
    proxy_sock: socket.socket
    admin_sock: socket.socket | None
    stores: dict[str, Store] = field(default_factory=dict)
    engine: Engine | None = None
    state: AdminState | None = None
    _runners: list[web.BaseRunner] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        policy = self.loaded.policy
        self.stores = build_stores(policy.backends)
        origin = OriginClient(policy.origin, policy.server.origin_connections)
        self.engine = Engine(self.loaded, self.stores, origin)
        handler = ProxyHandler(
            self.engine, Limits(policy.server.max_body_size, policy.server.max_header_size)
        )
        server = web.Server(
            handler,
            access_log=None,
            max_field_size=policy.server.max_header_size,
            max_line_size=policy.server.max_header_size,
            handler_cancellation=False,
        )
        proxy_runner = web.ServerRunner(server, shutdown_timeout=policy.server.shutdown_timeout)
        await proxy_runner.setup()
        await web.SockSite(proxy_runner, self.proxy_sock).start()
        self._runners.append(proxy_runner)
        self.state = AdminState(self.engine, self.stores)
        if self.admin_sock is not None:
            admin_runner = web.AppRunner(build_admin_app(self.state), access_log=None)
            await admin_runner.setup()
            await web.SockSite(admin_runner, self.admin_sock).start()
            self._runners.append(admin_runner)
        self.state.ready = True

    def request_stop(self) -> None:
        if self.state is not None:
            self.state.ready = False
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests up to shutdown_timeout, close pools."""
        if self.state is not None:
            self.state.ready = False
        for runner in self._runners:
            await runner.cleanup()
        if self.engine is not None:
            await self.engine.aclose()
        await close_stores(self.stores)


async def serve(
    loaded: LoadedPolicy, proxy_sock: socket.socket, admin_sock: socket.socket | None
) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain and exit."""
    worker = Worker(loaded, proxy_sock, admin_sock)
    await worker.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    try:
        await worker.wait()
    finally:
        await worker.stop()
