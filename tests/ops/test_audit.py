"""``sidecache audit`` against a real Redis and a real Memcached holding keys a running
proxy wrote, keys without TTL written by hand, and orphans: every finding, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from proxy.ops.audit import describe_memcached, describe_redis, route_of
from tests.conftest import ROOT, Origin, free_port, policy_text
from tests.ops.conftest import RedisServer, StartProxy

# generous store deadlines: these tests read what the proxy wrote, and at the default
# 50 ms a write starved of CPU on a busy machine is dropped (the entry then is missing)
ROUTES = """
backends:
  shared: {{type: redis, url: "{redis}", timeout: 30s}}
  pool: {{type: memcached, servers: ["{memcached}"], timeout: 30s}}
defaults: {{backend: shared, ttl: 60s}}
routes:
  - name: products
    match: {{path: "/api/products/{{id}}"}}
    ttl: 1h
    tags: ["product:{{id}}"]
  - name: items
    match: {{prefix: /items}}
    backend: pool
"""
LEGACY = """
  - name: legacy
    match: {prefix: /legacy}
  - name: legacy-mc
    match: {prefix: /old}
    backend: pool
"""


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "audit", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)


async def run_json(policy: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = await asyncio.to_thread(audit, "--policy", str(policy), "--json", *extra)
    return done.returncode, orjson.loads(done.stdout), done.stderr


def _memcached_set(addr: str, key: bytes, value: bytes) -> None:
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        assert sock.recv(64) == b"STORED\r\n"


def _findings(result: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    return {(f["backend"], f["finding"], f["route"]) for f in result["findings"]}


@pytest.fixture
async def filled(
    live_proxy: StartProxy,
    redis_server: RedisServer,
    memcached_addr: str,
    tmp_path: Path,
    origin: Origin,
) -> Path:
    """A proxy writes entries of every route; the audit's policy, returned, lacks the
    legacy ones."""
    body = ROUTES.format(redis=redis_server.url, memcached=memcached_addr)
    proxy = await live_proxy(body + LEGACY)
    for path in ("/api/products/1", "/api/products/2", "/items/a", "/legacy/x", "/old/y"):
        answer = await proxy.get(path)
        assert answer.cache == "MISS", path
    current = tmp_path / "audit.yaml"
    current.write_text(policy_text(origin.url, body))
    return current


async def test_a_clean_store_passes_and_counts_per_route(
    live_proxy: StartProxy,
    redis_server: RedisServer,
    memcached_addr: str,
    tmp_path: Path,
    origin: Origin,
) -> None:
    body = ROUTES.format(redis=redis_server.url, memcached=memcached_addr)
    proxy = await live_proxy(body)
    for path in ("/api/products/1", "/api/products/2", "/items/a", "/items/b", "/items/c"):
        await proxy.get(path)
    code, result, stderr = await run_json(proxy.policy)
    assert code == 0, result["findings"]
    assert stderr == ""  # no progress lines when stderr is not a terminal
    shared = result["backends"]["shared"]
    products = shared["routes"]["products"]
    assert products["keys"] == 2
    assert products["bytes"] > 0
    assert products["no_ttl"] == 0
    assert products["ttl_histogram"]["1h-1d"] == 2  # 1 h of freshness + the kept window
    assert products["in_policy"] is True
    assert len(products["largest"]) == 2
    assert shared["kinds"]["entry"]["keys"] == 2
    pool = result["backends"]["pool"]
    assert pool["routes"]["items"]["keys"] == 3
    assert pool["routes"]["items"]["ttl_histogram"]["1m-10m"] == 3  # 60 s + 300 s kept

    text = await asyncio.to_thread(audit, "--policy", str(proxy.policy))
    assert text.returncode == 0
    assert "backend shared (redis" in text.stdout
    assert "findings: none" in text.stdout


async def test_soft_purges_leave_no_orphans(
    live_proxy: StartProxy, redis_server: RedisServer, memcached_addr: str
) -> None:
    """A soft purge's links are index data of a tag entries still name, and an entry
    marked by key still names its generations."""
    body = ROUTES.format(redis=redis_server.url, memcached=memcached_addr)
    proxy = await live_proxy(body)
    for path in ("/api/products/1", "/api/products/2", "/items/a"):
        assert (await proxy.get(path)).cache == "MISS"
    host = f"{urlsplit(proxy.url).netloc}"
    soft = {"tags": ["product:1"], "urls": [f"http://{host}/api/products/2"], "soft": True}
    assert (await proxy.purge(soft)).status == 200
    assert (await proxy.purge({"prefixes": ["/items"], "soft": True})).status == 200
    code, result, _ = await run_json(proxy.policy)
    assert code == 0, result["findings"]
    with redis_server.client() as client:
        assert list(client.scan_iter(match="*~s:*"))  # links are there, and named
        values = [client.get(key) for key in client.scan_iter(match="sc:products:*")]
    assert sorted(value[:1] for value in values if value) == [b"\xc5", b"\xc6"]  # one marked
    pool = result["backends"]["pool"]["kinds"]
    assert pool["generation"]["keys"] >= 3  # the prefix's counter and link, the route's
    assert "foreign" not in pool


async def test_keys_without_ttl_and_orphans_are_findings(
    filled: Path, redis_server: RedisServer, memcached_addr: str
) -> None:
    current = filled
    with redis_server.client() as client:
        client.set("sc:products:handmade", b"x")  # no TTL
        client.set("someone-else", b"y")  # another program's key: reported, not a finding
        entries = [k for k in client.scan_iter(match="*sc:*products*") if b"handmade" not in k]
        assert entries
        client.delete(*entries)  # the index keys of those entries now point at nothing
    _memcached_set(memcached_addr, b"sc:items:handmade", b"z")  # exptime 0: no TTL
    _memcached_set(memcached_addr, b"~g:legacy", b"41")  # a counter from before they expired

    code, result, _ = await run_json(current)
    assert code == 1
    found = _findings(result)
    assert ("shared", "no-ttl", "products") in found
    assert ("shared", "orphan-route", "legacy") in found
    assert ("shared", "orphan-index", None) in found  # generations no entry names
    assert ("pool", "no-ttl", "items") in found
    assert ("pool", "orphan-route", "legacy-mc") in found
    assert ("pool", "no-ttl", None) in found
    counters = next(f for f in result["findings"] if f.get("kind") == "generation")
    assert counters["examples"] == ["~g:legacy"]
    no_ttl = next(f for f in result["findings"] if f["finding"] == "no-ttl" and f["route"])
    assert no_ttl["examples"] == ["sc:products:handmade"]
    assert result["backends"]["shared"]["kinds"]["foreign"]["keys"] == 1
    assert result["backends"]["shared"]["routes"]["legacy"]["in_policy"] is False

    text = await asyncio.to_thread(audit, "--policy", str(current))
    assert text.returncode == 1
    assert "keys without TTL (route products): sc:products:handmade" in text.stdout
    assert "keys of route legacy, no longer in the policy" in text.stdout
    assert "index keys whose entries are gone: ~g:" in text.stdout
    assert "legacy (not in policy)" in text.stdout


async def test_sample_bounds_the_keys_inspected(filled: Path) -> None:
    _, result, _ = await run_json(filled, "--sample", "1")
    for name in ("shared", "pool"):
        assert result["backends"][name]["scanned"] == 1
        assert result["backends"][name]["sampled"] is True


async def test_unreachable_store_and_bad_policy_exit_2(tmp_path: Path, origin: Origin) -> None:
    dead = free_port()
    policy = tmp_path / "dead.yaml"
    policy.write_text(
        policy_text(
            origin.url,
            ROUTES.format(
                redis=f"redis://127.0.0.1:{dead}/0", memcached=f"127.0.0.1:{free_port()}"
            ),
        )
    )
    done = await asyncio.to_thread(audit, "--policy", str(policy))
    assert done.returncode == 2
    assert "backend shared:" in done.stderr
    assert "backend pool:" in done.stderr
    # the report names where it looked, and does not read as a clean store
    assert f"backend shared (redis, 127.0.0.1:{dead}): 0 keys" in done.stdout
    assert done.stdout.endswith("findings: none in what was read; not scanned: shared, pool\n")
    policy.write_text("version: 1\norigin: nope\nbackends: 3\n")
    assert (await asyncio.to_thread(audit, "--policy", str(policy))).returncode == 2


def test_key_layout_is_sorted_into_kinds() -> None:
    assert route_of("sc:{products}:ab12") == "products"
    assert route_of("sc:products:ab12:v:cd") == "products"
    assert route_of("other:x") is None
    assert describe_redis("sc:products:ab") == ("entry", "products")
    assert describe_redis("{10}sc:products:ab") == ("entry", "products")
    assert describe_redis("~g:0123456789ab") == ("generation", None)
    assert describe_redis("~l:sc:products:ab") == ("lease", "products")
    assert describe_redis("app:sc:products:ab", "app:") == ("entry", "products")
    assert describe_redis("sc:products:ab", "app:") == ("foreign", None)
    assert describe_redis("session:42") == ("foreign", None)
    assert describe_memcached("sc:{items}:ab") == ("entry", "items")
    assert describe_memcached("~g:r:items") == ("generation", None)
    assert describe_memcached("~h:0123") == ("unattributed", None)
    assert describe_memcached("~c:nonce:0") == ("unattributed", None)
    assert describe_memcached("~l:sc:{items}:ab") == ("lease", "items")


async def test_progress_goes_to_a_terminal_stderr_only(
    live_proxy: StartProxy, redis_server: RedisServer, memcached_addr: str
) -> None:
    proxy = await live_proxy(ROUTES.format(redis=redis_server.url, memcached=memcached_addr))
    await proxy.get("/api/products/1")

    def on_a_terminal() -> tuple[int, str, str]:
        leader, follower = pty.openpty()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "proxy", "audit", "--policy", str(proxy.policy)],
                stdout=subprocess.PIPE,
                stderr=follower,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
            os.close(follower)
            follower = -1
            seen = b""
            with contextlib.suppress(OSError):  # EIO once the terminal's last writer left
                while chunk := os.read(leader, 4096):
                    seen += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
        return done.returncode, done.stdout, seen.decode()

    code, stdout, terminal = await asyncio.to_thread(on_a_terminal)
    assert code == 0
    assert re.search(r"audit: shared: \d+ keys scanned", terminal)
    assert "scanned" not in stdout
