"""End-to-end tests share the real Redis/Memcached fixtures of the store tests."""

from __future__ import annotations

from tests.stores.conftest import (  # noqa: F401  (fixtures, re-exported)
    memcached_addr,
    memcached_server,
    own_redis,
    redis_server,
    redis_url,
)
