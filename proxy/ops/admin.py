"""The admin listener and the worker's operations: health, purge, metrics, stats, reload.

Served on its own address (default 127.0.0.1:9090), never on the proxy port.
``/healthz`` answers while the process lives; ``/readyz`` while the policy is loaded
and the listener is bound and not draining. Neither depends on the origin or the
stores: a cache outage must not take the pod out of service. ``POST /purge`` needs the
policy's ``admin.token`` (Bearer) or, without one, a loopback client. ``Operations``
runs what a worker does beside serving: purge fan-out, hot reload, store polling.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Final

import orjson
from aiohttp import web

from proxy import __version__
from proxy.engine.driver import Engine
from proxy.obs.logs import AccessLog, event
from proxy.obs.metrics import CONTENT_TYPE
from proxy.ops.explain import RequestError, explain, inspect
from proxy.ops.fanout import WorkerBus
from proxy.ops.figures import FiguresPoller
from proxy.ops.invalidation import Invalidator, peer_allowed, unknown_routes
from proxy.ops.purgerequest import PurgeRequest
from proxy.ops.reload import Loader, Reloader, swap_policy
from proxy.ops.report import build_stats
from proxy.policy.load import LoadedPolicy, TieredBackend
from proxy.stores.base import ERROR_REASONS, Store

POLL_EVERY: Final = 1.0  # seconds between store figure updates (gauges, breaker logs)
LOOPBACK: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass
class AdminState:
    engine: Engine
    invalidator: Invalidator | None = None
    poller: StorePoller | None = None
    figures: FiguresPoller | None = None
    ready: bool = False
    extra: dict[str, object] = field(default_factory=dict)


STATE: web.AppKey[AdminState] = web.AppKey("state", AdminState)


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "alive", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the policy is loaded and the listener bound; the stores' state is
    shown by backend name (never decides readiness: a cache outage must not take the pod
    out of service)."""
    state = request.app[STATE]
    figures = state.figures.current() if state.figures is not None else {}
    stores: dict[str, dict[str, object]] = {}
    for name, config in state.engine.loaded.policy.backends.items():
        store = state.engine.stores.get(name)
        if store is None:
            continue
        health = store.health()
        shown: dict[str, object] = {
            "type": config.type,
            "breaker": health.breaker,
            "write_refusals": health.write_refusals,
            "last_refusal": health.last_refusal,
            "last_refusal_at": health.last_refusal_at,
        }
        if isinstance(config, TieredBackend):
            shown.update(l1=config.l1, l2=config.l2)
        read = figures.get(name)
        if read is not None:
            shown["figures"] = {
                k: v for k, v in asdict(read).items() if k not in ("backend", "type")
            }
        stores[name] = shown
    body = {
        "status": "ready" if state.ready else "draining",
        "policy": state.engine.loaded.path,
        "policy_digest": state.engine.loaded.digest,
        "stores": stores,
    }
    return _json(body, 200 if state.ready else 503)


def _refusal(request: web.Request, state: AdminState) -> web.Response | None:
    """401 without the configured token, 403 for a non-loopback client without one."""
    token = state.engine.loaded.policy.admin.token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
            return None
        challenge = {"WWW-Authenticate": 'Bearer realm="sidecache admin"'}
        return _json({"error": "a valid Bearer token is required"}, 401, challenge)
    if peer_allowed(request.remote or "", LOOPBACK):
        return None
    return _json({"error": "without admin.token only loopback clients may purge"}, 403)


async def purge(request: web.Request) -> web.Response:
    state = request.app[STATE]
    refused = _refusal(request, state)
    if refused is not None:
        return refused
    if state.invalidator is None:
        return _json({"error": "purging is not available"}, 503)
    try:
        wanted = PurgeRequest.decode(await request.read())
    except ValueError as exc:
        return _json({"error": str(exc)}, 400)
    if wanted.is_empty():
        return _json({"error": "nothing to purge: give urls, prefixes, tags or routes"}, 400)
    unknown = unknown_routes(state.engine, wanted)
    if unknown:
        known = ", ".join(route.name for route in state.engine.loaded.routes)
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        error = f"routes: no route{plural} named {names} in the policy (its routes: {known})"
        return _json({"error": error}, 400)
    result = await state.invalidator.purge(wanted, source="admin")
    return _json(result.as_json(), 503 if result.errors else 200)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.poller is not None:
        state.poller.refresh()
    body = state.engine.meter.exposition()
    if state.figures is not None:
        body += state.figures.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.poller is not None:
        state.poller.refresh()
    engine = state.engine
    families = list(engine.meter.families())
    if state.figures is not None:
        families += state.figures.families()
    return _json(build_stats(families, engine.loaded, time.time()))


async def explain_url(request: web.Request) -> web.Response:
    """``GET /explain?url=…&method=…&h=Name: value``: ``sidecache explain`` under the
    running policy, plus what the route's store holds for that key now (``now``)."""
    engine = request.app[STATE].engine
    url = request.query.get("url")
    if not url:
        return _json({"error": "give url=http://HOST/path (and method=, h=Name: value)"}, 400)
    try:
        found = explain(
            engine.loaded, request.query.get("method", "GET"), url, request.query.getall("h", [])
        )
    except RequestError as exc:
        return _json({"error": str(exc)}, 400)
    body = found.as_json()
    if found.store_key is not None and found.backend is not None:
        hmap = {name.lower(): value for name, value in found.headers.items()}
        store = engine.stores[found.backend]
        body["now"] = await inspect(store, found.store_key, hmap, found.backend)
    return _json(body)


def build_admin_app(state: AdminState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/purge", purge)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    app.router.add_get("/explain", explain_url)
    return app


# ---------------------------------------------------------------- polled store figures


class StorePoller:
    """Copies store counters into metrics once a second, and logs breaker changes.

    Counting happens in the stores (plain integers); only deltas reach prometheus here,
    so no request pays for store-operation metrics.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._seen: dict[tuple[int, str], int] = {}
        self._breakers: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a metrics bug must not stop the worker
                logging.getLogger("sidecache").exception("store polling failed")
            await asyncio.sleep(POLL_EVERY)

    def _delta(self, store: Store, what: str, total: int) -> int:
        key = (id(store), what)
        delta = total - self._seen.get(key, 0)
        self._seen[key] = total
        return max(delta, 0)

    def refresh(self) -> None:
        meter = self.engine.meter
        meter.flush()
        for name, store in self.engine.stores.items():
            if store.tiers() is not None:
                continue  # its layers are backends of their own
            if (breaker := store.breaker()) is not None:
                for op, counters in breaker.ops.items():
                    if n := self._delta(store, f"ops:{op}", counters.ops):
                        meter.store_ops.labels(name, op).inc(n)
                    for reason in ERROR_REASONS:
                        if n := self._delta(store, f"{reason}:{op}", counters.reason(reason)):
                            meter.store_errors.labels(name, op, reason).inc(n)
                if n := self._delta(store, "opens", breaker.opens):
                    meter.breaker_opens.labels(name).inc(n)
                self._breaker(name, breaker.state)
            if store.snapshottable() is not None:  # a memory store: it counts exactly
                figures = store.stats()
                meter.entries.labels(name).set(figures.entries or 0)
                meter.bytes.labels(name).set(figures.bytes or 0)
                if n := self._delta(store, "evictions", figures.evictions or 0):
                    meter.evictions.labels(name).inc(n)

    def _breaker(self, name: str, state: str) -> None:
        self.engine.meter.breaker_state(name, state)
        before = self._breakers.get(name, "closed")
        self._breakers[name] = state
        if state != before:
            level = logging.WARNING if state == "open" else logging.INFO
            event(
                "breaker",
                f"backend {name}: breaker {before} -> {state}",
                level=level,
                backend=name,
                state=state,
                previous=before,
            )


# ---------------------------------------------------------------- the worker's operations


class Operations:
    """Everything one worker runs beside the proxy port: the admin listener, purges and
    their fan-out, hot reload and store polling."""

    def __init__(
        self,
        engine: Engine,
        *,
        loader: Loader,
        replica: str,
        bus: WorkerBus | None = None,
    ) -> None:
        self.engine = engine
        engine.access_log = AccessLog.from_setting(engine.loaded.policy.server.access_log)
        self.invalidator = Invalidator(engine, replica=replica, bus=bus)
        self.poller = StorePoller(engine)
        # one worker reads the backends' figures and warns; the others show its reading
        self.figures = FiguresPoller(engine, polls=bus is None or bus.index == 0)
        self.state = AdminState(engine, self.invalidator, self.poller, self.figures)
        self.reloader = Reloader(
            engine.loaded.path, engine.loaded.digest, loader, self.apply, engine.meter
        )
        self._runner: web.AppRunner | None = None

    async def start(self, admin_sock: socket.socket | None) -> AdminState:
        self.invalidator.start()
        self.poller.start()
        self.figures.start()
        self.reloader.start()
        if admin_sock is not None:
            self._runner = web.AppRunner(build_admin_app(self.state), access_log=None)
            await self._runner.setup()
            await web.SockSite(self._runner, admin_sock).start()
        return self.state

    async def apply(self, loaded: LoadedPolicy) -> None:
        """A validated policy: swap it in, then follow its invalidation and logging."""
        self.reloader.retire(swap_policy(self.engine, loaded))
        self.invalidator.reconfigure()

    def reload(self) -> None:
        self.reloader.request()

    async def stop_admin(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def aclose(self) -> None:
        """After the proxy port drained: stop the admin listener, watchers and tasks."""
        await self.stop_admin()
        await self.reloader.aclose()
        await self.invalidator.aclose()
        await self.poller.aclose()
        await self.figures.aclose()
