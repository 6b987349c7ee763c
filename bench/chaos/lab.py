"""The processes of one chaos run: start, find, signal and stop exactly what we started.

Every process runs in its own session (its process group is its PID), so stopping it
signals exactly that group: never a name, never anything this run did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    src: Path = ROOT  # the tree ``proxy`` is imported from
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}:{self.src}"}
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.src, env=env,
                start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, signum: int) -> None:
        """Signal the process itself (a supervisor forwards to its workers)."""
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)
        try:
            assert self.popen is not None
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Lab:
    """Everything one run started, stopped together at the end."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str], src: Path = ROOT) -> Proc:
        proc = Proc(name, argv, self.workdir / f"{name}.log", src).start()
        self.procs.append(proc)
        return proc

    def python(self, name: str, module: str, *args: str) -> Proc:
        return self.spawn(name, [PYTHON, "-m", module, *args])

    def redis(self, port: int) -> Proc:
        data = self.workdir / f"redis-{port}"
        data.mkdir(exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(data), "--maxmemory", "512mb"]
        argv += ["--maxmemory-policy", "allkeys-lru"]
        return self.spawn(f"redis-{port}", argv)

    def memcached(self, port: int) -> Proc:
        argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-m", "512", "-c", "4096"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        return self.spawn(f"memcached-{port}", argv)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` (``worktree``: the working tree as it is), to run sidecache
    from: other people's uncommitted edits must not be what a run measures."""
    if rev == "worktree":
        return ROOT
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "proxy"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def revision(rev: str) -> str:
    if rev == "worktree":
        return "working tree"
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def sidecache(lab: Lab, policy: Path, port: int, admin: int, workers: int, src: Path) -> Proc:
    argv = [PYTHON, "-m", "proxy", "run", "--policy", str(policy)]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    argv += ["--workers", str(workers)]
    proc = lab.spawn("sidecache", argv, src)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"sidecache exited: {proc.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if http_get(f"http://127.0.0.1:{admin}/healthz", 0.5)[0] == 200:
                return proc
        time.sleep(0.1)
    raise RuntimeError("sidecache did not become healthy")
