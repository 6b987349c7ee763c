"""Backend figures (issue 15 item 2): the ``sidecache_backend_*`` series of a running
proxy equal what real Redis (``INFO``), a real Redis Cluster (every master, summed) and
real Memcached (``stats``) report; one figure per backend with ``--workers 2``; a backend
that cannot be read is ``up 0``."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from mirakuru import TCPExecutor
from redis import Redis

from proxy.ops.figures import Figures
from proxy.ops.report import render
from tests.conftest import Origin, SpawnProxy, free_port, policy_text
from tests.ops.conftest import (
    LiveProxy,
    StartProxy,
    eventually,
    fetch,
    metric,
)
from tests.stores.conftest import (
    own_memcached,
    redis_cluster,  # noqa: F401 (the session cluster fixture)
    redis_executor,
    running,
)

ROUTES = """
        routes:
          - name: items
            match: {prefix: /items}
"""


def start_redis(tmp_path: Path, *extra: str) -> tuple[TCPExecutor, int]:
    port = free_port()
    executor = redis_executor(port, tmp_path / f"redis-{port}", *extra)
    executor.start()
    return executor, port


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server with a 2 MiB maxmemory that evicts (allkeys-lru)."""
    executor, port = start_redis(
        tmp_path, "--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"
    )
    try:
        yield port
    finally:
        executor.stop()


@pytest.fixture
def small_memcached() -> Iterator[int]:
    """A memcached with 4 MiB of memory, filled past it in the test."""
    with running(own_memcached("-m", "4")) as executor:
        yield executor.port


def memcached_stats(port: int, fill: int = 0) -> dict[str, int]:
    """``stats`` of a memcached, after ``fill`` 1 KiB items written with noreply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        value = b"v" * 1024
        batch = b"".join(
            b"set fill:%d 0 0 %d noreply\r\n%s\r\n" % (i, len(value), value) for i in range(fill)
        )
        gets = b"get fill:%d nosuch:1\r\n" % (fill - 1) if fill else b""
        conn.sendall(batch + gets + b"stats\r\n")
        text = b""
        while text.count(b"END\r\n") < (2 if fill else 1):
            text += conn.recv(65536)
    stats = {}
    for line in text.decode().splitlines():
        if line.startswith("STAT "):
            _, name, value_text = line.split(" ", 2)
            if value_text.isdigit():
                stats[name] = int(value_text)
    return stats


async def figures_now(proxy: LiveProxy) -> dict[str, Figures]:
    assert proxy.worker.ops is not None
    return await proxy.worker.ops.figures.refresh()


async def metrics_text(proxy: LiveProxy) -> str:
    return (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()


async def test_redis_figures_match_info(live_proxy: StartProxy, origin: Origin, small_redis: int):
    with Redis(port=small_redis) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(4000):  # 4 MiB into 2 MiB: evictions
            pipe.set(f"fill:{i}", b"x" * 1024)
        pipe.execute()
        client.get("fill:3999")
        client.get("nosuch")
    proxy = await live_proxy(
        f"""
        backends:
          shared: {{type: redis, url: "redis://127.0.0.1:{small_redis}/0", timeout: 500ms}}
        defaults: {{backend: shared, ttl: 60s}}
        {ROUTES}"""
    )
    for path in ("/items/1", "/items/2", "/items/1"):
        await proxy.get(path)
    figures = (await figures_now(proxy))["shared"]
    text = await metrics_text(proxy)
    with Redis(port=small_redis) as client:
        info = client.info()
        keys = client.dbsize()
    assert figures.up
    assert metric(text, "sidecache_backend_up", backend="shared") == 1
    assert info["evicted_keys"] > 0
    exact = {
        "sidecache_backend_memory_limit_bytes": info["maxmemory"],
        "sidecache_backend_evictions_total": info["evicted_keys"],
        "sidecache_backend_hits_total": info["keyspace_hits"],
        "sidecache_backend_misses_total": info["keyspace_misses"],
        "sidecache_backend_items": keys,
    }
    for name, expected in exact.items():
        assert metric(text, name, backend="shared") == expected, name
    assert info["maxmemory"] == 2 * 1024**2
    # these move a little with every connection (the test's own client, the poller's)
    used = metric(text, "sidecache_backend_memory_bytes", backend="shared")
    assert used == pytest.approx(info["used_memory"], rel=0.05)
    clients = metric(text, "sidecache_backend_connections", backend="shared")
    assert abs(clients - info["connected_clients"]) <= 1


async def test_memcached_figures_match_stats(
    live_proxy: StartProxy, origin: Origin, small_memcached: int
):
    memcached_stats(small_memcached, fill=8000)  # 8 MiB into 4 MiB: evictions
    proxy = await live_proxy(
        f"""
        backends:
          pool: {{type: memcached, servers: ["127.0.0.1:{small_memcached}"], timeout: 500ms}}
        defaults: {{backend: pool, ttl: 60s}}
        {ROUTES}"""
    )
    for path in ("/items/1", "/items/1"):
        await proxy.get(path)
    assert (await figures_now(proxy))["pool"].up
    text = await metrics_text(proxy)
    stats = memcached_stats(small_memcached)
    assert stats["evictions"] > 0
    assert stats["get_hits"] > 0
    exact = {
        "sidecache_backend_memory_bytes": stats["bytes"],
        "sidecache_backend_memory_limit_bytes": stats["limit_maxbytes"],
        "sidecache_backend_evictions_total": stats["evictions"],
        "sidecache_backend_items": stats["curr_items"],
        "sidecache_backend_hits_total": stats["get_hits"],
        "sidecache_backend_misses_total": stats["get_misses"],
    }
    for name, expected in exact.items():
        assert metric(text, name, backend="pool") == expected, name
    assert stats["limit_maxbytes"] == 4 * 1024**2
    connections = metric(text, "sidecache_backend_connections", backend="pool")
    assert abs(connections - stats["curr_connections"]) <= 1


async def test_a_cluster_sums_every_master(
    live_proxy: StartProxy,
    origin: Origin,
    redis_cluster: list[str],  # noqa: F811
):
    clients = [Redis(host="127.0.0.1", port=int(node.rpartition(":")[2])) for node in redis_cluster]
    masters = [c for c in clients if c.info("replication")["role"] == "master"]
    nodes = ", ".join(f'"{node}"' for node in redis_cluster)
    proxy = await live_proxy(
        f"""
        backends:
          cluster: {{type: redis, cluster: true, nodes: [{nodes}], timeout: 500ms}}
        defaults: {{backend: cluster, ttl: 60s}}
        {ROUTES}"""
    )
    for i in range(20):
        await proxy.get(f"/items/{i}")
    assert (await figures_now(proxy))["cluster"].up
    text = await metrics_text(proxy)
    infos = [c.info() for c in masters]
    assert len(infos) == 3
    keys = sum(c.dbsize() for c in masters)
    assert keys > 0
    assert metric(text, "sidecache_backend_items", backend="cluster") == keys
    for name, field in (
        ("sidecache_backend_hits_total", "keyspace_hits"),
        ("sidecache_backend_misses_total", "keyspace_misses"),
        ("sidecache_backend_evictions_total", "evicted_keys"),
        ("sidecache_backend_memory_limit_bytes", "maxmemory"),
    ):
        assert metric(text, name, backend="cluster") == sum(i[field] for i in infos), name
    used = metric(text, "sidecache_backend_memory_bytes", backend="cluster")
    assert used == pytest.approx(sum(i["used_memory"] for i in infos), rel=0.05)
    for client in clients:
        client.close()


async def test_a_backend_that_cannot_be_read_is_down(
    live_proxy: StartProxy, origin: Origin, tmp_path: Path
):
    executor, port = start_redis(tmp_path)
    proxy = await live_proxy(
        f"""
        backends:
          shared: {{type: redis, url: "redis://127.0.0.1:{port}/0", timeout: 500ms}}
        defaults: {{backend: shared, ttl: 60s}}
        {ROUTES}"""
    )
    assert (await figures_now(proxy))["shared"].up
    executor.stop()
    down = (await figures_now(proxy))["shared"]
    assert not down.up
    assert down.error
    text = await metrics_text(proxy)
    assert metric(text, "sidecache_backend_up", backend="shared") == 0
    assert "sidecache_backend_items{" not in text  # no figures rather than old ones


async def test_an_unreachable_cluster_is_down(live_proxy: StartProxy, origin: Origin):
    nowhere = free_port()
    proxy = await live_proxy(
        f"""
        backends:
          cluster: {{type: redis, cluster: true, nodes: ["127.0.0.1:{nowhere}"]}}
        defaults: {{backend: cluster, ttl: 60s}}
        """
    )
    down = (await figures_now(proxy))["cluster"]
    assert not down.up
    assert metric(await metrics_text(proxy), "sidecache_backend_up", backend="cluster") == 0
    assert proxy.worker.ops is not None
    await proxy.worker.ops.figures.check_limits()  # unreadable: no warning, no exception


async def test_one_figure_per_backend_with_two_workers(
    origin: Origin, spawn_proxy: SpawnProxy, small_redis: int, tmp_path: Path
):
    with Redis(port=small_redis) as client:
        client.set("mine", b"1")
    bare, bare_port = start_redis(tmp_path)  # no maxmemory: warned about once, not twice
    body = f"""
        backends:
          shared: {{type: redis, url: "redis://127.0.0.1:{small_redis}/0", timeout: 500ms}}
          bare: {{type: redis, url: "redis://127.0.0.1:{bare_port}/0", timeout: 500ms}}
        defaults: {{backend: shared, ttl: 60s}}
        {ROUTES}"""
    try:
        proxy = spawn_proxy(policy_text(origin.url, body), "--workers", "2")
        assert proxy.process.stdout is not None
        log = LogLines(proxy.process.stdout)

        async def shown() -> bool:
            text = (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()
            return metric(text, "sidecache_backend_up", backend="shared") == 1

        await eventually(shown, 10, "the first reading")
        for _ in range(8):  # each scrape lands on either worker; each shows the one reading
            text = (await fetch("GET", proxy.admin_url + "/metrics")).body.decode()
            lines = [
                line
                for line in text.splitlines()
                if line.startswith('sidecache_backend_items{backend="shared"}')
            ]
            assert lines == ['sidecache_backend_items{backend="shared"} 1.0']
            assert metric(text, "sidecache_backend_up", backend="shared") == 1
        assert proxy.stop() == 0
        warned = [
            line
            for line in log.read()
            if line.get("event") == "backend_limits" and line["level"] == "warning"
        ]
        assert [line["backend"] for line in warned] == ["bare"]  # one worker reads and warns
    finally:
        bare.stop()


# ---------------------------------------------------------------- maxmemory warnings


class LogLines:
    """The JSON lines a spawned proxy has written to stdout so far (read without blocking)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        os.set_blocking(stream.fileno(), False)
        self.buffer = b""

    def read(self) -> list[dict[str, Any]]:
        with contextlib.suppress(BlockingIOError, TypeError):
            while chunk := self.stream.read(65536):
                self.buffer += chunk
        return [orjson.loads(line) for line in self.buffer.splitlines() if line.startswith(b"{")]


async def test_start_up_warns_about_redis_without_maxmemory_or_with_noeviction(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path
):
    servers = {
        "bare": start_redis(tmp_path),
        "strict": start_redis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction"),
        "good": start_redis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru"),
        # CONFIG renamed away, as managed services do: INFO memory is read instead
        "managed": start_redis(
            tmp_path,
            *("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"),
            *("--rename-command", "CONFIG", ""),
        ),
    }
    try:
        backends = "\n".join(
            f'  {name}: {{type: redis, url: "redis://127.0.0.1:{port}/0"}}'
            for name, (_, port) in servers.items()
        )
        body = f"backends:\n{backends}\ndefaults: {{backend: good, ttl: 60s}}\n"
        proxy = spawn_proxy(policy_text(origin.url, body))
        assert proxy.process.stdout is not None
        log = LogLines(proxy.process.stdout)

        def warnings() -> list[dict[str, Any]]:
            return [
                line
                for line in log.read()
                if line.get("event") == "backend_limits" and line["level"] == "warning"
            ]

        async def three() -> bool:
            return len(warnings()) >= 3

        await eventually(three, 10, "a warning for each badly set Redis")
        by_backend = {line["backend"]: line for line in warnings()}
        assert sorted(by_backend) == ["bare", "managed", "strict"]  # one line each
        assert len(warnings()) == 3
        bare = by_backend["bare"]["msg"]
        assert bare.startswith("backend bare: no maxmemory on 127.0.0.1:")
        assert "set maxmemory" in bare
        strict = by_backend["strict"]["msg"]
        assert strict.startswith("backend strict: maxmemory-policy noeviction on 127.0.0.1:")
        assert "set maxmemory-policy volatile-lru or allkeys-lru" in strict
        assert by_backend["strict"]["source"] == "CONFIG GET"
        assert by_backend["managed"]["source"] == "INFO memory"
        assert "noeviction" in by_backend["managed"]["msg"]
        said = [line["msg"] for line in log.read() if line.get("backend") == "managed"]
        assert any("CONFIG GET maxmemory was refused" in msg for msg in said)
        assert proxy.stop() == 0
    finally:
        for executor, _ in servers.values():
            executor.stop()


# ---------------------------------------------------------------- /readyz, /stats, report


async def test_readyz_stats_and_report_name_stores_by_backend(
    live_proxy: StartProxy, origin: Origin, small_redis: int, small_memcached: int
):
    origin.reply("/items/long", headers={"Cache-Control": "max-age=300"})
    proxy = await live_proxy(
        f"""
        backends:
          local: {{type: memory}}
          shared: {{type: redis, url: "redis://127.0.0.1:{small_redis}/0", timeout: 500ms}}
          fast: {{type: tiered, l1: local, l2: shared}}
          pool: {{type: memcached, servers: ["127.0.0.1:{small_memcached}"], timeout: 500ms}}
        defaults: {{backend: fast, ttl: 60s}}
        routes:
          - name: items
            match: {{prefix: /items}}
          - name: pooled
            match: {{prefix: /pooled}}
            backend: pool
        """
    )
    for path in ("/items/1", "/items/long", "/items/long", "/pooled/1"):
        await proxy.get(path)
    await figures_now(proxy)
    with Redis(port=small_redis) as client:
        keys = client.dbsize()

    ready = await fetch("GET", proxy.admin_url + "/readyz")
    assert ready.status == 200
    for name in ("GuardedStore", "TieredStore", "MemoryStore", "RedisStore"):
        assert name not in ready.body.decode()
    stores = ready.json()["stores"]
    assert list(stores) == ["local", "shared", "fast", "pool"]
    assert {n: s["type"] for n, s in stores.items()} == {
        "local": "memory",
        "shared": "redis",
        "fast": "tiered",
        "pool": "memcached",
    }
    assert stores["shared"]["breaker"] == "closed"
    assert stores["local"]["breaker"] == "n/a"
    assert stores["shared"]["write_refusals"] == 0
    assert (stores["fast"]["l1"], stores["fast"]["l2"]) == ("local", "shared")
    assert stores["shared"]["figures"]["up"] is True
    assert stores["shared"]["figures"]["items"] == keys
    assert stores["pool"]["figures"]["memory_limit_bytes"] == 4 * 1024**2
    assert "figures" not in stores["local"]

    stats = (await fetch("GET", proxy.admin_url + "/stats")).json()
    backends = {b["backend"]: b for b in stats["backends"]}
    assert backends["shared"]["entries"] == keys > 0
    assert backends["shared"]["memory_limit_bytes"] == 2 * 1024**2
    assert backends["shared"]["up"] is True
    assert backends["pool"]["entries"] >= 1
    # /stats and the report say what /readyz says: no breaker on a memory store, a
    # tiered store's is its L2's
    assert {n: b["breaker"] for n, b in backends.items()} == {
        n: s["breaker"] for n, s in stores.items()
    }
    assert backends["local"]["breaker"] == "n/a"
    items = next(r for r in stats["routes"] if r["route"] == "items")
    assert items["ttl_seconds"] == 60
    assert items["stored_ttl_mean_seconds"] == 180  # one 60 s entry, one of the origin's 300 s

    text = render(stats)
    assert f"backend shared (redis): {keys} keys, " in text
    assert " of 2MiB, " in text
    assert "backend pool (memcached): " in text
    assert "3m" in next(line for line in text.splitlines() if line.startswith("items "))


async def test_a_changed_setting_is_warned_about_once(
    live_proxy: StartProxy, origin: Origin, small_redis: int, caplog: pytest.LogCaptureFixture
):
    proxy = await live_proxy(
        f"""
        backends:
          shared: {{type: redis, url: "redis://127.0.0.1:{small_redis}/0", timeout: 500ms}}
        defaults: {{backend: shared, ttl: 60s}}
        """
    )
    assert proxy.worker.ops is not None
    poller = proxy.worker.ops.figures

    def warned() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if getattr(r, "event", None) == "backend_limits" and r.levelno == logging.WARNING
        ]

    await poller.check_limits()  # what the poller does every minute
    assert warned() == []  # 2 MiB, allkeys-lru: nothing to say
    with Redis(port=small_redis) as client:
        client.config_set("maxmemory-policy", "noeviction")
    await poller.check_limits()
    await poller.check_limits()  # unchanged: not repeated (until an hour has passed)
    (line,) = warned()
    assert line.startswith("backend shared: maxmemory-policy noeviction on 127.0.0.1:")
    with Redis(port=small_redis) as client:
        client.config_set("maxmemory", "0")
    await poller.check_limits()
    assert len(warned()) == 2
    assert warned()[1].startswith("backend shared: no maxmemory on 127.0.0.1:")
