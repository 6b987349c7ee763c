"""Where sidecache bends aiomcache past its public API, and nowhere else.

aiomcache's pool opens plain ``asyncio`` streams, grows only to its ``minsize``, and its
``Client`` offers no way to hand it another pool or the memcached 1.6 meta commands.
``ConnectionPool`` subclasses its ``MemcachePool`` (overriding ``acquire`` and
``_create_new_conn``, reading ``_pool``/``_maxsize``/``_host``/``_port``) and
``new_client`` sets a client's private ``_pool`` to it. tests/stores/
test_aiomcache_adapter.py pins the behaviour relied on: an aiomcache upgrade that
changes it fails there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiomcache
from aiomcache.pool import Connection, MemcachePool


def new_client(host: str, port: int, pool_size: int) -> tuple[aiomcache.Client, ConnectionPool]:
    """An aiomcache client whose calls take their connections from a ``ConnectionPool``
    (up to ``pool_size``), and that pool, for the meta commands."""
    client = aiomcache.Client(host, port, pool_size=pool_size)
    pool = ConnectionPool(host, port, minsize=1, maxsize=pool_size)
    client._pool = pool
    return client, pool


class EofSafeReader(asyncio.StreamReader):
    """aiomcache reads ``readline()`` until a line ends in CRLF; at EOF ``readline()``
    answers ``b""`` at once, forever, and the loop never gets control back. Raise."""

    async def readline(self) -> bytes:
        line = await super().readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        return line


class ConnectionPool(MemcachePool):
    """aiomcache's pool, opening its connections with an ``EofSafeReader``, and growing
    up to ``maxsize`` when every connection is busy (aiomcache's own grows only to
    ``minsize``: calls queued on one connection)."""

    async def acquire(self) -> Connection:
        while self._pool.empty() and 0 < self.size() < self._maxsize:
            conn = await self._create_new_conn()
            if conn is None:
                break
            self._pool.put_nowait(conn)
        return await super().acquire()

    @contextlib.asynccontextmanager
    async def _raw(self) -> AsyncIterator[Connection]:
        """A pooled connection for the meta commands aiomcache lacks (memcached ≥ 1.6):
        only the three methods below speak on it, each reading every reply it asked for."""
        conn = await self.acquire()
        try:
            yield conn
        except Exception as exc:
            conn.reader.set_exception(exc)  # a reply may be half read: never reuse it
            raise
        finally:
            self.release(conn)

    async def counters(self, keys: Sequence[bytes]) -> dict[bytes, Counter]:
        """Each key's value, CAS and seconds left (``mg KEY v c t``, pipelined); absent
        keys are left out."""
        found: dict[bytes, Counter] = {}
        async with self._raw() as conn:
            conn.writer.write(b"".join(b"mg %s v c t\r\n" % key for key in keys))
            await conn.writer.drain()
            for key in keys:
                item = await meta_value(conn)
                if item is not None:
                    flags, value = item
                    found[key] = Counter(value, flags[b"c"], int(flags[b"t"]))
        return found

    async def extend(self, key: bytes, counter: Counter, exptime: int) -> bool:
        """Give ``key`` a new exptime, only while it is still ``counter``'s very item
        (``ms … C<cas> T<exptime>`` with its value): a purge's ``incr`` in between is
        never undone. ``False``: it changed or went since."""
        async with self._raw() as conn:
            head = b"ms %s %d C%s T%d\r\n" % (key, len(counter.value), counter.cas, exptime)
            conn.writer.write(head + counter.value + b"\r\n")
            await conn.writer.drain()
            line = await conn.reader.readline()
            if line in (b"EX\r\n", b"NF\r\n"):
                return False
            if line != b"HD\r\n":
                raise aiomcache.exceptions.ClientException("ms failed", line)
            return True

    async def delete_if_equal(self, key: bytes, value: bytes) -> bool:
        """Delete ``key`` only while it holds ``value``, atomically. ``mg`` reads the value
        and the item's CAS, and ``md … C<cas>`` deletes that very item: one replaced in
        between (it expired and another ``add`` took the key, even with the same value)
        has another CAS, and memcached answers ``EX`` without deleting it."""
        async with self._raw() as conn:
            conn.writer.write(b"mg %s v c\r\n" % key)
            await conn.writer.drain()
            item = await meta_value(conn)
            if item is None or item[1] != value:
                return False  # gone (expired or deleted), or another's
            conn.writer.write(b"md %s C%s\r\n" % (key, item[0][b"c"]))
            await conn.writer.drain()
            line = await conn.reader.readline()
            if line in (b"NF\r\n", b"EX\r\n"):
                return False  # expired, or replaced, since the mg
            if line != b"HD\r\n":
                raise aiomcache.exceptions.ClientException("md failed", line)
            return True

    async def _create_new_conn(self) -> Connection | None:
        if self.size() >= self._maxsize:
            return None
        loop = asyncio.get_running_loop()
        reader = EofSafeReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, self._host, self._port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if self.size() < self._maxsize:
            return Connection(reader, writer)
        writer.close()
        return None


async def meta_value(conn: Connection) -> tuple[dict[bytes, bytes], bytes] | None:
    """One ``mg`` reply: its flags (first letter → the rest) and value; ``None`` for ``EN``."""
    line = await conn.reader.readline()
    if line == b"EN\r\n":
        return None
    head = line.split()
    if len(head) < 2 or head[0] != b"VA" or not head[1].isdigit():
        raise aiomcache.exceptions.ClientException("mg failed", line)
    value = (await conn.reader.readexactly(int(head[1]) + 2))[:-2]
    return {flag[:1]: flag[1:] for flag in head[2:]}, value


@dataclass(frozen=True, slots=True)
class Counter:
    """A generation counter as the meta protocol shows it: its value, its item's CAS, and
    the seconds it has left (``-1``: it never expires)."""

    value: bytes
    cas: bytes
    ttl: int
