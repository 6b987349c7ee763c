"""A shared store that fails at any step of a request (lookup, lease, the re-check under
the lease, the write, the hit-for-miss marker, the unlock) is never a client error: the
request is answered from the origin (store_failure: open, the default).

Faults are injected deterministically by a wrapper that raises the store's own errors
(``StoreTimeout``/``StoreUnavailable``) on a chosen call; the real-server fault tests
(kills, relays) are in tests/stores and tests/e2e, and under load in bench/chaos.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import pytest
from aiohttp import web

from proxy.errors import StoreTimeout, StoreUnavailable
from proxy.stores.memory import MemoryStore
from tests.conftest import MakeProxy, Origin

OPERATIONS = ("get", "set", "lock", "unlock", "delete", "purge_tags")


class FailingStore(MemoryStore):
    """A memory store posing as a shared one, failing the calls ``plan`` names:
    ``{"get": {2, 3}}`` fails the second and third ``get``; ``{"get": "all"}`` every one."""

    shared = True

    def __init__(self, plan: dict[str, set[int] | str]) -> None:
        super().__init__("flaky", 64 << 20)
        self.plan = plan
        self.calls: Counter[str] = Counter()

    def _maybe_fail(self, op: str) -> None:
        self.calls[op] += 1
        wanted = self.plan.get(op, set())
        if wanted == "all" or (isinstance(wanted, set) and self.calls[op] in wanted):
            error = StoreTimeout if self.calls[op] % 2 else StoreUnavailable
            raise error(self.name, f"{op} #{self.calls[op]} injected")

    async def get(self, key: str) -> bytes | None:
        self._maybe_fail("get")
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        self._maybe_fail("set")
        await super().set(key, value, ttl, tags)

    async def lock(self, key: str, ttl: float) -> str | None:
        self._maybe_fail("lock")
        return await super().lock(key, ttl)

    async def unlock(self, key: str, token: str) -> bool:
        self._maybe_fail("unlock")
        return await super().unlock(key, token)

    async def delete(self, keys: Sequence[str]) -> int:
        self._maybe_fail("delete")
        return await super().delete(keys)

    async def purge_tags(self, tags: Sequence[str]) -> int:
        self._maybe_fail("purge_tags")
        return await super().purge_tags(tags)


POLICY = "defaults: {ttl: 60s}\n"
PLANS = {
    "lookup": {"get": {1}},
    "re-check under the lease": {"get": {2}},
    "lookup and re-check": {"get": {1, 2}},
    "every get": {"get": "all"},
    "lease": {"lock": {1}},
    "every lease": {"lock": "all"},
    "write": {"set": {1}},
    "every write": {"set": "all"},
    "unlock": {"unlock": {1}},
    "everything": dict.fromkeys(OPERATIONS, "all"),
}


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
async def test_a_failing_store_step_is_never_a_client_error(
    make_proxy: MakeProxy, origin: Origin, plan: dict[str, set[int] | str]
):
    origin.reply("/doc", body=b"the document", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(POLICY)
    store = proxy.engine.stores["local"] = FailingStore(plan)
    for _ in range(3):
        response = await proxy.get("/doc")
        assert response.status == 200
        assert await response.read() == b"the document"
    assert sum(store.calls.values()) > 0


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
async def test_concurrent_misses_on_a_failing_store_are_all_answered(
    make_proxy: MakeProxy, origin: Origin, plan: dict[str, set[int] | str]
):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        return web.Response(body=b"slow doc", headers={"Cache-Control": "max-age=60"})

    origin.reply("/slow", slow)
    proxy = await make_proxy("defaults: {ttl: 60s, coalesce: {timeout: 1s}}\n")
    proxy.engine.stores["local"] = FailingStore(plan)
    responses = await asyncio.gather(*(proxy.get("/slow") for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert {await r.read() for r in responses} == {b"slow doc"}


async def test_unsafe_method_purge_on_a_failing_store_is_not_an_error(
    make_proxy: MakeProxy, origin: Origin
):
    proxy = await make_proxy(POLICY)
    proxy.engine.stores["local"] = FailingStore(dict.fromkeys(OPERATIONS, "all"))
    response = await proxy.request("POST", "/doc", data=b"x")
    assert response.status == 200
