"""End-to-end tests share the real Redis/Memcached fixtures of the store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.purgecheck import HOST
from tests.e2e.softcheck import client, store_policy  # noqa: F401  (fixtures, re-exported)
from tests.e2e.test_purge_eviction import make_server  # noqa: F401  (a fixture, re-exported)
from tests.stores.conftest import (  # noqa: F401  (fixtures, re-exported)
    memcached_addr,
    memcached_server,
    own_redis,
    redis_server,
    redis_url,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that names purgecheck.HOST, the one Host of two proxy replicas."""
    async with aiohttp.ClientSession(headers={"Host": HOST}) as session:
        yield session
