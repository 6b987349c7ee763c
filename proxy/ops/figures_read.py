"""Backend figures read from the servers: Redis ``INFO`` (every master of a cluster,
summed), Redis ``maxmemory`` settings with the advice they call for, and Memcached
``stats`` (every server, summed), each on a short-lived connection of its own (never the
stores' pools). ``proxy.ops.figures`` polls these on a timer and exposes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.policy.load import Backend, MemcachedBackend, RedisBackend

READ_TIMEOUT: Final = 2.0  # seconds for one server's figures, connection included
# what a failed read raises (redis-py's cluster errors are not all RedisErrors)
READ_ERRORS: Final = (
    OSError,
    TimeoutError,
    ValueError,
    rexc.RedisError,
    rexc.RedisClusterException,
)
EVICTING: Final = "volatile-lru or allkeys-lru"  # what to set instead of noeviction


@dataclass(frozen=True, slots=True)
class Figures:
    """One backend's figures as the server(s) reported them (summed over servers)."""

    backend: str
    type: str
    up: bool
    read_at: float
    memory_bytes: int = 0
    memory_limit_bytes: int = 0  # 0: no limit (Redis without maxmemory)
    evictions: int = 0
    hits: int = 0
    misses: int = 0
    connections: int = 0
    items: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """A Redis server's eviction settings and where they were read from."""

    node: str
    maxmemory: int
    policy: str
    source: str  # "CONFIG GET" or "INFO memory" (CONFIG refused, as managed services do)


# ---------------------------------------------------------------- reading Redis


def _redis_kwargs() -> dict[str, Any]:
    # one short-lived connection: no retries, every call bounded
    return {
        "socket_timeout": READ_TIMEOUT,
        "socket_connect_timeout": READ_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def _cluster_client(config: RedisBackend) -> RedisCluster:
    if config.nodes:
        parts = urlsplit(config.url)
        startup = []
        for node in config.nodes:
            host, _, port = node.rpartition(":")
            startup.append(ClusterNode(host.strip("[]"), int(port)))
        return RedisCluster(
            startup_nodes=startup,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ssl=parts.scheme == "rediss",
            **_redis_kwargs(),
        )
    return RedisCluster.from_url(config.url, **_redis_kwargs())


async def _redis_infos(config: RedisBackend) -> dict[str, dict[str, Any]]:
    """``INFO`` of the server, or of every master of a cluster, by node address."""
    if config.cluster or config.nodes:
        cluster = _cluster_client(config)
        try:
            answer: dict[str, Any] = await cluster.info(target_nodes=RedisCluster.PRIMARIES)
        finally:
            await cluster.aclose()
        if not answer:
            raise ConnectionError("no master answered")
        # one master answers its INFO alone, several by node name
        if all(isinstance(v, dict) for v in answer.values()):
            return dict(answer)
        return {"master": answer}
    client = Redis.from_url(config.url, **_redis_kwargs())
    try:
        info = await client.info()
    finally:
        await client.aclose()
    return {_address(config.url): info}


def _address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def _db_keys(info: dict[str, Any], db: int) -> int:
    space = info.get(f"db{db}")
    return int(space.get("keys", 0)) if isinstance(space, dict) else 0


async def read_redis(name: str, config: RedisBackend) -> Figures:
    """``INFO``: used_memory, maxmemory, evicted_keys, keyspace hits and misses,
    connected_clients and the keys of the backend's database; a cluster's masters
    summed (a cluster has only db 0)."""
    infos = await _redis_infos(config)
    db = 0 if (config.cluster or config.nodes) else _url_db(config.url)

    def total(field: str) -> int:
        return sum(int(info.get(field, 0) or 0) for info in infos.values())

    return Figures(
        backend=name,
        type="redis",
        up=True,
        read_at=time.time(),
        memory_bytes=total("used_memory"),
        memory_limit_bytes=total("maxmemory"),
        evictions=total("evicted_keys"),
        hits=total("keyspace_hits"),
        misses=total("keyspace_misses"),
        connections=total("connected_clients"),
        items=sum(_db_keys(info, db) for info in infos.values()),
    )


def _url_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


async def read_limits(config: RedisBackend) -> tuple[list[Limits], bool]:
    """``maxmemory`` and ``maxmemory-policy`` of every server (every master of a
    cluster); answers whether ``CONFIG GET`` was refused and ``INFO memory`` read instead."""
    infos = await _redis_infos(config)
    try:
        configs = await _config_get(config)
    except rexc.ResponseError as exc:
        if isinstance(exc, rexc.ClusterError):
            raise
        configs = None  # CONFIG renamed or forbidden (managed services)
    limits = []
    for node, info in infos.items():
        found = configs.get(node) if configs is not None else None
        if found is not None:
            maxmemory, policy, source = found[0], found[1], "CONFIG GET"
        else:
            maxmemory = int(info.get("maxmemory", 0) or 0)
            policy, source = str(info.get("maxmemory_policy", "unknown")), "INFO memory"
        limits.append(Limits(node, maxmemory, policy, source))
    return limits, configs is None


async def _config_get(config: RedisBackend) -> dict[str, tuple[int, str]]:
    if config.cluster or config.nodes:
        cluster = _cluster_client(config)
        try:
            sizes: Any = await cluster.config_get("maxmemory", target_nodes=RedisCluster.PRIMARIES)
            policies: Any = await cluster.config_get(
                "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES
            )
        finally:
            await cluster.aclose()
        if "maxmemory" in sizes:  # one master: its answer alone, not by node
            return {"master": (int(sizes["maxmemory"]), str(policies["maxmemory-policy"]))}
        return {
            node: (int(sizes[node]["maxmemory"]), str(policies[node]["maxmemory-policy"]))
            for node in sizes
        }
    client = Redis.from_url(config.url, decode_responses=True, **_redis_kwargs())
    try:
        size: Any = await client.config_get("maxmemory")
        policy: Any = await client.config_get("maxmemory-policy")
    finally:
        await client.aclose()
    return {_address(config.url): (int(size["maxmemory"]), str(policy["maxmemory-policy"]))}


def limits_advice(name: str, limits: list[Limits]) -> str | None:
    """One warning line for a backend whose Redis would grow unbounded or refuse writes
    when full, naming the backend, the servers and what to set; ``None`` when fine."""
    unbounded = [lim.node for lim in limits if lim.maxmemory == 0]
    refusing = [lim for lim in limits if lim.maxmemory and lim.policy == "noeviction"]
    problems = []
    if unbounded:
        problems.append(
            f"no maxmemory on {', '.join(unbounded)}: Redis grows until the machine runs "
            f"out of memory; set maxmemory (e.g. maxmemory 1gb) with maxmemory-policy "
            f"{EVICTING}"
        )
    if refusing:
        nodes = ", ".join(f"{lim.node} (maxmemory {lim.maxmemory} B)" for lim in refusing)
        problems.append(
            f"maxmemory-policy noeviction on {nodes}: once full Redis refuses every write "
            f"and new responses are not cached; set maxmemory-policy {EVICTING}"
        )
    if not problems:
        return None
    return f"backend {name}: " + "; ".join(problems)


# ---------------------------------------------------------------- reading Memcached


async def _memcached_stats(server: str) -> dict[str, str]:
    host, _, port = server.rpartition(":")

    async def read() -> dict[str, str]:
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            writer.write(b"stats\r\n")
            stats: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("ascii", "replace").strip()
                if line == "END":
                    return stats
                if not line or not line.startswith("STAT "):
                    raise ConnectionError(f"unexpected answer to stats: {line[:80]!r}")
                _, field, value = line.split(" ", 2)
                stats[field] = value
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(read(), READ_TIMEOUT)


async def read_memcached(name: str, config: MemcachedBackend) -> Figures:
    """``stats`` of every server, summed: bytes, limit_maxbytes, evictions, curr_items,
    curr_connections, get_hits and get_misses."""
    every = await asyncio.gather(*(_memcached_stats(server) for server in config.servers))

    def total(field: str) -> int:
        return sum(int(stats.get(field, "0")) for stats in every)

    return Figures(
        backend=name,
        type="memcached",
        up=True,
        read_at=time.time(),
        memory_bytes=total("bytes"),
        memory_limit_bytes=total("limit_maxbytes"),
        evictions=total("evictions"),
        hits=total("get_hits"),
        misses=total("get_misses"),
        connections=total("curr_connections"),
        items=total("curr_items"),
    )


async def read_backend(name: str, config: Backend) -> Figures | None:
    """A backend's figures (``up=False`` with the reason when the read failed), or
    ``None`` for a backend without server figures (memory, tiered)."""
    if not isinstance(config, RedisBackend | MemcachedBackend):
        return None
    try:
        if isinstance(config, RedisBackend):
            return await read_redis(name, config)
        return await read_memcached(name, config)
    except READ_ERRORS as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Figures(name, config.type, up=False, read_at=time.time(), error=why)
