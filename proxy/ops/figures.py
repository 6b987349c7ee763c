"""Backend figures: each Redis and Memcached backend's own numbers, read from the server.

``FiguresPoller`` reads Redis ``INFO`` (every master of a cluster, summed) and Memcached
``stats`` (every server, summed) every ``FIGURES_EVERY`` seconds, each on a short-lived
connection of its own (never the stores' pools), and exposes them as the
``sidecache_backend_*{backend}`` series. Every ``LIMITS_EVERY`` seconds it reads Redis's
``maxmemory`` and ``maxmemory-policy`` and warns when a full Redis would refuse writes or
grow without bound. With ``--workers N`` only the first worker polls and logs; it writes
its reading beside the metric files, and any worker's scrape reads it: one figure per
backend, never N.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Final

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from proxy.engine.driver import Engine
from proxy.obs.logs import event
from proxy.obs.prometheus_adapter import multiprocess_dir
from proxy.ops.figures_read import (
    READ_ERRORS,
    Figures,
    Limits,
    limits_advice,
    read_backend,
    read_limits,
)
from proxy.policy.load import Backend, RedisBackend

log = logging.getLogger("sidecache")
FIGURES_EVERY: Final = 15.0  # seconds between two readings of every backend
LIMITS_EVERY: Final = 60.0  # seconds between two checks of Redis's maxmemory settings
REWARN_EVERY: Final = 3600.0  # an unchanged bad setting is warned about again this often
STALE_AFTER: Final = 4 * FIGURES_EVERY  # an older reading is shown as the backend down
SHARE_FILE: Final = "backend-figures.json"


# ---------------------------------------------------------------- the poller


class FiguresPoller:
    """Reads every shared backend's figures on a timer (``polls``) and exposes the
    latest reading: this process's own, or with ``--workers N`` the polling worker's,
    shared through a file beside the metric files."""

    def __init__(self, engine: Engine, *, polls: bool = True) -> None:
        self.engine = engine
        self.polls = polls
        self.readings: dict[str, Figures] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._warned: dict[str, tuple[str | None, float]] = {}  # advice, monotonic time
        self._fallback_said: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._started = 0  # refreshes begun; a reading older than the one shown is dropped
        self._shown = 0

    def start(self) -> None:
        if self.polls:
            self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        last_check = -LIMITS_EVERY
        while True:
            try:
                await self.refresh()
                if time.monotonic() - last_check >= LIMITS_EVERY:
                    last_check = time.monotonic()
                    await self.check_limits()
            except Exception:  # a figures bug must not stop the worker
                log.exception("reading backend figures failed")
            await asyncio.sleep(FIGURES_EVERY)

    def _backends(self) -> dict[str, Backend]:
        return dict(self.engine.loaded.policy.backends)

    async def refresh(self) -> dict[str, Figures]:
        """Read every shared backend now (at start-up, then every ``FIGURES_EVERY``)."""
        backends = self._backends()
        self._started += 1
        mine = self._started
        found = await asyncio.gather(*(read_backend(n, c) for n, c in backends.items()))
        readings = {f.backend: f for f in found if f is not None}
        # Reads overlap (the timer's and an explicit one): a read that began earlier but
        # answered later (a reply already buffered when the server went down) must not
        # replace a newer reading.
        if mine > self._shown:
            self._shown = mine
            self.readings = readings
            if self._share_path() is not None:
                await asyncio.to_thread(self._share)  # a file write: off the event loop
        return readings

    async def check_limits(self) -> None:
        """Warn about every Redis backend without maxmemory or with ``noeviction``: at
        the first reading, when the setting changes, and hourly while it stays."""
        for name, config in self._backends().items():
            if not isinstance(config, RedisBackend):
                continue
            try:
                limits, fell_back = await read_limits(config)
            except READ_ERRORS:
                continue  # unreachable: its figures say so (up 0); checked next time
            if fell_back and name not in self._fallback_said:
                self._fallback_said.add(name)
                event(
                    "backend_limits",
                    f"backend {name}: CONFIG GET maxmemory was refused (a managed service?); "
                    "maxmemory and maxmemory-policy read from INFO memory instead",
                    backend=name,
                )
            self._warn(name, limits_advice(name, limits), limits)

    def _warn(self, name: str, advice: str | None, limits: list[Limits]) -> None:
        before, when = self._warned.get(name, (None, -REWARN_EVERY))
        now = time.monotonic()
        if advice is not None and (advice != before or now - when >= REWARN_EVERY):
            event(
                "backend_limits",
                advice,
                level=logging.WARNING,
                backend=name,
                maxmemory=[lim.maxmemory for lim in limits],
                maxmemory_policy=[lim.policy for lim in limits],
                source=limits[0].source if limits else None,
            )
            self._warned[name] = (advice, now)
        elif advice is None:
            self._warned.pop(name, None)

    # ------------------------------------------------------------ sharing across workers

    @staticmethod
    def _share_path() -> str | None:
        directory = multiprocess_dir()
        return os.path.join(directory, SHARE_FILE) if directory else None

    def _share(self) -> None:
        path = self._share_path()
        if path is None:
            return
        doc = orjson.dumps([asdict(f) for f in self.readings.values()])
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "wb") as out:  # a few hundred bytes every 15 s
            out.write(doc)
        os.replace(temporary, path)  # readers see the old file or the new, whole

    def current(self) -> dict[str, Figures]:
        """The latest reading by backend name (a stale one shows the backend down)."""
        readings = self.readings
        path = self._share_path()
        if not self.polls and path is not None:
            try:
                with open(path, "rb") as shared:
                    readings = {d["backend"]: Figures(**d) for d in orjson.loads(shared.read())}
            except (OSError, ValueError, TypeError):
                readings = {}
        now = time.time()
        backends = self._backends()
        out = {}
        for name, figures in readings.items():
            if name not in backends:
                continue  # removed by a reload
            if now - figures.read_at > STALE_AFTER and figures.up:
                figures = Figures(name, figures.type, False, figures.read_at, error="stale")
            out[name] = figures
        return out

    # ------------------------------------------------------------ prometheus

    def collect(self) -> Iterator[Metric]:
        """The ``sidecache_backend_*`` families (a collector for ``self.registry``)."""
        figures = sorted(self.current().values(), key=lambda f: f.backend)
        up = GaugeMetricFamily(
            "sidecache_backend_up",
            "1 when the last read of the backend's own figures succeeded",
            labels=["backend"],
        )
        for f in figures:
            up.add_metric([f.backend], 1.0 if f.up else 0.0)
        yield up
        for kind, name, doc, field in SERIES:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, doc, labels=["backend"]
            )
            for f in figures:
                if f.up:
                    family.add_metric([f.backend], float(getattr(f, field)))
            yield family

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterable[Metric]:
        return self.registry.collect()


SERIES: Final = (
    (
        "gauge",
        "sidecache_backend_memory_bytes",
        "Redis used_memory, Memcached bytes",
        "memory_bytes",
    ),
    (
        "gauge",
        "sidecache_backend_memory_limit_bytes",
        "Redis maxmemory (0: no limit), Memcached limit_maxbytes",
        "memory_limit_bytes",
    ),
    (
        "counter",
        "sidecache_backend_evictions",
        "Redis evicted_keys, Memcached evictions",
        "evictions",
    ),
    ("counter", "sidecache_backend_hits", "Redis keyspace_hits, Memcached get_hits", "hits"),
    (
        "counter",
        "sidecache_backend_misses",
        "Redis keyspace_misses, Memcached get_misses",
        "misses",
    ),
    (
        "gauge",
        "sidecache_backend_connections",
        "Redis connected_clients, Memcached curr_connections",
        "connections",
    ),
    ("gauge", "sidecache_backend_items", "Redis keys of the db, Memcached curr_items", "items"),
)
