"""Read-only walks over a shared store's keyspace, for ``sidecache audit``; never on a
request path.

Redis: ``SCAN`` with ``COUNT`` on every master (each master of a cluster on its own
connection), each batch's ``PTTL`` and ``MEMORY USAGE`` pipelined, and a pause between
batches so a scan never holds Redis for long (``RATE`` keys a second at most). Memcached:
``lru_crawler metadump all`` on each server (the server's crawler walks its LRU; nothing
blocks). Library and socket errors become ``StoreError`` here, as in every store module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes, urlsplit

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from proxy.errors import StoreError, StoreUnavailable
from proxy.stores.redis_layout import PAIR, SOFT_MARK, envelope_head
from proxy.stores.redis_pump import store_error

COUNT: Final = 500  # SCAN COUNT: keys Redis looks at per call
RATE: Final = 20_000  # keys a second at most, per master (pauses between batches)
HEAD_TAGS: Final = 8  # tags an envelope head read at once covers
HEAD_BYTES: Final = SOFT_MARK + 2 + PAIR * HEAD_TAGS  # (a soft purge's mark first, maybe)
_BUSY_RETRIES: Final = 50  # metadump answers BUSY while another crawl runs


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as found: its name, seconds to live (``None``: never expires), bytes."""

    key: str
    ttl: float | None
    size: int
    node: str


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class RedisScan:
    """Every master of one Redis backend, walked with SCAN; see the module docstring."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        cluster: bool = False,
        nodes: Sequence[str] = (),
        connect_timeout: float = 2.0,
        rate: float = RATE,
    ) -> None:
        self.name = name
        self._url = url
        self._cluster = cluster or bool(nodes)
        self._nodes = list(nodes)
        self._timeout = connect_timeout
        self._rate = rate
        self._clients: dict[str, Redis] = {}

    def _client(self, url: str) -> Redis:
        return Redis.from_url(
            url, socket_connect_timeout=self._timeout, socket_timeout=max(self._timeout, 10.0)
        )

    async def masters(self) -> list[str]:
        """``host:port`` of every master (one for a single node); connects to each."""
        try:
            if not self._cluster:
                client = self._client(self._url)
                await client.ping()
                parts = urlsplit(self._url)
                self._clients[parts.netloc.rpartition("@")[2] or "127.0.0.1:6379"] = client
                return list(self._clients)
            await self._connect_cluster()
        except (rexc.RedisError, OSError) as exc:
            raise store_error(self.name, "connect", exc) from exc
        return list(self._clients)

    async def _connect_cluster(self) -> None:
        if self._nodes:
            startup = [ClusterNode(*_host_port(node)) for node in self._nodes]
            cluster = RedisCluster(startup_nodes=startup, socket_connect_timeout=self._timeout)
        else:
            cluster = RedisCluster.from_url(self._url, socket_connect_timeout=self._timeout)
        try:
            _ = await cluster.initialize()
            primaries = [(n.host, n.port) for n in cluster.get_primaries()]
        finally:
            await cluster.aclose()
        parts = urlsplit(self._url if "://" in self._url else "redis://" + self._url)
        auth = parts.netloc.rpartition("@")[0]
        for host, port in primaries:
            netloc = f"{auth + '@' if auth else ''}{host}:{port}"
            client = self._client(parts._replace(netloc=netloc, path="").geturl())
            await client.ping()
            self._clients[f"{host}:{port}"] = client

    async def scan(self, node: str, limit: int | None = None) -> AsyncIterator[list[KeyRecord]]:
        """Batches of keys on one master, at most ``limit`` of them."""
        client = self._clients[node]
        cursor, seen = 0, 0
        while True:
            began = time.monotonic()
            try:
                cursor, found = await client.scan(cursor, count=COUNT)
                raw = [k if isinstance(k, bytes) else k.encode() for k in found]
                if limit is not None:
                    raw = raw[: max(0, limit - seen)]
                records = await self._measure(client, node, raw)
            except (rexc.RedisError, OSError) as exc:
                raise store_error(self.name, "scan", exc) from exc
            seen += len(raw)
            if records:
                yield records
            if cursor == 0 or (limit is not None and seen >= limit):
                return
            # the pause that keeps this scan at RATE keys a second, whatever Redis's speed
            await asyncio.sleep(max(0.0, len(raw) / self._rate - (time.monotonic() - began)))

    async def _measure(self, client: Redis, node: str, raw: list[bytes]) -> list[KeyRecord]:
        if not raw:
            return []
        pipe = client.pipeline(transaction=False)
        for key in raw:
            _ = pipe.pttl(key)
            _ = pipe.memory_usage(key)
        answers = await pipe.execute(raise_on_error=False)
        records = []
        for i, key in enumerate(raw):
            pttl, size = answers[2 * i], answers[2 * i + 1]
            if not isinstance(pttl, int) or pttl == -2:
                continue  # gone between SCAN and PTTL
            ttl = None if pttl == -1 else pttl / 1000
            records.append(KeyRecord(_text(key), ttl, size if isinstance(size, int) else 0, node))
        return records

    async def heads(self, node: str, keys: Sequence[str]) -> list[bytes]:
        """The first bytes of each value (pipelined ``GETRANGE``): enough for an envelope's
        head with ``HEAD_TAGS`` tags; a longer head is read again, whole."""
        if not keys:
            return []
        client = self._clients[node]
        try:
            heads = await self._ranges(client, [(k, HEAD_BYTES) for k in keys])
            sizes = [
                len(h) - len(e) + 2 + PAIR * e[1] if len(e) >= 2 else 0
                for h, e in ((h, envelope_head(h)) for h in heads)
            ]
            longer = [(i, size) for i, size in enumerate(sizes) if size > HEAD_BYTES]
            more = await self._ranges(client, [(keys[i], size) for i, size in longer])
        except (rexc.RedisError, OSError) as exc:
            raise store_error(self.name, "getrange", exc) from exc
        for (i, _), head in zip(longer, more, strict=True):
            heads[i] = head
        return heads

    async def _ranges(self, client: Redis, wanted: list[tuple[str, int]]) -> list[bytes]:
        if not wanted:
            return []
        pipe = client.pipeline(transaction=False)
        for key, size in wanted:
            _ = pipe.getrange(key, 0, size - 1)
        answers = await pipe.execute(raise_on_error=False)
        return [a if isinstance(a, bytes) else b"" for a in answers]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


async def metadump(
    name: str, server: str, limit: int | None = None, timeout: float = 10.0
) -> AsyncIterator[list[KeyRecord]]:
    """Batches of the keys one memcached server holds (``lru_crawler metadump all``)."""
    host, port = _host_port(server)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailable(name, f"{server}: {str(exc) or 'connect timed out'}") from exc
    try:
        for _ in range(_BUSY_RETRIES):
            writer.write(b"lru_crawler metadump all\r\n")
            first = await asyncio.wait_for(reader.readline(), timeout)
            if not first.startswith(b"BUSY"):
                break
            await asyncio.sleep(0.1)
        else:
            raise StoreError(name, f"{server}: lru_crawler stays busy")
        if first.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
            raise StoreError(name, f"{server}: metadump refused: {_text(first.strip())}")
        async for batch in _dump_lines(reader, first, server, limit, timeout):
            yield batch
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailable(name, f"{server}: metadump: {str(exc) or 'timed out'}") from exc
    finally:
        writer.close()


async def _dump_lines(
    reader: asyncio.StreamReader, line: bytes, server: str, limit: int | None, timeout: float
) -> AsyncIterator[list[KeyRecord]]:
    now, seen = time.time(), 0
    batch: list[KeyRecord] = []
    while line and line != b"END\r\n":
        fields = dict(f.split(b"=", 1) for f in line.split() if b"=" in f)
        if b"key" in fields:
            exp = int(fields.get(b"exp", b"-1"))
            ttl = None if exp <= 0 else max(0.0, exp - now)
            key = _text(unquote_to_bytes(fields[b"key"]))
            batch.append(KeyRecord(key, ttl, int(fields.get(b"size", b"0")), server))
            seen += 1
            if limit is not None and seen >= limit:
                break  # the connection is closed after: the rest of the dump is dropped
        if len(batch) >= COUNT:
            yield batch
            batch = []
        line = await asyncio.wait_for(reader.readline(), timeout)
    if batch:
        yield batch


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)
