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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from proxy.engine import Engine
from proxy.errors import StoreError
from proxy.exchange import Exchange, ProxyResponse
from proxy.fanout import Subscriber, WorkerBus
from proxy.keys import derive_key, path_tags, route_tag, user_tag
from proxy.logs import event
from proxy.stores.base import Store
from proxy.stores.guard import GuardedStore
from proxy.stores.redis import RedisStore
from proxy.stores.tiered import L2_FILL_TAG, TieredStore

log = logging.getLogger("sidecache")

FIELDS: Final = ("urls", "prefixes", "tags", "routes")
MAX_ITEMS: Final = 10_000  # per purge request
PUBLISH_TIMEOUT: Final = 1.0
MAX_DATAGRAM: Final = 60_000


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    """What to purge; the JSON of ``POST /purge`` and of the pub/sub messages.

    ``store_tags`` is internal (unsafe-method invalidation hands over the engine's own
    index tags); ``source`` names the replica that already purged the shared stores.
    """

    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    store_tags: tuple[str, ...] = ()
    source: str | None = None

    @staticmethod
    def parse(data: object, *, internal: bool = True) -> PurgeRequest:
        """Validate decoded JSON; ``ValueError`` says what is wrong. The admin API
        parses with ``internal=False``: callers name only the four public fields."""
        if not isinstance(data, dict):
            raise ValueError('expected a JSON object like {"urls": ["/path"]}')
        unknown = set(data) - ({*FIELDS, "store_tags", "source"} if internal else set(FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        lists: dict[str, tuple[str, ...]] = {}
        for name in (*FIELDS, "store_tags"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name}: expected a list of non-empty strings")
            lists[name] = tuple(value)
        for prefix in lists["prefixes"]:
            if not prefix.startswith("/"):
                raise ValueError(f"prefixes: {prefix!r} must start with /")
        for url in lists["urls"]:
            if not urlsplit(url).path.startswith("/"):
                raise ValueError(f"urls: {url!r} is neither a path nor an http(s) URL")
        if sum(len(v) for v in lists.values()) > MAX_ITEMS:
            raise ValueError(f"more than {MAX_ITEMS} items in one purge")
        source = data.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError("source: expected a string")
        return PurgeRequest(**lists, source=source)

    def is_empty(self) -> bool:
        return not (self.urls or self.prefixes or self.tags or self.routes or self.store_tags)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {n: list(getattr(self, n)) for n in (*FIELDS, "store_tags")}
        doc = {n: v for n, v in doc.items() if v}
        if self.source is not None:
            doc["source"] = self.source
        return orjson.dumps(doc)

    def chunks(self, limit: int = MAX_DATAGRAM) -> list[bytes]:
        """The request as messages of at most ``limit`` bytes (split by halving lists)."""
        payload = self.to_json()
        if len(payload) <= limit:
            return [payload]
        if len(self.urls + self.prefixes + self.tags + self.routes + self.store_tags) < 2:
            return []  # one item over the limit: nothing sane to send
        halves = [self._half(0), self._half(1)]
        return halves[0].chunks(limit) + halves[1].chunks(limit)

    def _half(self, which: int) -> PurgeRequest:
        def cut(items: tuple[str, ...]) -> tuple[str, ...]:
            middle = len(items) // 2
            return items[middle:] if which else items[:middle]

        return PurgeRequest(
            cut(self.urls),
            cut(self.prefixes),
            cut(self.tags),
            cut(self.routes),
            cut(self.store_tags),
            self.source,
        )


@dataclass(slots=True)
class Plan:
    keys: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)


def plan(engine: Engine, request: PurgeRequest) -> Plan:
    """The keys and index tags a request names, under the engine's current policy.

    An absolute URL names one primary key (the key includes the Host clients sent), unless
    its route keys on headers, cookies or identity: then, like a bare path, it names the
    path's index tag, which covers every query string, host and variant of the path (and
    the paths below it, as RFC 9111 §4.4 invalidation does here). ``/`` as a prefix is
    everything: every route's tag.
    """
    out = Plan(tags=set(request.store_tags))
    out.tags.update(user_tag(tag) for tag in request.tags)
    out.tags.update(route_tag(name) for name in request.routes)
    for prefix in request.prefixes:
        if prefix.strip("/"):
            out.tags.add(path_tags(prefix)[-1])
        else:
            out.tags.update(route_tag(route.name) for route in engine.loaded.routes)
    for url in request.urls:
        parts = urlsplit(url)
        route, _ = engine.router.match("GET", (parts.hostname or "").lower(), parts.path)
        spec = route.config
        if parts.netloc and not (spec.key.headers or spec.key.cookies or spec.cache_authorized):
            host = parts.netloc.lower()
            out.keys.add(derive_key(spec.name, host, parts.path, parts.query, spec.key, {}))
        else:
            out.tags.add(path_tags(parts.path)[-1])
    return out


@dataclass(frozen=True, slots=True)
class Layer:
    """One distinct underlying store; ``l1`` when it fronts a shared store (tiered)."""

    store: Store
    l1: bool = False


def layers(stores: dict[str, Store]) -> list[Layer]:
    """Every distinct underlying store once, tiered stores taken apart."""
    l1s = {id(store.l1) for store in stores.values() if isinstance(store, TieredStore)}
    seen: set[int] = set()
    out: list[Layer] = []
    for store in stores.values():
        parts = (store.l1, store.l2) if isinstance(store, TieredStore) else (store,)
        for part in parts:
            if id(part) not in seen:
                seen.add(id(part))
                out.append(Layer(part, id(part) in l1s))
    return out


@dataclass(slots=True)
class PurgeResult:
    """What a purge did here: counted removals, stores that cannot count, failures."""

    removed: int = 0
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
        engine.purge_hook = self._after_unsafe
        engine.purge_method = self.purge_method

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

    def _channel(self) -> tuple[RedisStore | None, str | None]:
        config = self.engine.loaded.policy.invalidation
        if config is None:
            return None, None
        store = self.engine.stores.get(config.redis)
        inner = store.inner if isinstance(store, GuardedStore) else store
        return (inner, config.channel) if isinstance(inner, RedisStore) else (None, None)

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
        event(
            "purge",
            f"purge from {source}: {result.removed} removed",
            source=source,
            request=orjson.loads(request.to_json()),
            **result.as_json(),
        )
        return result

    async def apply(self, request: PurgeRequest, *, local_only: bool) -> PurgeResult:
        todo = plan(self.engine, request)
        result = PurgeResult()
        for layer in layers(self.engine.stores):
            store = layer.store
            if local_only and store.shared:
                continue
            tags = sorted(todo.tags)
            if layer.l1 and tags:
                # copies an L1 took from L2 carry no tags of their own (see tiered.py)
                tags.append(L2_FILL_TAG)
            try:
                removed = await store.delete(sorted(todo.keys)) if todo.keys else 0
                found = await store.purge_tags(tags) if tags else 0
            except StoreError as exc:
                result.errors[store.name] = str(exc)
                continue
            removed += max(found, 0)
            result.stores[store.name] = removed if found >= 0 else -1
            if not layer.l1:  # an L1 holds copies of L2 entries: count those once
                result.removed += removed
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

    async def _publish(self, backend: RedisStore, channel: str, payload: bytes) -> int:
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
        from an address in ``admin.purge_from`` only (403 otherwise)."""
        allowed = self.engine.loaded.policy.admin.purge_from
        if not peer_allowed(ex.client, allowed):
            body = {"error": f"PURGE is not allowed from {ex.client or 'this address'}"}
            return _json_response(403, body)
        url = f"{ex.scheme}://{ex.host}{ex.target}" if ex.host else ex.target
        result = await self.purge(PurgeRequest(urls=(url,)), source="proxy")
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
