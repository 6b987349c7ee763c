"""Hot reload as operators trigger it: edits of the file, a Kubernetes ConfigMap symlink
swap (twice), SIGHUP; a bad edit keeps the running policy. Real proxy processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
from pathlib import Path

from proxy.policy.load import load_policy
from tests.conftest import Origin, ProxyProcess, SpawnProxy, policy_text
from tests.ops.conftest import StartProxy, eventually, fetch, scrape

V1 = """
defaults: {ttl: 60s}
routes:
  - name: items
    match: {prefix: /items}
"""
V2 = V1 + "    cache: false\n"
BROKEN = V1 + "    ttl: forever\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def running_digest(proxy: ProxyProcess) -> str:
    ready = await fetch("GET", proxy.admin_url + "/readyz")
    return str(ready.json()["policy_digest"])


async def reloaded(proxy: ProxyProcess, text: str) -> None:
    async def check() -> bool:
        return await running_digest(proxy) == digest(text)

    await eventually(check, 10, "the new policy")


async def reloads(proxy: ProxyProcess, result: str) -> float:
    return await scrape(proxy.admin_url, "sidecache_policy_reloads_total", result=result)


async def cache_of(proxy: ProxyProcess, path: str) -> str:
    return (await fetch("GET", proxy.url + path)).cache


def output(proxy: ProxyProcess) -> str:
    assert proxy.process.stdout is not None
    return proxy.process.stdout.read().decode()


async def test_bad_edit_keeps_the_policy_and_a_good_one_applies(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path
):
    path = tmp_path / "conf" / "policy.yaml"
    path.parent.mkdir()
    path.write_text(policy_text(origin.url, V1))
    proxy = spawn_proxy(path.read_text(), "--policy", str(path))
    await cache_of(proxy, "/items/1")
    assert await cache_of(proxy, "/items/1") == "HIT"

    path.write_text(policy_text(origin.url, BROKEN))  # in place, as an editor might

    async def refused() -> bool:
        return await reloads(proxy, "failed") == 1

    await eventually(refused, 10, "the refused reload")
    assert await running_digest(proxy) == digest(policy_text(origin.url, V1))
    assert await cache_of(proxy, "/items/1") == "HIT"  # old policy, old entries

    good = policy_text(origin.url, V2)
    path.write_text(good)
    await reloaded(proxy, good)
    assert await cache_of(proxy, "/items/1") == "BYPASS"
    assert await reloads(proxy, "ok") == 1
    assert proxy.stop() == 0
    log = output(proxy)
    assert '"event":"reload_failed"' in log
    assert f"{path}:" in log  # the error names the file and line...
    assert "routes[0].ttl" in log  # ...and the field
    assert '"event":"reload"' in log


def configmap(directory: Path, text: str, generation: int) -> None:
    """What the kubelet does: a new timestamped dir, then an atomic swap of ``..data``."""
    stamp = directory / f"..2026_11_23_12_00_0{generation}.00000000{generation}"
    stamp.mkdir()
    (stamp / "policy.yaml").write_text(text)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    (directory / "..data_tmp").symlink_to(stamp.name)
    os.rename(directory / "..data_tmp", directory / "..data")
    if not (directory / "policy.yaml").is_symlink():
        (directory / "policy.yaml").symlink_to("..data/policy.yaml")
    if old is not None:
        shutil.rmtree(directory / old)


async def test_configmap_symlink_swap_reloads_twice_in_a_row(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path
):
    mount = tmp_path / "policy-volume"
    mount.mkdir()
    first = policy_text(origin.url, V1)
    configmap(mount, first, 1)
    proxy = spawn_proxy(first, "--policy", str(mount / "policy.yaml"))
    await cache_of(proxy, "/items/1")
    assert await cache_of(proxy, "/items/1") == "HIT"

    second = policy_text(origin.url, V2)
    configmap(mount, second, 2)
    await reloaded(proxy, second)
    assert await cache_of(proxy, "/items/1") == "BYPASS"

    third = policy_text(origin.url, V1.replace("ttl: 60s", "ttl: 30s"))
    configmap(mount, third, 3)
    await reloaded(proxy, third)
    await cache_of(proxy, "/items/2")
    assert await cache_of(proxy, "/items/2") == "HIT"
    assert await reloads(proxy, "ok") == 2
    assert await reloads(proxy, "failed") == 0
    assert proxy.stop() == 0


async def test_sighup_reloads_every_worker(origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path):
    # The file lives outside the watched directory, behind an absolute symlink: only
    # SIGHUP can tell the proxy it changed.
    real = tmp_path / "elsewhere" / "real.yaml"
    real.parent.mkdir()
    real.write_text(policy_text(origin.url, V1))
    link = tmp_path / "watched" / "policy.yaml"
    link.parent.mkdir()
    link.symlink_to(real)
    proxy = spawn_proxy(real.read_text(), "--policy", str(link), "--workers", "2")
    changed = policy_text(origin.url, V2)
    real.write_text(changed)
    await asyncio.sleep(1.0)
    assert await running_digest(proxy) == digest(policy_text(origin.url, V1))
    proxy.process.send_signal(signal.SIGHUP)

    async def both() -> bool:
        return await reloads(proxy, "ok") == 2  # one per worker

    await eventually(both, 10, "both workers to reload")
    for _ in range(10):  # whichever worker answers runs the new policy
        assert await running_digest(proxy) == digest(changed)
        assert await cache_of(proxy, "/items/9") == "BYPASS"
    assert proxy.stop() == 0


async def test_a_backend_change_keeps_the_unchanged_stores(live_proxy: StartProxy, origin: Origin):
    two = """
    backends:
      local: {type: memory}
      other: {type: memory, max_size: 1MiB}
    defaults: {backend: local, ttl: 60s}
    routes:
      - name: others
        match: {prefix: /o}
        backend: other
    """
    proxy = await live_proxy(two)
    for path in ("/a", "/o/a"):
        await proxy.get(path)
        assert (await proxy.get(path)).cache == "HIT"
    before = proxy.worker.engine
    assert before is not None
    kept = before.stores["local"]
    proxy.policy.write_text(policy_text(origin.url, two.replace("1MiB", "2MiB")))
    assert proxy.worker.ops is not None
    await proxy.worker.ops.apply(load_policy(proxy.policy))
    assert before.stores["local"] is kept
    assert (await proxy.get("/a")).cache == "HIT"
    assert (await proxy.get("/o/a")).cache == "MISS"  # a new, empty store


async def test_a_reload_keeps_open_connections(live_proxy: StartProxy, origin: Origin):
    proxy = await live_proxy(V1)
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /items/1 HTTP/1.1\r\nHost: shop\r\n\r\n"

    async def ask() -> bytes:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        return head

    assert b"X-Cache: MISS" in await ask()
    assert b"X-Cache: HIT" in await ask()
    proxy.policy.write_text(policy_text(origin.url, V2))

    async def applied() -> bool:
        return await proxy.metric("sidecache_policy_reloads_total", result="ok") == 1

    await eventually(applied, 10, "the reload")
    assert b"X-Cache: BYPASS" in await ask()  # same connection, new policy
    writer.close()
    await writer.wait_closed()
