"""The admin listener: health, readiness and (later) purge, metrics and stats.

Served on its own address (default 127.0.0.1:9090), never on the proxy port.
``/healthz`` answers while the process lives; ``/readyz`` while the policy is loaded
and the listener is bound and not draining. Neither depends on the origin or the
stores: a cache outage must not take the pod out of service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from proxy import __version__
from proxy.engine import Engine
from proxy.stores.base import Store


@dataclass
class AdminState:
    engine: Engine
    stores: Mapping[str, Store]
    ready: bool = False
    extra: dict[str, object] = field(default_factory=dict)


STATE: web.AppKey[AdminState] = web.AppKey("state", AdminState)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "alive", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stores = {}
    for name, store in state.stores.items():
        breaker = getattr(store, "state", None)
        stores[name] = {"type": type(store).__name__, "breaker": breaker or "n/a"}
    body = {
        "status": "ready" if state.ready else "draining",
        "policy": state.engine.loaded.path,
        "policy_digest": state.engine.loaded.digest,
        "stores": stores,
    }
    return _json(body, 200 if state.ready else 503)


def build_admin_app(state: AdminState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
