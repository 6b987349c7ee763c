"""Warm restart (issue 16): a real proxy process holding 10,000 entries is stopped with
SIGTERM and started again on the same snapshot path; the entries are HITs with the Age
they should have and the origin sees none of them again. A damaged file starts an empty
cache with a WARNING naming it."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import Origin, ProxyProcess, SpawnProxy, policy_text

ENTRIES = 10_000
HOST = "svc.example"
ORIGIN_AGE = 30  # the origin says its answers are already 30 s old


def _policy(origin: Origin, snapshot: Path) -> str:
    return policy_text(
        origin.url,
        f"""\
        backends:
          local: {{type: memory, max_size: 256MiB}}
        defaults: {{backend: local, ttl: 1h}}
        server: {{snapshot: {{path: "{snapshot}", interval: 5m}}}}
        """,
    )


def _log(proxy: ProxyProcess) -> list[dict[str, object]]:
    assert proxy.process.stdout is not None
    out = proxy.process.stdout.read().decode()
    return [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]


async def _get_all(url: str, paths: list[str]) -> list[tuple[str, str, int, bytes]]:
    """(X-Cache, Age, status, body) of each path, 32 connections at a time."""
    connector = aiohttp.TCPConnector(limit=32)
    # one Host for both processes: the key includes it, and each gets a new free port
    headers = {"Host": HOST}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(path: str) -> tuple[str, str, int, bytes]:
            async with session.get(url + path) as response:
                body = await response.read()
                return (
                    response.headers.get("X-Cache", ""),
                    response.headers.get("Age", ""),
                    response.status,
                    body,
                )

        return await asyncio.gather(*(one(path) for path in paths))


async def _events(proxy: ProxyProcess, word: str, count: int) -> list[dict[str, object]]:
    """Read the log as it comes until ``count`` snapshot events say ``word``."""
    assert proxy.process.stdout is not None
    found: list[dict[str, object]] = []
    while len(found) < count:
        line = await asyncio.wait_for(asyncio.to_thread(proxy.process.stdout.readline), 30)
        assert line, f"the proxy's log ended before {count} snapshot events said {word!r}"
        if line.startswith(b"{"):
            doc = orjson.loads(line)
            if doc.get("event") == "snapshot" and word in str(doc["msg"]):
                found.append(doc)
    return found


def _stop(proxy: ProxyProcess) -> list[dict[str, object]]:
    assert proxy.stop(signal.SIGTERM, timeout=60) == 0
    return _log(proxy)


@pytest.mark.timeout(300)
async def test_ten_thousand_entries_survive_a_restart_with_their_age(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snap"
    paths = [f"/items/{i}" for i in range(ENTRIES)]
    for path in paths:
        origin.reply(path, headers={"Age": str(ORIGIN_AGE)})
    proxy = spawn_proxy(_policy(origin, snapshot))
    filling = time.time()
    first = await _get_all(proxy.url, paths)
    filled = time.time()
    assert {(cache, status) for cache, _, status, _ in first} == {("MISS", 200)}
    assert sum(origin.hits.values()) == ENTRIES
    log = _stop(proxy)
    written = [e for e in log if e.get("event") == "snapshot" and "written" in str(e["msg"])]
    assert [e["entries"] for e in written] == [ENTRIES]
    assert snapshot.exists()

    await asyncio.sleep(2)  # down for a while: Age must count it
    again = spawn_proxy(_policy(origin, snapshot))
    asked = time.time()
    second = await _get_all(again.url, paths)
    answered = time.time()
    assert sum(origin.hits.values()) == ENTRIES  # not one of them went to the origin again
    assert {(cache, status) for cache, _, status, _ in second} == {("HIT", 200)}
    assert [body for *_, body in second] == [body for *_, body in first]
    # Age: the origin's 30 s, plus the time since each answer was received (fill, stop,
    # 2 s down, start), never reset by the restart
    youngest = int(asked - filled) + ORIGIN_AGE
    oldest = int(answered - filling) + ORIGIN_AGE + 1
    ages = [int(age) for _, age, _, _ in second]
    assert min(ages) >= youngest >= ORIGIN_AGE + 2
    assert max(ages) <= oldest
    log = _stop(again)
    loaded = [e for e in log if e.get("event") == "snapshot" and "loaded" in str(e["msg"])]
    assert [e["entries"] for e in loaded] == [ENTRIES]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "wrong version"])
async def test_a_damaged_snapshot_starts_empty_with_a_warning(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path, damage: str
) -> None:
    snapshot = tmp_path / "snap"
    paths = [f"/items/{i}" for i in range(50)]
    proxy = spawn_proxy(_policy(origin, snapshot))
    await _get_all(proxy.url, paths)
    _stop(proxy)
    data = snapshot.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped byte":
        data = data[:100] + bytes([data[100] ^ 0x40]) + data[101:]
    else:
        data = data[:8] + b"\x00\x63" + data[10:]
    snapshot.write_bytes(data)

    again = spawn_proxy(_policy(origin, snapshot))
    answers = await _get_all(again.url, paths)
    assert {cache for cache, *_ in answers} == {"MISS"}
    assert sum(origin.hits.values()) == 2 * len(paths)
    log = _stop(again)
    warnings = [e for e in log if e.get("level") == "warning" and e.get("event") == "snapshot"]
    assert len(warnings) == 1
    assert str(snapshot) in str(warnings[0]["msg"])
    assert "ignored" in str(warnings[0]["msg"])


async def test_each_worker_writes_and_reads_its_own_file(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snap"
    paths = [f"/items/{i}" for i in range(200)]
    proxy = spawn_proxy(_policy(origin, snapshot), "--workers", "2")
    connector = aiohttp.TCPConnector(force_close=True)  # SO_REUSEPORT spreads connections
    async with aiohttp.ClientSession(connector=connector, headers={"Host": HOST}) as session:
        for path in paths:
            async with session.get(proxy.url + path) as response:
                await response.read()
    log = _stop(proxy)
    written = [e for e in log if e.get("event") == "snapshot" and "written" in str(e["msg"])]
    assert sorted(str(e["path"]) for e in written) == [f"{snapshot}.w0", f"{snapshot}.w1"]
    total = sum(int(str(e["entries"])) for e in written)
    assert total == sum(origin.hits.values())

    again = spawn_proxy(_policy(origin, snapshot), "--workers", "2")
    # /healthz answered by one worker; the other may still be loading its file
    loaded = await _events(again, "loaded", 2)
    assert sorted(str(e["path"]) for e in loaded) == [f"{snapshot}.w0", f"{snapshot}.w1"]
    assert sum(int(str(e["entries"])) for e in loaded) == total
    _stop(again)


async def test_a_crash_after_a_purge_never_brings_purged_entries_back(
    origin: Origin, spawn_proxy: SpawnProxy, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snap"
    policy = _policy(origin, snapshot).replace("interval: 5m", "interval: 1s")
    paths = [f"/items/{i}" for i in range(20)] + [f"/other/{i}" for i in range(20)]
    proxy = spawn_proxy(policy)
    await _get_all(proxy.url, paths)
    await _events(proxy, "written: 40 entries", 1)  # a periodic write holds all 40
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.admin_url + "/purge", json={"prefixes": ["/items"]}) as purged,
    ):
        assert purged.status == 200
        assert (await purged.json())["removed"] == 20
    proxy.stop(signal.SIGKILL)  # an OOM kill: no write at stop, whatever the file holds stays

    again = spawn_proxy(policy)
    answers = dict(zip(paths, await _get_all(again.url, paths), strict=True))
    assert {answers[p][0] for p in paths if p.startswith("/items")} == {"MISS"}
    assert all(origin.hits[p] == 2 for p in paths if p.startswith("/items"))
    _stop(again)
