"""Policy hot reload: watch the policy file's directory (and SIGHUP), swap in valid policies.

The watch is on the directory, not the file: a Kubernetes ConfigMap update swaps the
``..data`` symlink, after which a watch on the file's old inode hears nothing. Every
event re-reads the file and compares its content hash, so a swap reloads exactly once
and a touched but unchanged file not at all. A valid policy is swapped in between two
requests (routes, and the stores or origin pool only when they changed); an invalid one
is logged with its errors and counted, and the running policy stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from watchfiles import awatch

from proxy.engine.driver import Engine
from proxy.errors import PolicyError
from proxy.obs.logs import AccessLog, event
from proxy.obs.metrics import Meter
from proxy.origin.client import OriginClient
from proxy.policy.load import LoadedPolicy
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores, replaced

Loader = Callable[[str], LoadedPolicy]
Apply = Callable[[LoadedPolicy], Awaitable[None]]

DEBOUNCE_MS: Final = 500
RETIRE_AFTER: Final = 30.0  # seconds in-flight requests may keep using replaced stores


def content_digest(path: str) -> str:
    """The digest ``LoadedPolicy.digest`` would have for the file's current content."""
    text = Path(path).read_text(encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Reloader:
    """Reloads one worker's policy when its file changes or on ``request()`` (SIGHUP)."""

    def __init__(self, path: str, digest: str, loader: Loader, apply: Apply, meter: Meter) -> None:
        self.path = os.path.abspath(path)
        self.digest = digest  # of the running policy
        self.loader = loader
        self.apply = apply
        self.meter = meter
        self._rejected: str | None = None  # digest of the last invalid content
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._retired: list[Retired] = []
        self._names: set[str] = set()

    def start(self) -> None:
        self._spawn(self.watch())

    def request(self) -> None:
        """SIGHUP: check the file now."""
        self._spawn(self.check("signal"))

    def retire(self, retired: Retired) -> None:
        """Close what a reload replaced after ``RETIRE_AFTER`` (or at shutdown)."""
        if not retired.stores and retired.origin is None:
            return
        self._retired.append(retired)

        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER)
            self._retired.remove(retired)
            await retired.aclose()

        self._spawn(later())

    async def aclose(self) -> None:
        self._stop.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for retired in self._retired:
            await retired.aclose()
        self._retired.clear()

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _relevant(self, _change: object, path: str) -> bool:
        """Events on the policy file, on the symlink it goes through, or on the kubelet's
        ``..``-names; not on whatever else shares the directory (a log file, say)."""
        return os.path.basename(path) in self._names or os.path.basename(path).startswith("..")

    async def watch(self) -> None:
        directory = os.path.dirname(self.path)
        self._names = {os.path.basename(self.path)}
        with contextlib.suppress(OSError):
            target = os.readlink(self.path)  # policy.yaml -> ..data/policy.yaml
            if not os.path.isabs(target):
                self._names.add(target.split(os.sep, 1)[0])
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        try:
            async for _ in awatch(
                directory,
                watch_filter=self._relevant,
                debounce=DEBOUNCE_MS,
                stop_event=self._stop,
                recursive=False,
            ):
                await self.check("file")
        except Exception:
            # without the watch SIGHUP still works; say so loudly
            logging.getLogger("sidecache").exception("watching %s failed", directory)

    async def check(self, trigger: str) -> bool:
        """Reload if the content changed; answers whether a new policy is running."""
        async with self._lock:
            try:
                digest = await asyncio.to_thread(content_digest, self.path)
            except (OSError, UnicodeDecodeError) as exc:
                self._failed(trigger, [f"{self.path}: cannot read: {exc}"])
                return False
            if digest == self.digest or digest == self._rejected:
                if trigger == "signal":
                    event("reload", "policy unchanged", trigger=trigger, digest=digest)
                return False
            try:
                loaded = await asyncio.to_thread(self.loader, self.path)
            except PolicyError as error:
                self._rejected = digest
                self._failed(trigger, [str(issue) for issue in error.issues])
                return False
            except ValueError as error:  # e.g. --origin no longer validates
                self._rejected = digest
                self._failed(trigger, [str(error)])
                return False
            previous, self.digest = self.digest, loaded.digest
            await self.apply(loaded)
            self._rejected = None
            self.meter.reload(ok=True)
            event(
                "reload",
                f"policy reloaded: {loaded.summary()}",
                trigger=trigger,
                digest=loaded.digest,
                previous=previous,
            )
            return True

    def _failed(self, trigger: str, errors: list[str]) -> None:
        self.meter.reload(ok=False)
        event(
            "reload_failed",
            f"policy reload refused ({len(errors)} error(s)); the running policy stays",
            level=logging.ERROR,
            trigger=trigger,
            errors=errors,
            running=self.digest,
        )


@dataclass(slots=True)
class Retired:
    """Stores and an origin pool a reload replaced, to close once nothing uses them."""

    stores: dict[str, Store] = field(default_factory=dict)
    origin: OriginClient | None = None

    async def aclose(self) -> None:
        await close_stores(self.stores)
        if self.origin is not None:
            await self.origin.aclose()


def swap_policy(engine: Engine, loaded: LoadedPolicy) -> Retired:
    """Swap a validated policy into a running engine, with no await between the parts.

    Backends whose configuration is unchanged keep their store (and its contents);
    changed or removed ones are replaced, and so is the origin pool when the origin or
    its size changed. What was replaced is returned: requests in flight may still hold
    it, so the caller closes it later (``Reloader.retire``).
    """
    old, new = engine.loaded.policy, loaded.policy
    retired = Retired()
    origin: OriginClient | None = None
    stores = engine.stores
    if new.backends != old.backends:
        unchanged = {
            name: store
            for name, store in engine.stores.items()
            if old.backends.get(name) == new.backends.get(name)
        }
        stores = build_stores(new.backends, keep=unchanged)
        retired.stores = replaced(engine.stores, stores)
    if (new.origin, new.server.origin_connections) != (
        old.origin,
        old.server.origin_connections,
    ):
        retired.origin = engine.origin
        origin = OriginClient(new.origin, new.server.origin_connections)
    engine.reconfigure(loaded, stores, origin, AccessLog.from_setting(new.server.access_log))
    return retired
