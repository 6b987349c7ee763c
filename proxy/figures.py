"""Backend figures: each Redis and Memcached backend's own numbers, read from the server.

``FiguresPoller`` reads Redis ``INFO`` (every master of a cluster, summed) and Memcached
``stats`` (every server, summed) every ``FIGURES_EVERY`` seconds, each on a short-lived
connection of its own (never the stores' pools), and exposes them as the
``sidecache_backend_*{backend}`` series. Every ``LIMITS_EVERY`` seconds it reads Redis's
``maxmemory`` and ``maxmemory-policy`` and warns when a full Redis would refuse writes or
grow without bound. With ``--workers N`` only the first worker polls and logs; it writes
its reading beside the metric files, and any worker's scrape reads it: one figure per
backend, never N.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.engine import Engine
from proxy.logs import event
from proxy.metrics import MULTIPROC_ENV, is_multiprocess
from proxy.policy import Backend, MemcachedBackend, RedisBackend

log = logging.getLogger("sidecache")

FIGURES_EVERY: Final = 15.0  # seconds between two readings of every backend
LIMITS_EVERY: Final = 60.0  # seconds between two checks of Redis's maxmemory settings
REWARN_EVERY: Final = 3600.0  # an unchanged bad setting is warned about again this often
STALE_AFTER: Final = 4 * FIGURES_EVERY  # an older reading is shown as the backend down
READ_TIMEOUT: Final = 2.0  # seconds for one server's figures, connection included
SHARE_FILE: Final = "backend-figures.json"
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


# ---------------------------------------------------------------- the poller


class FiguresPoller:
    """Reads every shared backend's figures on a timer (``polls``) and exposes the
    latest reading: this process's own, or with ``--workers N`` the polling worker's,
    shared through a file beside the metric files."""

    def __init__(self, engine: Engine, *, polls: bool = True) -> None:
        self.engine = engine
        self.polls = polls
        self.readings: dict[str, Figures] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._warned: dict[str, tuple[str | None, float]] = {}  # advice, monotonic time
        self._fallback_said: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._started = 0  # refreshes begun; a reading older than the one shown is dropped
        self._shown = 0

    def start(self) -> None:
        if self.polls:
            self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        last_check = -LIMITS_EVERY
        while True:
            try:
                await self.refresh()
                if time.monotonic() - last_check >= LIMITS_EVERY:
                    last_check = time.monotonic()
                    await self.check_limits()
            except Exception:  # a figures bug must not stop the worker
                log.exception("reading backend figures failed")
            await asyncio.sleep(FIGURES_EVERY)

    def _backends(self) -> dict[str, Backend]:
        return dict(self.engine.loaded.policy.backends)

    async def refresh(self) -> dict[str, Figures]:
        """Read every shared backend now (at start-up, then every ``FIGURES_EVERY``)."""
        backends = self._backends()
        self._started += 1
        mine = self._started
        found = await asyncio.gather(*(read_backend(n, c) for n, c in backends.items()))
        readings = {f.backend: f for f in found if f is not None}
        # Reads overlap (the timer's and an explicit one): a read that began earlier but
        # answered later (a reply already buffered when the server went down) must not
        # replace a newer reading.
        if mine > self._shown:
            self._shown = mine
            self.readings = readings
            if self._share_path() is not None:
                await asyncio.to_thread(self._share)  # a file write: off the event loop
        return readings

    async def check_limits(self) -> None:
        """Warn about every Redis backend without maxmemory or with ``noeviction``: at
        the first reading, when the setting changes, and hourly while it stays."""
        for name, config in self._backends().items():
            if not isinstance(config, RedisBackend):
                continue
            try:
                limits, fell_back = await read_limits(config)
            except READ_ERRORS:
                continue  # unreachable: its figures say so (up 0); checked next time
            if fell_back and name not in self._fallback_said:
                self._fallback_said.add(name)
                event(
                    "backend_limits",
                    f"backend {name}: CONFIG GET maxmemory was refused (a managed service?); "
                    "maxmemory and maxmemory-policy read from INFO memory instead",
                    backend=name,
                )
            self._warn(name, limits_advice(name, limits), limits)

    def _warn(self, name: str, advice: str | None, limits: list[Limits]) -> None:
        before, when = self._warned.get(name, (None, -REWARN_EVERY))
        now = time.monotonic()
        if advice is not None and (advice != before or now - when >= REWARN_EVERY):
            event(
                "backend_limits",
                advice,
                level=logging.WARNING,
                backend=name,
                maxmemory=[lim.maxmemory for lim in limits],
                maxmemory_policy=[lim.policy for lim in limits],
                source=limits[0].source if limits else None,
            )
            self._warned[name] = (advice, now)
        elif advice is None:
            self._warned.pop(name, None)

    # ------------------------------------------------------------ sharing across workers

    @staticmethod
    def _share_path() -> str | None:
        directory = os.environ.get(MULTIPROC_ENV)
        return os.path.join(directory, SHARE_FILE) if is_multiprocess() and directory else None

    def _share(self) -> None:
        path = self._share_path()
        if path is None:
            return
        doc = orjson.dumps([asdict(f) for f in self.readings.values()])
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "wb") as out:  # a few hundred bytes every 15 s
            out.write(doc)
        os.replace(temporary, path)  # readers see the old file or the new, whole

    def current(self) -> dict[str, Figures]:
        """The latest reading by backend name (a stale one shows the backend down)."""
        readings = self.readings
        path = self._share_path()
        if not self.polls and path is not None:
            try:
                with open(path, "rb") as shared:
                    readings = {d["backend"]: Figures(**d) for d in orjson.loads(shared.read())}
            except (OSError, ValueError, TypeError):
                readings = {}
        now = time.time()
        backends = self._backends()
        out = {}
        for name, figures in readings.items():
            if name not in backends:
                continue  # removed by a reload
            if now - figures.read_at > STALE_AFTER and figures.up:
                figures = Figures(name, figures.type, False, figures.read_at, error="stale")
            out[name] = figures
        return out

    # ------------------------------------------------------------ prometheus

    def collect(self) -> Iterator[Metric]:
        """The ``sidecache_backend_*`` families (a collector for ``self.registry``)."""
        figures = sorted(self.current().values(), key=lambda f: f.backend)
        up = GaugeMetricFamily(
            "sidecache_backend_up",
            "1 when the last read of the backend's own figures succeeded",
            labels=["backend"],
        )
        for f in figures:
            up.add_metric([f.backend], 1.0 if f.up else 0.0)
        yield up
        for kind, name, doc, field in SERIES:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, doc, labels=["backend"]
            )
            for f in figures:
                if f.up:
                    family.add_metric([f.backend], float(getattr(f, field)))
            yield family

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterable[Metric]:
        return self.registry.collect()


SERIES: Final = (
    (
        "gauge",
        "sidecache_backend_memory_bytes",
        "Redis used_memory, Memcached bytes",
        "memory_bytes",
    ),
    (
        "gauge",
        "sidecache_backend_memory_limit_bytes",
        "Redis maxmemory (0: no limit), Memcached limit_maxbytes",
        "memory_limit_bytes",
    ),
    (
        "counter",
        "sidecache_backend_evictions",
        "Redis evicted_keys, Memcached evictions",
        "evictions",
    ),
    ("counter", "sidecache_backend_hits", "Redis keyspace_hits, Memcached get_hits", "hits"),
    (
        "counter",
        "sidecache_backend_misses",
        "Redis keyspace_misses, Memcached get_misses",
        "misses",
    ),
    (
        "gauge",
        "sidecache_backend_connections",
        "Redis connected_clients, Memcached curr_connections",
        "connections",
    ),
    ("gauge", "sidecache_backend_items", "Redis keys of the db, Memcached curr_items", "items"),
)
