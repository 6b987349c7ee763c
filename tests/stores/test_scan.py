"""The audit's scans on real servers: every master of a 3-node Redis Cluster, entries
written by ``RedisStore`` itself, counted per route with their TTLs."""

from __future__ import annotations

import io

from redis import Redis

from proxy.core.keys import derive_key
from proxy.ops.audit import Progress, audit_redis
from proxy.policy.load import KeySpec, RedisBackend
from proxy.stores.redis import RedisStore

ROUTES = [f"route{i}" for i in range(12)]


async def test_audit_scans_every_master_of_a_cluster(cluster_nodes: list[str]) -> None:
    store = RedisStore("rc", nodes=cluster_nodes, key_prefix="p:")
    try:
        for route in ROUTES:
            for i in range(5):
                key = derive_key(route, "h", f"/{route}/{i}", "", KeySpec(), {})
                await store.set(key, b"x" * 100, 600, [f"r:{route}"])
    finally:
        await store.aclose()
    holders = 0
    for node in cluster_nodes:
        host, port = node.split(":")
        with Redis(host=host, port=int(port)) as client:
            holders += any(client.scan_iter(match="p:*sc:*", count=100))
    assert holders >= 2  # the entries really are spread over the masters

    config = RedisBackend(type="redis", cluster=True, nodes=cluster_nodes, key_prefix="p:")
    audit = await audit_redis("rc", config, None, Progress(io.StringIO()))
    assert audit.error is None
    assert sorted(audit.nodes) == sorted(cluster_nodes)
    assert {route: f.keys for route, f in audit.routes.items()} == dict.fromkeys(ROUTES, 5)
    for figures in audit.routes.values():
        assert figures.no_ttl_count == 0
        assert figures.ttl["10m-1h"] + figures.ttl["1m-10m"] == 5
        assert figures.bytes >= 5 * 100
    assert audit.orphan_index_count == 0

    sampled = await audit_redis("rc", config, 7, Progress(io.StringIO()))
    assert sampled.scanned == 7
    assert sampled.sampled is True
