"""Warm restart: the memory stores written to a file, and read back before serving.

The file is a fixed header and a body::

    magic b"SCSNAP\\r\\n" | version u16 | 0 u16 | body length u64 | blake2b-256 of the body
    body: msgpack arrays one after another, [store, route, key, value, expires, [tags]]

``expires`` is wall-clock (unix seconds): a process's monotonic deadlines mean nothing
to the next one. Entries go least recently used first, so a smaller ``max_size`` keeps
the most recently used. The stored values are the entries' envelopes as they are; their
``response_time`` is wall-clock too, so Age counts the time across the restart.

Writing takes an immutable copy of the stores' entry tuples on the event loop (pointer
copies), then packs, hashes and writes in a thread, in 1 MiB chunks: temp file in the
same directory, fsync, rename, fsync of the directory. Reading checks magic, version,
length and checksum before anything reaches a store; every fault is ``SnapshotError``,
which the caller logs and ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import msgpack

from proxy.obs.logs import event
from proxy.policy.load import LoadedPolicy, MemoryBackend, TieredBackend
from proxy.policy.model import Snapshot
from proxy.stores.base import Entry, Store

MAGIC: Final = b"SCSNAP\r\n"
VERSION: Final = 1
HEADER: Final = struct.Struct(">8sHHQ32s")
CHUNK: Final = 1024 * 1024

# (store, route, key, value, expires at (unix seconds), tags)
Record = tuple[str, str, str, bytes, float, tuple[str, ...]]
# (store, wall now, monotonic now, its entry tuples)
Taken = tuple[str, float, float, list[Entry]]


class SnapshotError(ValueError):
    """A snapshot file that cannot be used: the reason, in words, for the log."""


class SnapshotTimeout(Exception):
    """Writing did not finish before its deadline; the previous file stays."""


class SnapshotOutdated(Exception):
    """A delete or purge ran while the snapshot was written: it would bring entries back."""


@dataclass(frozen=True, slots=True)
class Written:
    entries: int
    size: int  # bytes of the file
    seconds: float


@dataclass(slots=True)
class Loaded:
    """What a start-up read put into the stores, and what it left out and why."""

    entries: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def worker_path(path: str, worker: int | None) -> str:
    """The file of one worker: ``path`` alone, ``path.wI`` with ``--workers N``."""
    return path if worker is None else f"{path}.w{worker}"


def route_of(key: str) -> str:
    """The route a key belongs to: ``sc:<route>:<digest>`` (variant keys too)."""
    prefix, _, rest = key.partition(":")
    route, sep, _ = rest.partition(":")
    return route if prefix == "sc" and sep else ""


# ---------------------------------------------------------------- writing


def collect(stores: Mapping[str, Store]) -> list[Taken]:
    """Each memory store's entries as (name, wall now, monotonic now, entry tuples): a
    copy of references, taken in one step on the event loop."""
    taken: list[Taken] = []
    for name, store in stores.items():
        memory = store.snapshottable()
        if memory is not None and memory.name == name:
            mono, entries = memory.snapshot_entries()
            taken.append((name, time.time(), mono, entries))
    return taken


def records(taken: Iterable[Taken]) -> Iterator[Record]:
    """The copied entry tuples (value, deadline, key, *tags) as records."""
    for name, wall, mono, entries in taken:
        shift = wall - mono
        for entry in entries:
            key = entry[2]
            yield (name, route_of(key), key, entry[0], entry[1] + shift, entry[3:])


def write_file(
    path: str,
    items: Iterable[Record],
    deadline: float | None = None,
    publish: Callable[[str, str], None] = os.replace,
) -> Written:
    """Write ``items`` to ``path`` atomically; ``OSError``, ``SnapshotTimeout`` or
    whatever ``publish`` (the rename) raises leave the previous file as it was.
    ``deadline`` is on the monotonic clock."""
    began = time.perf_counter()
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(bytes(HEADER.size))
            digest, length, count = hashlib.blake2b(digest_size=32), 0, 0
            packer = msgpack.Packer(use_bin_type=True)
            buffer = bytearray()
            for store, route, key, value, expires, tags in items:
                buffer += packer.pack([store, route, key, value, expires, list(tags)])
                count += 1
                if len(buffer) >= CHUNK:
                    if deadline is not None and time.monotonic() > deadline:
                        raise SnapshotTimeout(f"not written within its time ({count} entries)")
                    digest.update(buffer)
                    out.write(buffer)
                    length += len(buffer)
                    buffer.clear()
            digest.update(buffer)
            out.write(buffer)
            length += len(buffer)
            out.seek(0)
            out.write(HEADER.pack(MAGIC, VERSION, 0, length, digest.digest()))
            out.flush()
            os.fsync(out.fileno())
        publish(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return Written(count, HEADER.size + length, time.perf_counter() - began)


# ---------------------------------------------------------------- reading


def open_verified(path: str) -> BinaryIO:
    """The file, checked whole (magic, version, length, checksum) in one streaming pass
    and positioned at its first entry; ``SnapshotError`` saying what is wrong otherwise
    (``FileNotFoundError`` when there is none). Nothing is kept in memory meanwhile."""
    source = open(path, "rb")  # noqa: SIM115  (handed to the caller)
    try:
        head = source.read(HEADER.size)
        if len(head) < HEADER.size:
            raise SnapshotError(f"truncated: {len(head)} bytes, shorter than the header")
        magic, version, _, length, expected = HEADER.unpack(head)
        if magic != MAGIC:
            raise SnapshotError("not a sidecache snapshot (unknown magic)")
        if version != VERSION:
            raise SnapshotError(f"format version {version}, this sidecache reads {VERSION}")
        digest = hashlib.blake2b(digest_size=32)
        seen = 0
        while chunk := source.read(CHUNK):
            seen += len(chunk)
            digest.update(chunk)
        if seen != length:
            raise SnapshotError(f"truncated: body of {seen} bytes, the header says {length}")
        if digest.digest() != expected:
            raise SnapshotError("checksum mismatch (the body is damaged)")
        source.seek(HEADER.size)
    except BaseException:
        source.close()
        raise
    return source


def iter_records(source: BinaryIO) -> Iterator[Record]:
    """The entries of a verified file, one at a time (``SnapshotError`` if malformed)."""
    unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=0)
    index = 0
    while chunk := source.read(CHUNK):
        unpacker.feed(chunk)
        try:
            for item in unpacker:
                yield _record(item, index)
                index += 1
        except (ValueError, msgpack.UnpackException) as exc:
            raise SnapshotError(f"malformed entry {index}: {exc}") from None


def read_file(path: str) -> list[Record]:
    """Every record of an intact snapshot (for tests and tools)."""
    with open_verified(path) as source:
        return list(iter_records(source))


def _record(item: object, index: int) -> Record:
    if not isinstance(item, list) or len(item) != 6:
        raise SnapshotError(f"entry {index} is not a snapshot entry")
    store, route, key, value, expires, tags = item
    if not (
        isinstance(store, str)
        and isinstance(route, str)
        and isinstance(key, str)
        and isinstance(value, bytes)
        and isinstance(expires, float | int)
        and isinstance(tags, list)
        and all(isinstance(tag, str) for tag in tags)
    ):
        raise SnapshotError(f"entry {index} has fields of the wrong type")
    return (store, route, key, value, float(expires), tuple(tags))


def _memory_of(loaded: LoadedPolicy) -> dict[str, str]:
    """route name → the memory store its entries live in (a tiered backend's l1)."""
    backends = loaded.policy.backends
    placed: dict[str, str] = {}
    for route in loaded.routes:
        if not route.cache:  # cache: false now: its entries would never be read
            continue
        backend = backends.get(route.backend)
        if isinstance(backend, TieredBackend):
            placed[route.name] = backend.l1
        elif isinstance(backend, MemoryBackend):
            placed[route.name] = route.backend
    return placed


async def restore(
    items: Iterable[Record], loaded: LoadedPolicy, stores: Mapping[str, Store], now: float
) -> Loaded:
    """Put the records that still belong into their stores (``max_size`` applies as for
    any write): not expired, their route in the policy, its backend still that memory
    store."""
    placed, result = _memory_of(loaded), Loaded()
    skipped = result.skipped
    for store_name, route, key, value, expires, tags in items:
        found = stores.get(store_name)
        store = found.snapshottable() if found is not None else None
        if store is None:
            skipped["backend gone"] = skipped.get("backend gone", 0) + 1
        elif route not in placed:
            skipped["route gone"] = skipped.get("route gone", 0) + 1
        elif placed[route] != store_name:
            skipped["route moved"] = skipped.get("route moved", 0) + 1
        elif expires <= now:
            skipped["expired"] = skipped.get("expired", 0) + 1
        else:
            await store.set(key, value, expires - now, tags)
            result.entries += 1
    return result


# ---------------------------------------------------------------- the worker's writer


class Snapshots:
    """One worker's snapshot: loaded at start, written every ``interval`` and at stop.

    ``current`` answers the running policy and stores (a reload may replace both).
    Writes never overlap: the last one at stop waits for a periodic one in progress.
    """

    def __init__(
        self,
        config: Snapshot,
        worker: int | None,
        current: Callable[[], tuple[LoadedPolicy, Mapping[str, Store]]],
    ) -> None:
        self.path = worker_path(config.path, worker)
        self.interval = config.interval
        self.current = current
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # Deletes and purges since start. One makes the file on disk (and any write in
        # progress) outdated: it is removed at once, so a crash never restores what was
        # purged. The rename of a write checks this under the same lock.
        self._removals = 0
        self._rename = threading.Lock()
        self._hooked: set[int] = set()

    async def load(self) -> Loaded | None:
        """Fill the memory stores from the file, if it is there and intact."""
        began = time.perf_counter()
        try:
            source = await asyncio.to_thread(open_verified, self.path)
        except FileNotFoundError:
            event("snapshot", f"no snapshot at {self.path}: starting empty", path=self.path)
            return None
        except (SnapshotError, OSError) as error:
            self._ignored(error)
            return None
        loaded, stores = self.current()
        with source:  # entry by entry: never the whole file in memory beside the stores
            try:
                result = await restore(iter_records(source), loaded, stores, time.time())
            except SnapshotError as error:  # checksummed, yet not ours: start empty
                for store in stores.values():
                    if (memory := store.snapshottable()) is not None:
                        await memory.delete(memory.keys())
                self._ignored(error)
                return None
        event(
            "snapshot",
            f"snapshot {self.path} loaded: {result.entries} entries",
            path=self.path,
            entries=result.entries,
            skipped=result.skipped,
            seconds=round(time.perf_counter() - began, 3),
        )
        return result

    def _ignored(self, error: Exception) -> None:
        self._failed(
            logging.WARNING,
            "snapshot {path} ignored: {reason}; starting with an empty cache",
            error,
        )

    def _failed(self, level: int, message: str, error: Exception) -> None:
        """One log line for a load or write that failed: ``message`` with the file's path
        and the reason (the OS's words for an ``OSError``)."""
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        text = message.format(path=self.path, reason=reason)
        event("snapshot", text, level=level, path=self.path, reason=str(reason))

    def start(self) -> None:
        self._hook()
        self._task = asyncio.create_task(self._every())

    def _removed(self) -> None:
        """A memory store deleted or purged (on the event loop): the file goes."""
        with self._rename:
            self._removals += 1
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _hook(self) -> None:
        """Be told of the memory stores' removals; a store new since the last look (a
        reload replaced it: it starts empty) makes the file outdated as a purge does."""
        for store in self.current()[1].values():
            memory = store.snapshottable()
            if memory is not None and memory.on_removal is None:
                if self._hooked:
                    self._removed()
                memory.on_removal = self._removed
                self._hooked.add(id(memory))

    def _publish(self, removals: int, temp: str, path: str) -> None:
        with self._rename:
            if self._removals != removals:
                raise SnapshotOutdated("entries were deleted or purged while it was written")
            os.replace(temp, path)

    async def _every(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(min(1.0, max(0.0, due - time.monotonic())))
            self._hook()
            if time.monotonic() >= due:
                await self.write(time.monotonic() + self.interval)
                due = time.monotonic() + self.interval

    async def write(self, deadline: float | None = None) -> Written | None:
        """Write the file now; errors are logged, never raised. A write a purge made
        outdated is retried once at once (while the deadline allows)."""
        outdated = SnapshotOutdated()
        for _ in range(2):
            try:
                return await self._write(deadline)
            except SnapshotOutdated as error:
                outdated = error
                if deadline is not None and time.monotonic() > deadline:
                    break
        event("snapshot", f"snapshot {self.path} not written: {outdated}", path=self.path)
        return None

    async def _write(self, deadline: float | None) -> Written | None:
        async with self._lock:
            self._hook()
            _, stores = self.current()
            taken, removals = collect(stores), self._removals
            publish = functools.partial(self._publish, removals)
            try:
                written = await asyncio.to_thread(
                    write_file, self.path, records(taken), deadline, publish
                )
            except SnapshotOutdated:
                raise
            except Exception as error:  # never a crash: the proxy serves on without it
                self._failed(logging.ERROR, "cannot write snapshot {path}: {reason}", error)
                return None
        event(
            "snapshot",
            f"snapshot {self.path} written: {written.entries} entries",
            path=self.path,
            entries=written.entries,
            bytes=written.size,
            seconds=round(written.seconds, 3),
        )
        return written

    async def stop(self, deadline: float) -> Written | None:
        """The last write, after the drain: waits for a periodic write in progress."""
        async with self._lock:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
        return await self.write(deadline)
