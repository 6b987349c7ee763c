"""Worker processes: run one worker in this process, or fork N that share the ports.

``supervise`` forks the workers (SO_REUSEPORT), forwards SIGTERM/SIGINT/SIGHUP to them,
restarts one that dies unless a stop was asked, and answers the exit code. It parses no
arguments and prints no policy errors: that is ``cli.py``'s.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Final, NoReturn

from proxy.obs.prometheus_adapter import MULTIPROC_ENV, enable_multiprocess, forget_process
from proxy.ops.fanout import WorkerBus
from proxy.ops.invalidation import new_replica_id
from proxy.ops.reload import Loader
from proxy.policy.load import LoadedPolicy
from proxy.server.worker import bind, serve

FULL_GC_EVERY: Final = 100  # generation-1 passes per full pass (CPython's default: 10)
RESTART_DELAY: Final = 0.2  # seconds before a dead worker's replacement starts
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def run_worker(
    loaded: LoadedPolicy,
    proxy_sock: socket.socket,
    admin_sock: socket.socket,
    loader: Loader,
    bus: WorkerBus | None = None,
    replica: str | None = None,
) -> None:
    """Serve in this process until SIGTERM/SIGINT (``server.serve`` on uvloop)."""
    import uvloop

    settle_gc()
    uvloop.run(serve(loaded, proxy_sock, admin_sock, loader=loader, bus=bus, replica=replica))


def settle_gc() -> None:
    """Keep the cyclic collector's full passes out of the request path's tail latency.

    A full (generation 2) collection walks every tracked object: with the ~60,000 that
    the imports leave (modules, functions, classes, the policy) it paused a worker for
    15-45 ms every ~60,000 requests under load, and those pauses were the p99 of the
    realistic benchmark. What exists when the worker starts lives as long as it does:
    it is frozen (``gc.freeze``: never walked again), and a full pass waits for 100
    younger passes instead of 10 (cycles are still collected; reference counting frees
    everything else at once, as before).
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_EVERY)


class Supervisor:
    """Forks workers that share the ports (SO_REUSEPORT); forwards signals; reaps them.

    Before forking: metrics go multiprocess (one mmap file set per worker, summed by any
    worker's /metrics), and each worker gets its end of the purge bus, so a purge that
    reaches one worker empties every worker's memory stores.
    """

    def __init__(
        self,
        workers: int,
        loaded: LoadedPolicy,
        addresses: tuple[tuple[str, int], tuple[str, int]],
        sockets: tuple[socket.socket, socket.socket],
        loader: Loader,
    ) -> None:
        self.loaded = loaded
        self.loader = loader
        self.addresses = addresses
        self.workers = workers
        self.run_dir = tempfile.mkdtemp(prefix="sidecache-")
        enable_multiprocess(os.environ.get(MULTIPROC_ENV) or os.path.join(self.run_dir, "metrics"))
        self.buses = WorkerBus.create(self.run_dir, workers)
        self.replica = new_replica_id()
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self._prebound = [sockets]  # bound before forking: the first worker's

    def run(self) -> int:
        """Until every worker has exited after a stop: 0, or 1 if one failed to stop."""
        for index in range(self.workers):
            self.spawn(index)
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self.forward)
        code = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self.children:
                continue
            index = self.children.pop(pid)
            forget_process(pid)
            if not self.stopping:
                print(f"worker {pid} exited ({status}); restarting", file=sys.stderr, flush=True)
                time.sleep(RESTART_DELAY)
                self.spawn(index)
            elif os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                code = 1
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return code

    def spawn(self, index: int) -> None:
        if self._prebound:
            own_proxy, own_admin = self._prebound.pop()
        else:
            listen, admin = self.addresses
            own_proxy, own_admin = bind(listen, reuse_port=True), bind(admin, reuse_port=True)
        pid = os.fork()
        if pid == 0:
            self._worker(index, own_proxy, own_admin)
        self.children[pid] = index
        # Only the worker may hold its listeners: a copy left open here would keep
        # accepting connections nobody serves while that worker drains on SIGTERM.
        own_proxy.close()
        own_admin.close()

    def _worker(self, index: int, proxy_sock: socket.socket, admin_sock: socket.socket) -> NoReturn:
        """The forked child: serve, then leave without running the parent's exit code."""
        try:
            bus = self.buses[index]
            run_worker(self.loaded, proxy_sock, admin_sock, self.loader, bus, self.replica)
        finally:
            os._exit(0)

    def forward(self, signum: int, _frame: object) -> None:
        self.stopping = self.stopping or signum in STOP_SIGNALS
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
