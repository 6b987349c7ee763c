"""Shared fixtures: a real origin on loopback that counts what reaches it, and the proxy
in-process (``make_proxy``) or as a CLI subprocess (``spawn_proxy``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import port_for
import pytest
from aiohttp import web
from hypothesis import settings

from proxy.clock import Clock, FakeClock
from proxy.engine.driver import Engine
from proxy.origin.client import OriginClient
from proxy.policy.load import LoadedPolicy, parse_policy
from proxy.server.listener import HttpServer, Limits
from proxy.server.worker import bind
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores

ROOT = Path(__file__).resolve().parents[1]

# No per-example deadline for property tests: a deadline is a timing assert, and this
# suite runs under coverage on busy shared machines (tests that set their own keep it).
settings.register_profile("sidecache", deadline=None)
settings.load_profile("sidecache")


@dataclass
class Reply:
    """What the origin answers on one path."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Origin:
    """A real HTTP origin on loopback. Each path answers its ``Reply`` (default: a JSON
    body naming the path and the hit number) and every request is counted."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.requests: list[web.Request] = []
        self.seen_headers: list[dict[str, str]] = []
        self.replies: dict[str, Reply | Handler] = {}
        self.url = ""
        # When a test moves time with a FakeClock, the origin's Date follows it, as a
        # real origin's clock agrees with the proxy's.
        self.clock: Clock | None = None

    def reply(self, path: str, reply: Reply | Handler | None = None, **kwargs: Any) -> None:
        self.replies[path] = reply if reply is not None else Reply(**kwargs)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.requests.append(request)
        self.seen_headers.append(dict(request.headers))
        if request.can_read_body:
            await request.read()
        configured = self.replies.get(request.path)
        if configured is not None and not isinstance(configured, Reply):
            return await configured(request)
        reply = configured or Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body
        if body is None:
            body = f'{{"path": "{request.path_qs}", "hit": {self.hits[request.path]}}}'.encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        if self.clock is not None and "Date" not in headers:
            headers["Date"] = formatdate(self.clock.time(), usegmt=True)
        return web.Response(status=reply.status, body=body, headers=headers)


@pytest.fixture
async def origin(aiohttp_server: Any) -> Origin:
    state = Origin()
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", state.handle)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("")).rstrip("/")
    return state


_HANDED_OUT: set[int] = set()


def free_port(*, exclude: set[int] | None = None) -> int:
    """A free loopback port never handed out before in this session: two servers picked
    before either starts (a pair) must not get the same one, nor a server the port of one
    that a previous test stopped a moment ago."""
    while True:
        port = port_for.select_random()
        if port not in _HANDED_OUT and (not exclude or port not in exclude):
            _HANDED_OUT.add(port)
            return port


def policy_text(origin_url: str, body: str) -> str:
    """A policy document: ``version`` and ``origin`` plus the given YAML body."""
    return f"version: 1\norigin: {origin_url}\n" + textwrap.dedent(body)


class ProxyClient:
    """An aiohttp client session bound to the proxy's base URL."""

    def __init__(self, base: str) -> None:
        # no connection cap: concurrency tests must reach the proxy all at once
        self.session = aiohttp.ClientSession(base_url=base, connector=aiohttp.TCPConnector(limit=0))

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, path, **kwargs)

    async def close(self) -> None:
        await self.session.close()


@dataclass
class RunningProxy:
    client: ProxyClient
    engine: Engine
    stores: dict[str, Store]
    clock: Clock
    url: str
    http: HttpServer | None = None

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.client.get(path, **kwargs)
        await response.read()
        return response

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.client.request(method, path, **kwargs)
        await response.read()
        return response


MakeProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def make_proxy(origin: Origin) -> AsyncIterator[MakeProxy]:
    """Start the proxy in-process (its real HTTP/1.1 server on a loopback socket) with a
    policy body (YAML text)."""
    running: list[tuple[ProxyClient, HttpServer, Engine, dict[str, Store]]] = []

    async def factory(
        body: str = "", *, clock: Clock | None = None, loaded: LoadedPolicy | None = None
    ) -> RunningProxy:
        if loaded is None:
            loaded = parse_policy(policy_text(origin.url, body), "test-policy.yaml")
        stores = build_stores(loaded.policy.backends, clock)
        engine = Engine(loaded, stores, OriginClient(loaded.policy.origin), clock)
        http = HttpServer(engine, Limits.of(loaded.policy.server))
        sock = bind(("127.0.0.1", 0), reuse_port=False)
        await http.start(sock)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = ProxyClient(url)
        running.append((client, http, engine, stores))
        return RunningProxy(client, engine, stores, clock or engine.clock, url, http)

    yield factory
    for client, http, engine, stores in running:
        await client.close()
        await http.stop(0)
        await engine.aclose()
        await close_stores(stores)


@pytest.fixture
def fake_clock(origin: Origin) -> FakeClock:
    clock = FakeClock(start=time.time())
    origin.clock = clock
    return clock


# ---------------------------------------------------------------- subprocess proxy


@dataclass
class ProxyProcess:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


SpawnProxy = Callable[..., ProxyProcess]


def _wait_ready(proc: ProxyProcess, deadline: float) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            out = proc.process.stdout.read().decode() if proc.process.stdout else ""
            raise RuntimeError(f"proxy exited with {proc.process.returncode}: {out}")
        try:
            with urllib.request.urlopen(proc.admin_url + "/healthz", timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("proxy did not become healthy in time")


@pytest.fixture
def spawn_proxy(tmp_path: Path) -> Iterator[SpawnProxy]:
    """Start ``python -m proxy run`` as a real subprocess on free loopback ports."""
    started: list[ProxyProcess] = []

    def factory(policy: str, *extra: str, wait: bool = True) -> ProxyProcess:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(policy)
        port, admin_port = free_port(), free_port()
        command = [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--policy",
            str(path),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            *extra,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
        proc = ProxyProcess(process, port, admin_port)
        started.append(proc)
        if wait:
            _wait_ready(proc, time.monotonic() + 20)
        return proc

    yield factory
    for proc in started:
        # SIGTERM first: a proxy that exits on its own writes its coverage data
        proc.stop(timeout=5.0)
        if proc.process.stdout:
            proc.process.stdout.close()


__all__ = ["FakeClock", "Origin", "Reply", "RunningProxy", "close_stores"]
