"""An open-loop HTTP/1.1 load generator that checks every body it gets.

Requests are due on a fixed schedule (``--rate`` per second; 0 runs closed-loop with
``--connections`` in flight) and each starts at its due time on an idle keep-alive
connection or a new one; latency is measured from the due time, so a stall is counted
against every request it delays (no coordinated omission). Each answer is
recorded with its start, latency, status, X-Cache and whether its body matched the
origin's bytes (``bodies.py``); errors are recorded by kind. Columns are written as one
JSON document at the end.

Run: ``python -m chaos.load --port 8080 --rate 2000 --seconds 45 --out load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time
from dataclasses import dataclass, field

import uvloop

from chaos.bodies import body_for

KINDS = ("hot", "short", "cold", "pass")
ROUTES = ("r", "m", "l")
HOT_KEYS, SHORT_KEYS = 300, 100
TIMEOUT = 10.0
IDLE_LIMIT = 50.0  # a client's keep-alive idle limit, below the server's 75 s


@dataclass
class Plan:
    rate: float
    seconds: float
    weights: tuple[int, ...]
    seed: int
    keys: int = HOT_KEYS
    routes: tuple[str, ...] = ROUTES
    started: float = 0.0
    issued: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_due(self) -> float | None:
        """The due time of the next request, or ``None`` when the run is over."""
        now = time.monotonic()
        if now - self.started >= self.seconds:
            return None
        n = self.issued
        self.issued += 1
        return self.started + n / self.rate if self.rate else now

    def pick(self) -> tuple[str, int]:
        kind = self.rng.choices(range(len(KINDS)), self.weights)[0]
        route = self.rng.choice(self.routes)
        if KINDS[kind] == "hot":
            return f"/{route}/hot/{self.rng.randrange(self.keys)}", kind
        if KINDS[kind] == "short":
            return f"/{route}/short/{self.rng.randrange(SHORT_KEYS)}", kind
        if KINDS[kind] == "cold":
            return f"/{route}/cold/{self.seed}-{self.issued}", kind
        return f"/p/{self.rng.randrange(1000)}", kind


@dataclass
class Record:
    start: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # 0: no answer (see error)
    cache: list[str] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    error: list[str] = field(default_factory=list)  # "" when answered
    corrupt: list[str] = field(default_factory=list)  # paths whose body differed

    def add(self, start: float, status: int, cache: str, kind: int, error: str) -> None:
        self.start.append(start)
        self.latency_ms.append((time.monotonic() - start) * 1000)
        self.status.append(status)
        self.cache.append(cache)
        self.kind.append(kind)
        self.error.append(error)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return status, headers, body


class Pool:
    """Keep-alive connections to the proxy: an idle one if there is one, else a new one
    up to ``cap``, else wait for one to come back. (A fixed set of connections would make
    requests queue in the client behind slow ones, and the client would measure itself.)"""

    def __init__(self, port: int, cap: int) -> None:
        self.port, self.cap, self.total = port, cap, 0
        self.idle: list[tuple[Conn, float]] = []  # with the time each went idle
        self.waiters: collections.deque[asyncio.Future[Conn | None]] = collections.deque()

    async def acquire(self) -> Conn | None:
        """An idle connection, or ``None``: the caller opens a new one."""
        while self.idle:
            conn, since = self.idle.pop()
            if not conn[0].at_eof() and time.monotonic() - since < IDLE_LIMIT:
                return conn
            # As HTTP clients should: never send on a connection the server has closed,
            # and let go of idle ones before the server's keep-alive timeout (75 s) so a
            # request never races the server's close.
            conn[1].close()
            self.total -= 1
        if self.total < self.cap:
            self.total += 1
            return None
        waiter: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, conn: Conn | None) -> None:
        """Give a connection back (``None``: it was closed, its slot is free)."""
        if self.waiters:
            self.waiters.popleft().set_result(conn)
        elif conn is not None:
            self.idle.append((conn, time.monotonic()))
        else:
            self.total -= 1


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def one_request(pool: Pool, record: Record, due: float, path: str, kind: int) -> None:
    conn = await pool.acquire()
    try:
        if conn is None:
            conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", pool.port), TIMEOUT)
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode())
        status, headers, body = await asyncio.wait_for(read_response(reader), TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        record.add(due, 0, "-", kind, type(exc).__name__)
    except TimeoutError:
        record.add(due, 0, "-", kind, "timeout")
    else:
        record.add(due, status, headers.get("x-cache", "-")[:1], kind, "")
        if status == 200 and body != body_for(path):
            record.corrupt.append(path)
        if headers.get("connection", "").lower() != "close":
            pool.release(conn)
            return
    if conn is not None:
        conn[1].close()
    pool.release(None)


async def dispatch(plan: Plan, pool: Pool, record: Record, closed_loop: int) -> None:
    """Start each request at its due time (open loop), or keep ``closed_loop`` requests
    in flight back to back (``--rate 0``)."""
    tasks: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(closed_loop) if not plan.rate else None
    while (due := plan.next_due()) is not None:
        if gate is not None:
            await gate.acquire()
            due = time.monotonic()
        elif (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        path, kind = plan.pick()
        task = asyncio.ensure_future(one_request(pool, record, due, path, kind))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if gate is not None:
            task.add_done_callback(lambda _: gate.release())
    await asyncio.gather(*tasks)
    for (_, writer), _ in pool.idle:
        writer.close()


def hot_paths() -> list[str]:
    paths = [f"/{r}/hot/{i}" for r in ROUTES for i in range(HOT_KEYS)]
    return paths + [f"/{r}/short/{i}" for r in ROUTES for i in range(SHORT_KEYS)]


async def warm(port: int, passes: int, connections: int) -> None:
    """Ask every hot and short key ``passes`` times over many connections (each worker
    of ``--workers N`` keeps its own memory store), closed-loop; nothing is recorded."""
    queue = hot_paths() * passes
    random.Random(0).shuffle(queue)

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            writer.write(f"GET {queue.pop()} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode())
            _, headers, _ = await read_response(reader)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


async def run(args: argparse.Namespace) -> Record:
    weights = tuple(int(w) for w in args.mix.split(","))
    plan = Plan(args.rate, args.seconds, weights, args.seed, rng=random.Random(args.seed))
    plan.keys, plan.routes = args.keys, tuple(args.routes.split(","))
    record = Record()
    if args.warm_passes:
        await warm(args.port, args.warm_passes, 8)
    plan.started = time.monotonic()
    await dispatch(plan, Pool(args.port, args.max_connections), record, args.connections)
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s; 0: closed-loop")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, default=64, help="closed-loop concurrency")
    parser.add_argument("--max-connections", type=int, default=4000, help="open-loop cap")
    parser.add_argument("--mix", default="65,10,15,10", help="weights of hot,short,cold,pass")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warm-passes", type=int, default=0, help="warm hot keys first")
    parser.add_argument("--keys", type=int, default=HOT_KEYS, help="hot keys per route")
    parser.add_argument("--routes", default=",".join(ROUTES), help="r,m,l: the cached routes")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = uvloop.run(run(args))
    with open(args.out, "w") as out:
        json.dump(record.__dict__, out)


if __name__ == "__main__":
    main()
