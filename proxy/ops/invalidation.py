"""Purges: by URL, path prefix, tag and route, here and in every other worker and replica.

``Invalidator`` turns a purge request into store operations (exact keys for absolute
URLs, index tags for the rest) and fans it out (``fanout.py``): to this replica's other
workers over their Unix datagram sockets, and to other replicas over the policy's Redis
pub/sub channel. Shared
stores are purged once, by the process that took the request; every process drops its
own process-local entries (memory stores, tiered L1s). No HTTP here: ``admin.py`` and
``server.py`` parse requests and call ``purge``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from proxy.core.entry import EntryError, VaryMarker, decode
from proxy.core.exchange import Exchange, ProxyResponse
from proxy.core.keys import derive_key, normalize_path, path_tags, route_tag, user_tag
from proxy.engine.driver import Engine
from proxy.errors import StoreError
from proxy.obs.logs import event
from proxy.ops.fanout import Subscriber, WorkerBus
from proxy.ops.purgerequest import PurgeRequest
from proxy.policy.load import RouteConfig
from proxy.stores.base import Channel, Store

log = logging.getLogger("sidecache")

PUBLISH_TIMEOUT: Final = 1.0


def unknown_routes(engine: Engine, request: PurgeRequest) -> list[str]:
    """Route names of ``request`` the running policy does not have."""
    names = {route.name for route in engine.loaded.routes}
    return [name for name in request.routes if name not in names]


@dataclass(slots=True)
class Target:
    """What to remove from one backend: exact keys and index tags."""

    keys: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)


def plan(engine: Engine, request: PurgeRequest) -> dict[str, Target]:
    """The keys and index tags a request names, by backend, under the current policy.

    An absolute URL names one primary key (the key includes the Host clients sent), unless
    its route keys on headers, cookies or identity: then, like a bare path, it names the
    path's index tag, which covers every query string, host and variant of the path (and
    the paths below it, as RFC 9111 §4.4 invalidation does here). ``/`` as a prefix is
    everything: every route's tag. A backend is named only when a route that stores in
    it can hold what the request names, so a purge touches no store it cannot concern.
    """
    routes = [r for r in engine.loaded.routes if r.cache]
    out: dict[str, Target] = {}

    def add(backends: Iterable[str], *, keys: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        keys, tags = list(keys), list(tags)
        if not (keys or tags):
            return
        for backend in backends:
            target = out.setdefault(backend, Target())
            target.keys.update(keys)
            target.tags.update(tags)

    everywhere = {route.backend for route in routes}
    add(everywhere, tags=request.store_tags)
    add(everywhere, tags=(user_tag(tag) for tag in request.tags))
    by_name = {route.name: route for route in routes}
    for name in request.routes:
        known = by_name.get(name)
        # a route this replica does not know (a reload elsewhere): look everywhere
        add([known.backend] if known else everywhere, tags=[route_tag(name)])
    for prefix in request.prefixes:
        prefix = _normalized(prefix)
        if prefix.strip("/"):
            holders = (r.backend for r in routes if may_hold(r, prefix))
            add(holders, tags=[path_tags(prefix)[-1]])
        else:
            for route in routes:
                add([route.backend], tags=[route_tag(route.name)])
    for url in request.urls:
        parts = urlsplit(url)
        parts = parts._replace(path=_normalized(parts.path))
        matched, _ = engine.router.match("GET", (parts.hostname or "").lower(), parts.path)
        spec = matched.config
        if parts.netloc and not (spec.key.headers or spec.key.cookies or spec.cache_authorized):
            host = parts.netloc.lower()
            if spec.cache:
                key = derive_key(spec.name, host, parts.path, parts.query, spec.key, {})
                add([spec.backend], keys=[key])
        else:
            holders = (r.backend for r in routes if may_hold(r, parts.path))
            add(holders, tags=[path_tags(parts.path)[-1]])
    return out


def _normalized(path: str) -> str:
    """A purge's path as requests are stored under it (``parse`` refused the ones the
    proxy port refuses; one that slips through here is taken as it is)."""
    try:
        return normalize_path(path)
    except ValueError:
        return path


def may_hold(route: RouteConfig, prefix: str) -> bool:
    """Whether ``route`` can match a path at or under ``prefix`` (when unsure: yes)."""
    under = prefix.rstrip("/")
    if not under:
        return True
    match = route.match
    if match.prefix is not None:
        own = match.prefix.rstrip("/")
        return not own or own == under or own.startswith(under + "/") or under.startswith(own + "/")
    if match.path is not None:
        literal = match.path.split("{", 1)[0]
        if literal == match.path:  # no parameter: exactly one path
            return literal.rstrip("/") == under or literal.startswith(under + "/")
        return literal.startswith(under + "/") or (under + "/").startswith(literal)
    return True  # a regex, or no match at all (the defaults): anything


@dataclass(frozen=True, slots=True)
class Layer:
    """One distinct underlying store; ``copies`` when it is the L1 of a tiered store the
    purge concerns: its copies of L2 entries are dropped first and counted in L2."""

    store: Store
    copies: str | None = None  # the tag of those copies


def layers(stores: dict[str, Store], targets: dict[str, Target]) -> list[tuple[Layer, Target]]:
    """Every distinct underlying store a purge concerns, tiered stores taken apart, with
    what to remove from it."""
    found: dict[int, tuple[Store, Target]] = {}
    copies: dict[int, str] = {}
    for name, target in targets.items():
        store = stores.get(name)
        if store is None:
            continue
        tiers = store.tiers()
        parts = (tiers.l1, tiers.l2) if tiers is not None else (store,)
        if tiers is not None:
            copies[id(tiers.l1)] = tiers.fill_tag
        for part in parts:
            _, merged = found.setdefault(id(part), (part, Target()))
            merged.keys |= target.keys
            merged.tags |= target.tags
    return [(Layer(store, copies.get(id(store))), target) for store, target in found.values()]


@dataclass(slots=True)
class PurgeResult:
    """What a purge did here: counted removals (or, for a soft purge, entries marked
    stale), stores that cannot count, failures."""

    removed: int = 0
    softened: int = 0
    stores: dict[str, int] = field(default_factory=dict)  # -1: cannot count
    errors: dict[str, str] = field(default_factory=dict)
    workers: int | None = None  # other workers of this replica told
    replicas: int | None = None  # subscribers that received the message (None: no channel)

    @property
    def queued(self) -> bool:
        return any(n < 0 for n in self.stores.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "softened": self.softened,
            "queued": self.queued,
            "stores": self.stores,
            "workers": self.workers,
            "replicas": self.replicas,
            "errors": self.errors,
        }


class Invalidator:
    """Purges for one worker: local stores, shared stores, and the fan-out."""

    def __init__(self, engine: Engine, *, replica: str, bus: WorkerBus | None = None) -> None:
        self.engine = engine
        self.replica = replica
        self.bus = bus
        self.subscriber: Subscriber | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        engine.handle_purges(self._after_unsafe, self.purge_method)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.bus is not None:
            self.bus.listen(lambda payload: self._spawn(self.receive(payload, "workers")))
        self.reconfigure()

    def reconfigure(self) -> None:
        """(Re)start the subscriber when the policy's channel or its Redis changed."""
        backend, channel = self._channel()
        current = self.subscriber
        if current is not None and (current.backend, current.channel) == (backend, channel):
            return
        if current is not None:
            current.stop()
            self.subscriber = None
        if backend is not None and channel is not None:
            self.subscriber = Subscriber(backend, channel, self.engine.meter, self.receive)
            self.subscriber.start()

    async def aclose(self) -> None:
        if self.bus is not None:
            self.bus.close()
        if self.subscriber is not None:
            self.subscriber.stop()
            await self.subscriber.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _channel(self) -> tuple[Channel | None, str | None]:
        config = self.engine.loaded.policy.invalidation
        if config is None:
            return None, None
        store = self.engine.stores.get(config.redis)
        backend = store.channel() if store is not None else None
        return (backend, config.channel) if backend is not None else (None, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ purging

    async def purge(self, request: PurgeRequest, *, source: str) -> PurgeResult:
        """Purge everywhere: shared and local stores here, then tell the others."""
        result = await self.apply(request, local_only=False)
        result.workers, result.replicas = await self.fan_out(request, result)
        self.engine.meter.purge(source, result.removed)
        done = f"{result.softened} softened" if request.soft else f"{result.removed} removed"
        event(
            "purge",
            f"{'soft ' if request.soft else ''}purge from {source}: {done}",
            source=source,
            request=orjson.loads(request.to_json()),
            **result.as_json(),
        )
        return result

    async def apply(self, request: PurgeRequest, *, local_only: bool) -> PurgeResult:
        """Remove what ``request`` names from every store it concerns. ``removed`` counts
        each entry once: an L1's copies of L2 entries are dropped first, uncounted (L2
        counts them), so what the L1 then removes are entries only it held."""
        result = PurgeResult()
        for layer, target in layers(self.engine.stores, plan(self.engine, request)):
            store = layer.store
            if local_only and store.shared:
                continue
            try:
                if layer.copies is not None:
                    # L1's copies of L2 entries go, softly or not: read again, they come
                    # back from L2 as it now has them (marked, after a soft purge)
                    await store.purge_tags([layer.copies])
                if request.soft:
                    keys = await _with_variants(store, target.keys)
                    done = await store.soften(sorted(keys)) if keys else 0
                    found = await store.soften_tags(sorted(target.tags)) if target.tags else 0
                else:
                    done = await store.delete(sorted(target.keys)) if target.keys else 0
                    found = await store.purge_tags(sorted(target.tags)) if target.tags else 0
            except StoreError as exc:
                result.errors[store.name] = str(exc)
                continue
            done += max(found, 0)
            result.stores[store.name] = done if found >= 0 else -1
            if request.soft:
                result.softened += done
            else:
                result.removed += done
        return result

    async def fan_out(
        self, request: PurgeRequest, result: PurgeResult
    ) -> tuple[int | None, int | None]:
        message = replace(request, source=self.replica)
        workers = None
        if self.bus is not None:
            workers = self.bus.send_all(message.chunks(), self.engine.meter)
            if workers < len(self.bus.peers):
                result.errors["workers"] = f"told {workers} of {len(self.bus.peers)} workers"
        backend, channel = self._channel()
        if backend is None or channel is None:
            return workers, None
        receivers = 0
        for payload in message.chunks():
            try:
                receivers = await self._publish(backend, channel, payload)
            except (StoreError, TimeoutError) as exc:
                self.engine.meter.message_failed("redis")
                why = str(exc) or "timeout"
                result.errors["channel"] = f"publish to {channel!r} failed: {why}"
                return workers, None
        return workers, receivers

    async def _publish(self, backend: Channel, channel: str, payload: bytes) -> int:
        # Once more on failure: after a Redis restart the pooled connection is dead, and
        # the pool drops it on that first error; the second try gets a new one.
        publish = functools.partial(backend.publish, channel, payload)
        try:
            receivers = await asyncio.wait_for(publish(), PUBLISH_TIMEOUT)
        except (StoreError, TimeoutError):
            receivers = await asyncio.wait_for(publish(), PUBLISH_TIMEOUT)
        self.engine.meter.message("redis", "out")
        return receivers

    async def purge_method(self, ex: Exchange) -> ProxyResponse:
        """``PURGE <target>`` on the proxy port: the URL as this client would request it,
        from an address in ``admin.purge_from`` only (403 otherwise); a soft purge with
        ``Sidecache-Soft: 1``."""
        allowed = self.engine.loaded.policy.admin.purge_from
        if not peer_allowed(ex.client, allowed):
            body = {"error": f"PURGE is not allowed from {ex.client or 'this address'}"}
            return _json_response(403, body)
        url = f"{ex.scheme}://{ex.host}{ex.target}" if ex.host else ex.target
        soft = ex.hmap.get("sidecache-soft", "0").strip()
        if soft not in ("0", "1"):
            body = {"error": f"Sidecache-Soft: expected 1 (a soft purge) or 0, got {soft!r}"}
            return _json_response(400, body)
        wanted = PurgeRequest(urls=(url,), soft=soft == "1")
        result = await self.purge(wanted, source="proxy")
        return _json_response(503 if result.errors else 200, result.as_json())

    async def _after_unsafe(self, tags: Sequence[str]) -> None:
        """The engine's hook for RFC 9111 §4.4 (and ``invalidates``): purge here at once;
        the other workers and replicas are told in the background."""
        request = PurgeRequest(store_tags=tuple(tags))
        result = await self.apply(request, local_only=False)
        self.engine.meter.purge("unsafe", result.removed)
        self._spawn(self.fan_out(request, result))

    async def receive(self, payload: bytes, transport: str) -> None:
        """A message from another worker or the channel: drop our local copies (and the
        shared ones too, when a non-sidecache publisher sent it)."""
        self.engine.meter.message(transport, "in")
        try:
            request = PurgeRequest.parse(orjson.loads(payload))
        except (ValueError, orjson.JSONDecodeError) as exc:
            self.engine.meter.message_failed(transport)
            log.warning("ignored a purge message on %s: %s", transport, exc)
            return
        if request.source == self.replica and transport != "workers":
            return  # ours: this replica applied it and told its workers directly
        result = await self.apply(request, local_only=request.source is not None)
        self.engine.meter.purge(transport, result.removed)
        if result.errors:
            log.warning("purge message on %s failed in part: %s", transport, result.errors)


async def _with_variants(store: Store, keys: Iterable[str]) -> set[str]:
    """``keys`` and, where one holds a Vary marker (RFC 9111 §4.1), the keys of the
    variants it lists: a soft purge marks the responses, which the variants are (a purge
    removes the marker, which hides them)."""
    found = sorted(set(keys))
    variants: set[str] = set()
    for raw in await store.get_many(found) if found else []:
        try:
            value = decode(raw) if raw is not None else None
        except EntryError:
            continue
        if isinstance(value, VaryMarker):
            variants.update(value.variants)
    return {*found, *variants}


def new_replica_id() -> str:
    """Names this replica (all its workers) in fan-out messages."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


def peer_allowed(
    address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether a client address lies in one of ``networks`` (IPv4-mapped IPv6 as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _json_response(status: int, body: dict[str, Any]) -> ProxyResponse:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    return ProxyResponse(status, headers, orjson.dumps(body) + b"\n", cache="PURGE")
