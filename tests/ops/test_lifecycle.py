"""Graceful stop and logs of real proxy processes: SIGTERM drains an in-flight request and
exits 0; logs are JSON lines (start-up, breaker changes); the access log is opt-in."""

from __future__ import annotations

import asyncio
import random
import signal
import socket

import orjson
import port_for
import pytest

from proxy.obs.logs import AccessLog
from tests.conftest import Origin, ProxyProcess, SpawnProxy, policy_text
from tests.ops.conftest import eventually, fetch, scrape


def lines(proxy: ProxyProcess) -> list[dict[str, object]]:
    assert proxy.process.stdout is not None
    out = proxy.process.stdout.read().decode()
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_finishes_the_request_in_flight_and_exits_0(
    origin: Origin, spawn_proxy: SpawnProxy, workers: str
):
    origin.reply("/slow", delay=1.5, body=b"worth the wait")
    proxy = spawn_proxy(policy_text(origin.url, "defaults: {ttl: 60s}\n"), "--workers", workers)
    in_flight = asyncio.ensure_future(fetch("GET", proxy.url + "/slow"))

    async def arrived() -> bool:
        return origin.hits["/slow"] == 1

    await eventually(arrived, 10, "the slow request at the origin")
    proxy.process.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        try:
            return (await fetch("GET", proxy.admin_url + "/readyz")).status == 503
        except OSError:
            return False

    await eventually(draining, 5, "/readyz to turn 503")

    async def refusing() -> bool:
        # every worker's listener closes (with 2, each gets SIGTERM a moment apart)
        try:
            socket.create_connection(("127.0.0.1", proxy.port), 1).close()
        except ConnectionRefusedError:
            return True
        return False

    await eventually(refusing, 1.0, "the listener to stop accepting")
    with pytest.raises(ConnectionRefusedError):  # and it stays closed
        socket.create_connection(("127.0.0.1", proxy.port), 1).close()
    answer = await in_flight
    assert answer.status == 200
    assert answer.body == b"worth the wait"
    assert await asyncio.to_thread(proxy.process.wait, 15) == 0
    events = [line.get("event") for line in lines(proxy)]
    assert events[0] == "listening"
    assert "start" in events
    assert events[-1] == "stop"


async def test_access_log_is_off_by_default_and_on_when_asked(
    origin: Origin, spawn_proxy: SpawnProxy
):
    quiet = spawn_proxy(policy_text(origin.url, "defaults: {ttl: 60s}\n"))
    loud = spawn_proxy(
        policy_text(origin.url, "defaults: {ttl: 60s}\nserver: {access_log: true}\n")
    )
    for proxy in (quiet, loud):
        for _ in range(3):
            assert (await fetch("GET", proxy.url + "/a?b=1")).status == 200
        assert proxy.stop() == 0
    assert not [line for line in lines(quiet) if line.get("event") == "access"]
    access = [line for line in lines(loud) if line.get("event") == "access"]
    assert [line["cache"] for line in access] == ["MISS", "HIT", "HIT"]
    assert access[0]["target"] == "/a?b=1"
    assert access[0]["route"] == "default"
    assert access[0]["status"] == 200


def test_access_log_sampling(monkeypatch: pytest.MonkeyPatch):
    assert AccessLog.from_setting(False) is None
    assert AccessLog.from_setting(0.0) is None
    assert AccessLog.from_setting(True) is not None
    sampled = AccessLog.from_setting(0.25)
    assert sampled is not None
    written: list[dict[str, object]] = []
    monkeypatch.setattr("proxy.obs.logs.write_line", written.append)
    rolls = iter([0.1, 0.3, 0.2, 0.9])
    monkeypatch.setattr(random, "random", lambda: next(rolls))
    for _ in range(4):
        sampled.record(
            method="GET", target="/", status=200, cache="HIT", route="r", seconds=0.001, client=""
        )
    assert len(written) == 2


async def test_breaker_changes_are_logged_and_exported(origin: Origin, spawn_proxy: SpawnProxy):
    dead = port_for.select_random()  # nothing listens here
    policy = policy_text(
        origin.url,
        f"""
        backends:
          shared:
            type: redis
            url: "redis://127.0.0.1:{dead}/0"
            timeout: 50ms
            connect_timeout: 50ms
            breaker: {{failures: 2, cooldown: 60s}}
        defaults: {{backend: shared, ttl: 60s}}
        """,
    )
    proxy = spawn_proxy(policy)
    for _ in range(4):
        assert (await fetch("GET", proxy.url + "/x")).status == 200  # fail-open

    async def open_breaker() -> bool:
        return await scrape(proxy.admin_url, "sidecache_breaker_state", backend="shared") == 2

    await eventually(open_breaker, 5, "the breaker gauge")
    assert await scrape(proxy.admin_url, "sidecache_breaker_opens_total", backend="shared") == 1
    errors = await scrape(proxy.admin_url, "sidecache_store_errors_total", backend="shared")
    assert errors >= 2
    assert proxy.stop() == 0
    breaker = [line for line in lines(proxy) if line.get("event") == "breaker"]
    assert breaker
    assert breaker[0]["state"] == "open"
    assert breaker[0]["level"] == "warning"
