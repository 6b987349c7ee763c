"""Real peers for the store tests: redis-server, memcached, a 3-node Redis Cluster, a relay.

Servers are started once per session on free ports and flushed before each test;
fault tests get their own function-scoped processes so stopping one hurts nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

import aiomcache
import pytest
from mirakuru import TCPExecutor
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

redis_server = factories.redis_proc(port=None)


def memcached_executor(port: int | None = None, item_size: str = "1m") -> TCPExecutor:
    port = port or free_port()
    command = [MEMCACHED, "-u", "nobody", "-l", "127.0.0.1", "-p", str(port), "-m", "64"]
    command += ["-I", item_size, "-U", "0"]
    return TCPExecutor(command, host="127.0.0.1", port=port, timeout=10)


def own_memcached(*options: str) -> TCPExecutor:
    """A memcached of a test's own on a free port, with ``options`` (``-m 2 -M``...)."""
    port = free_port()
    command = [MEMCACHED, "-u", "nobody", "-l", "127.0.0.1", "-p", str(port), *options]
    return TCPExecutor(command, host="127.0.0.1", port=port, timeout=10)


@contextlib.contextmanager
def running(executor: TCPExecutor) -> Iterator[TCPExecutor]:
    """``executor`` started, and stopped when the block ends."""
    executor.start()
    try:
        yield executor
    finally:
        executor.stop()


def redis_executor(port: int, datadir: Path, *extra: str) -> TCPExecutor:
    datadir.mkdir(parents=True, exist_ok=True)
    command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(datadir), *extra]
    return TCPExecutor(command, host="127.0.0.1", port=port, timeout=15)


# ---------------------------------------------------------------- redis


@pytest.fixture
def redis_url(redis_server: RedisExecutor) -> str:
    """The session Redis, flushed for this test."""
    with Redis(host=redis_server.host, port=redis_server.port) as client:
        client.flushall()
    return f"redis://{redis_server.host}:{redis_server.port}/0"


@pytest.fixture
async def redis_raw(redis_url: str) -> AsyncIterator[AsyncRedis]:
    """A plain client on the session Redis, to look under a store."""
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def redis_unix_url(redis_server: RedisExecutor, redis_url: str) -> str:
    return f"unix://{redis_server.unixsocket}?db=0"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[TCPExecutor]:
    """A Redis this test may stop and restart on the same port."""
    executor = redis_executor(free_port(), tmp_path / "redis")
    executor.start()
    try:
        yield executor
    finally:
        executor.stop()


MakeRedis = Callable[..., TCPExecutor]


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[MakeRedis]:
    """Start a Redis of this test's own with extra arguments (``--maxmemory``, …); each
    is stopped after the test. ``executor.port`` is its port."""
    executors: list[TCPExecutor] = []

    def make(*extra: str) -> TCPExecutor:
        executor = redis_executor(free_port(), tmp_path / f"redis{len(executors)}", *extra)
        executor.start()
        executors.append(executor)
        return executor

    yield make
    for executor in executors:
        executor.stop()


@pytest.fixture(scope="session")
def redis_tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A TLS-only redis-server with a fresh self-signed certificate; a ``rediss://`` URL."""
    root = tmp_path_factory.mktemp("redis-tls")
    cert, key = root / "cert.pem", root / "key.pem"
    request = [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    request += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    request += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        request,
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    executor = redis_executor(0, root / "data", *tls)
    executor = TCPExecutor(executor.command_parts, host="127.0.0.1", port=port, timeout=15)
    executor.start()
    try:
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    finally:
        executor.stop()


def start_cluster_node(used: set[int], root: Path, i: int, node_timeout: str) -> TCPExecutor:
    """Cluster node ``i``, started on a free port and bus port not in ``used`` (both added
    to it), its files in ``root/node{i}``; not yet part of a cluster."""
    port = free_port(exclude=used)
    used.add(port)
    bus = free_port(exclude=used)
    used.add(bus)
    extra = ("--cluster-enabled", "yes", "--cluster-port", str(bus))
    extra += ("--cluster-config-file", f"nodes-{i}.conf", "--cluster-node-timeout", node_timeout)
    executor = redis_executor(port, root / f"node{i}", *extra)
    executor.start()
    return executor


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A real 3-node Redis Cluster (no replicas); yields ``host:port`` of every node."""
    used: set[int] = set()
    executors: list[TCPExecutor] = []
    nodes: list[str] = []
    root = tmp_path_factory.mktemp("cluster")
    try:
        for i in range(3):
            executor = start_cluster_node(used, root, i, "2000")
            executors.append(executor)
            nodes.append(f"127.0.0.1:{executor.port}")
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_cluster_ok(nodes)
        yield nodes
    finally:
        for executor in executors:
            executor.stop()


@dataclass
class ReplicatedCluster:
    """A 3-master Redis Cluster with one replica per master, this test's own."""

    executors: dict[str, TCPExecutor]  # "host:port" -> its process
    replica_of: dict[str, str]  # master "host:port" -> its replica's

    @property
    def nodes(self) -> list[str]:
        return list(self.executors)


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    """3 masters + 3 replicas (``--cluster-replicas 1``) on free ports, for failover tests;
    every process is stopped after the test."""
    used: set[int] = set()
    cluster = ReplicatedCluster({}, {})
    try:
        for i in range(6):
            executor = start_cluster_node(used, tmp_path, i, "1000")
            cluster.executors[f"127.0.0.1:{executor.port}"] = executor
        create = [REDIS_CLI, "--cluster", "create", *cluster.nodes, "--cluster-replicas", "1"]
        subprocess.run(
            [*create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_cluster_ok(cluster.nodes)
        _wait_replicas(cluster)
        yield cluster
    finally:
        for executor in cluster.executors.values():
            executor.stop()


def _wait_replicas(cluster: ReplicatedCluster) -> None:
    """Until every replica's link to its master is up; fills ``replica_of``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cluster.replica_of.clear()
        for node in cluster.nodes:
            host, port = node.split(":")
            with Redis(host=host, port=int(port)) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                master = f"{info['master_host']}:{info['master_port']}"
                cluster.replica_of[master] = node
        if len(cluster.replica_of) == 3:
            return
        time.sleep(0.1)
    raise RuntimeError("the cluster's replicas never all linked to their masters")


def _wait_cluster_ok(nodes: list[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = []
        for node in nodes:
            host, port = node.split(":")
            with Redis(host=host, port=int(port)) as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text)
        if all(states):
            return
        time.sleep(0.1)
    raise RuntimeError("the Redis Cluster never reached cluster_state:ok")


@pytest.fixture
def cluster_nodes(redis_cluster: list[str]) -> list[str]:
    """The session cluster, every master flushed for this test."""
    for node in redis_cluster:
        host, port = node.split(":")
        with Redis(host=host, port=int(port)) as client:
            client.flushall()
    return redis_cluster


# ---------------------------------------------------------------- memcached


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[TCPExecutor]:
    with running(memcached_executor()) as executor:
        yield executor


@pytest.fixture
def memcached_addr(memcached_server: TCPExecutor) -> str:
    """The session memcached, flushed for this test."""
    flush_memcached(memcached_server.port)
    return f"127.0.0.1:{memcached_server.port}"


@pytest.fixture
def full_memcached() -> Iterator[str]:
    """A 2 MiB memcached that refuses writes once full (``-M``) instead of evicting: it
    answers ``SERVER_ERROR out of memory``."""
    with running(own_memcached("-m", "2", "-M")) as executor:
        yield f"127.0.0.1:{executor.port}"


@pytest.fixture
async def memcached_raw(memcached_addr: str) -> AsyncIterator[aiomcache.Client]:
    """A plain client on the session memcached, to look under a store."""
    host, port = memcached_addr.split(":")
    client = aiomcache.Client(host, int(port))
    yield client
    await client.close()


def memcached_keys(port: int) -> set[bytes]:
    """Every key a test-sized memcached holds (``lru_crawler metadump``; keys URL-encoded)."""
    return set(memcached_expiries(port))


def memcached_expiries(port: int) -> dict[bytes, int]:
    """Every key a test-sized memcached holds, with its ``exp=`` from ``lru_crawler
    metadump all``: a unix time, or ``-1`` for a key that never expires."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    expiries: dict[bytes, int] = {}
    for line in data.splitlines():
        if line.startswith(b"key="):
            fields = dict(part.split(b"=", 1) for part in line.split() if b"=" in part)
            expiries[unquote_to_bytes(fields[b"key"])] = int(fields[b"exp"])
    return expiries


def flush_memcached(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"flush_all\r\n")
        assert sock.recv(64) == b"OK\r\n"


@pytest.fixture
def memcached_pair() -> Iterator[list[TCPExecutor]]:
    """Two fresh memcached servers this test may stop."""
    executors = [memcached_executor(), memcached_executor()]
    for executor in executors:
        executor.start()
    try:
        yield executors
    finally:
        for executor in executors:
            executor.stop()


# ---------------------------------------------------------------- slow relay


class Relay:
    """A TCP relay that can hold every reply from the server back for ``delay`` seconds."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.delay = 0.0
        self.port = 0
        self.requests = 0  # client→server reads: "did anything reach the server?"
        self.refuse = False  # drop every new connection at once
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, delayed=False)),
            asyncio.create_task(self._pipe(up_reader, writer, delayed=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if not delayed:
                    self.requests += 1
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def cut(self) -> None:
        """Drop every open connection (the server behind keeps its data)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


MakeRelay = Callable[[str], Awaitable[Relay]]


@pytest.fixture
async def make_relay() -> AsyncIterator[MakeRelay]:
    """Start a relay in front of ``host:port``; all are closed after the test."""
    relays: list[Relay] = []

    async def make(addr: str) -> Relay:
        host, port = addr.rsplit(":", 1)
        relay = Relay(host, int(port))
        await relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.aclose()
