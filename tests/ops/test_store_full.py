"""A full shared store, seen as an operator sees it: ``sidecache_store_errors_total`` with
``reason="oom"``, one warning line naming backend and command, the report's advice,
answers still served."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Origin, free_port
from tests.stores.conftest import redis_executor, running

from .conftest import Answer, LiveProxy, StartProxy, eventually, fetch

BODY = random.Random(14).randbytes(50_000)  # incompressible; 2 MiB hold about 38
PATHS = [f"/big/{i}" for i in range(80)]


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[str]:
    """A 2 MiB Redis that refuses writes once full (``noeviction``): ``OOM command not
    allowed``."""
    options = ("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    with running(redis_executor(free_port(), tmp_path, *options)) as executor:
        yield f"redis://127.0.0.1:{executor.port}/0"


async def overfill(proxy: LiveProxy, origin: Origin, backend: str, refusals: int) -> list[Answer]:
    """Every one of PATHS read once through ``proxy`` (80 x 50 KB, past 2 MiB), then until
    ``backend`` has counted ``refusals`` OOM write refusals: the answers."""
    answers = []
    for path in PATHS:
        origin.reply(path, body=BODY)
        answers.append(await proxy.get(path))

    async def refused() -> bool:
        oom = await proxy.metric("sidecache_store_errors_total", backend=backend, reason="oom")
        return oom >= refusals

    await eventually(refused, 10, "oom refusals counted")
    return answers


async def test_a_full_redis_is_counted_logged_and_keeps_serving(
    live_proxy: StartProxy,
    origin: Origin,
    full_redis: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    proxy = await live_proxy(
        f"""
        backends:
          shared: {{type: redis, url: "{full_redis}", timeout: 1s}}
        defaults: {{backend: shared, ttl: 60s}}
        """
    )
    for answer in await overfill(proxy, origin, "shared", 20):
        assert (answer.status, answer.body) == (200, BODY)
    assert await proxy.metric("sidecache_breaker_state", backend="shared") == 0
    full = [r for r in caplog.records if getattr(r, "event", None) == "store_full"]
    assert len(full) == 1  # rate-limited: one line per backend per 10 s
    assert "backend shared refused a write" in full[0].getMessage()
    assert "OOM" in full[0].getMessage()
    ready = await fetch("GET", proxy.admin_url + "/readyz")
    assert ready.status == 200
    assert ready.json()["stores"]["shared"]["write_refusals"] >= 20
    stats = (await fetch("GET", proxy.admin_url + "/stats")).json()
    advice = [a for a in stats["advice"] if a["rule"] == "store-full"]
    assert [a["backend"] for a in advice] == ["shared"]
    assert "maxmemory" in advice[0]["advice"]


async def test_a_full_memcached_is_counted_logged_and_keeps_serving(
    live_proxy: StartProxy,
    origin: Origin,
    full_memcached: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    proxy = await live_proxy(
        f"""
        backends:
          pool: {{type: memcached, servers: ["{full_memcached}"], timeout: 1s}}
        defaults: {{backend: pool, ttl: 60s}}
        """
    )
    for answer in await overfill(proxy, origin, "pool", 40):
        assert (answer.status, answer.cache, answer.body) == (200, "MISS", BODY)
    assert await proxy.metric("sidecache_store_errors_total", reason="errors") == 0
    assert await proxy.metric("sidecache_breaker_state", backend="pool") == 0
    # what was stored before it filled up is still served
    assert (await proxy.get(PATHS[0])).cache == "HIT"
    full = [r for r in caplog.records if getattr(r, "event", None) == "store_full"]
    assert len(full) == 1  # rate-limited: one line per backend per 10 s
    assert full[0].levelno == logging.WARNING
    assert "backend pool refused a write (set): " in full[0].getMessage()
    ready = await fetch("GET", proxy.admin_url + "/readyz")
    assert ready.status == 200  # a full cache never takes the pod out of service
    shown = ready.json()["stores"]["pool"]
    assert shown["breaker"] == "closed"
    assert shown["write_refusals"] >= 40
    assert shown["last_refusal"] == "set"
    # and the report says so, with what to do
    stats = (await fetch("GET", proxy.admin_url + "/stats")).json()
    advice = [a for a in stats["advice"] if a["rule"] == "store-full"]
    assert len(advice) == 1
    assert advice[0]["backend"] == "pool"
    assert "writes were refused for lack of memory" in advice[0]["advice"]
    assert "without -M" in advice[0]["advice"]
