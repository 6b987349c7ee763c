"""The set of servers one run needs, started lazily by key and remembered.

Keys: ``origin``; ``nginx-1w``/``nginx-2w``; ``nginx-pass-1w`` (``proxy_pass``, no cache);
``varnish``; ``sidecache-<store>-<n>w`` with store in memory, redis, memcached, tiered.
A server that fails to start is remembered with its error, so its rows report the
failure and the rest of the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import servers
from harness.procs import Proc, StartError, Supervisor
from harness.servers import Server


@dataclass
class Lab:
    sup: Supervisor
    origin_kind: str = "nginx"  # what the throughput rows use as their origin
    have_varnish: bool = True
    sidecache_src: Path = servers.REPO  # the source tree sidecache runs from
    started: dict[str, Server] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    _stores: dict[str, tuple[Proc, int]] = field(default_factory=dict)

    def origin(self) -> Server:
        if "origin" not in self.started:
            if self.origin_kind == "nginx":
                self.started["origin"] = servers.start_nginx_origin(self.sup)
            else:
                self.started["origin"] = servers.start_aiohttp_origin(self.sup, 0.0, 3600)
        return self.started["origin"]

    def reset(self) -> None:
        """Stop every server started so far, so the next scenario runs on a quiet machine."""
        self.sup.stop_all()
        self.started.clear()
        self.failed.clear()
        self._stores.clear()

    def store(self, kind: str) -> tuple[Proc, int]:
        if kind not in self._stores:
            start = servers.start_redis if kind == "redis" else servers.start_memcached
            self._stores[kind] = start(self.sup)
        return self._stores[kind]

    def get(self, key: str) -> Server | str:
        """The server for ``key``, started if need be; or why it could not start."""
        if key in self.started:
            return self.started[key]
        if key in self.failed:
            return self.failed[key]
        try:
            self.started[key] = self._start(key)
        except (StartError, OSError, ValueError) as exc:
            self.failed[key] = f"{type(exc).__name__}: {exc}"
            return self.failed[key]
        return self.started[key]

    def _start(self, key: str) -> Server:
        if key == "origin":
            return self.origin()
        if key == "varnish":
            if not self.have_varnish:
                raise StartError("varnishd is not installed")
            return servers.start_varnish(self.sup, key, self.origin())
        kind, _, rest = key.partition("-")
        workers = int(rest.rsplit("-", 1)[-1].removesuffix("w"))
        if key.startswith("nginx-pass-"):
            return servers.start_nginx_cache(self.sup, key, self.origin(), workers, cache=False)
        if kind == "nginx":
            return servers.start_nginx_cache(self.sup, key, self.origin(), workers)
        if kind == "sidecache":
            store = rest.split("-")[0]
            return self._start_sidecache(key, store, workers)
        raise ValueError(f"unknown server {key!r}")

    def _start_sidecache(self, key: str, store: str, workers: int) -> Server:
        redis_port = memcached_port = None
        stores: list[Proc] = []
        if store in ("redis", "tiered"):
            proc, redis_port = self.store("redis")
            stores.append(proc)
        if store == "memcached":
            proc, memcached_port = self.store("memcached")
            stores.append(proc)
        policy = servers.sidecache_policy(self.origin(), store, redis_port, memcached_port)
        return servers.start_sidecache(self.sup, key, policy, workers, stores, self.sidecache_src)
