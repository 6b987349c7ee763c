"""Faults under load: each scenario starts a fresh lab, drives a mixed workload at a
fraction of the measured maximum, injects one fault, and reports what clients saw.

    bench/chaos/run                         # every scenario (about 12 minutes)
    bench/chaos/run redis-kill origin-500   # some of them
    bench/chaos/run --list

Timeline of a scenario: warm-up (not measured), then ``--before`` seconds, the fault for
``--during`` seconds, ``--after`` seconds after it is undone. Results: a JSON document
with every figure and a Markdown table (``bench/chaos/results/chaos-<stamp>.*``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaos.lab import ROOT, Lab, Proc, export, free_port, http_get, revision, sidecache, wait_port
from chaos.report import analyse, markdown

POLICY = """\
version: 1
origin: http://127.0.0.1:{origin}
backends:
  local: {{type: memory, max_size: 256MiB}}
  redis: {{type: redis, url: "redis://127.0.0.1:{redis_via}/0"}}
  mc: {{type: memcached, servers: ["127.0.0.1:{mc_via}"], pool_size: 32}}
defaults:
  backend: local
  ttl: {ttl}
  stale_if_error: 10m
routes:
  - {{name: redis, match: {{prefix: /r}}, backend: redis}}
  - {{name: memcached, match: {{prefix: /m}}, backend: mc}}
  - {{name: local, match: {{prefix: /l}}}}
  - {{name: pass, match: {{prefix: /p}}, cache: false}}
"""


@dataclass
class Env:
    lab: Lab
    ports: dict[str, int]
    policy: Path
    procs: dict[str, Proc]

    def control(self, relay: str, delay: float) -> None:
        import socket

        with socket.create_connection(("127.0.0.1", self.ports[relay + "_control"]), 5) as s:
            s.sendall(f"delay {delay}\n".encode())
            s.recv(100)

    def origin(self, **params: float) -> None:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        http_get(f"http://127.0.0.1:{self.ports['origin']}/__control?{query}")

    def restart(self, name: str) -> None:
        old = self.procs[name]
        self.procs[name] = self.lab.spawn(old.name, old.argv)
        wait_port(self.ports[name])

    def write_policy(self, ttl: str = "60s", broken: bool = False) -> None:
        text = "version: 1\norigin: [\n" if broken else POLICY.format(ttl=ttl, **self.ports)
        self.policy.write_text(text)


@dataclass
class Fault:
    what: str
    apply: Callable[[Env], object]
    undo: Callable[[Env], object]
    store: bool = False  # a store fault: zero client errors allowed
    event: bool = False  # a one-off event (a signal): nothing to undo
    relay: str = ""  # the store reached through the delaying relay ("redis" or "mc")


def _kill(name: str) -> Callable[[Env], None]:
    return lambda env: env.procs[name].stop(signal.SIGKILL)


def _sigterm_one_worker(env: Env) -> None:
    workers = env.procs["sidecache"].children()
    if not workers:
        raise RuntimeError("no sidecache worker found")
    import os

    os.kill(workers[0], signal.SIGTERM)


def _reload(ttl: str = "60s", broken: bool = False) -> Callable[[Env], None]:
    def apply(env: Env) -> None:
        env.write_policy(ttl, broken)
        env.procs["sidecache"].send(signal.SIGHUP)

    return apply


def _nothing(env: Env) -> None:
    return None


FAULTS: dict[str, Fault] = {
    "redis-kill": Fault("Redis killed (SIGKILL), restarted empty", _kill("redis"),
                        lambda env: env.restart("redis"), store=True),
    "memcached-kill": Fault("Memcached killed (SIGKILL), restarted empty", _kill("memcached"),
                            lambda env: env.restart("memcached"), store=True),
    "redis-slow-50ms": Fault("Redis replies delayed +50 ms", lambda env: env.control("redis", 0.05),
                             lambda env: env.control("redis", 0), store=True, relay="redis"),
    "redis-slow-2s": Fault("Redis replies delayed +2 s", lambda env: env.control("redis", 2),
                           lambda env: env.control("redis", 0), store=True, relay="redis"),
    "memcached-slow-50ms": Fault("Memcached replies delayed +50 ms",
                                 lambda env: env.control("mc", 0.05),
                                 lambda env: env.control("mc", 0), store=True, relay="mc"),
    "memcached-slow-2s": Fault("Memcached replies delayed +2 s", lambda env: env.control("mc", 2),
                               lambda env: env.control("mc", 0), store=True, relay="mc"),
    "origin-kill": Fault("origin killed (SIGKILL), restarted", _kill("origin"),
                         lambda env: env.restart("origin")),
    "origin-slow-3s": Fault("origin answers +3 s late", lambda env: env.origin(delay=3),
                            lambda env: env.origin(delay=0)),
    "origin-500": Fault("origin answers 500 to everything", lambda env: env.origin(status=500),
                        lambda env: env.origin(status=0)),
    "sighup-valid": Fault("SIGHUP with a valid changed policy", _reload("61s"), _nothing,
                          event=True),
    "sighup-invalid": Fault("SIGHUP with an invalid policy (then the valid one back)",
                            _reload(broken=True), _reload("60s")),
    "sigterm-worker": Fault("SIGTERM to one of two workers (the supervisor restarts it)",
                            _sigterm_one_worker, _nothing, event=True),
}  # fmt: skip


def start_lab(workdir: Path, workers: int, src: Path, relay: str = "") -> Env:
    """Redis, Memcached, the origin and sidecache; ``relay`` names the one store reached
    through a delaying relay (a relay costs CPU, so the others are reached directly)."""
    lab = Lab(workdir)
    names = ["redis", "redis_relay", "redis_control", "mc", "mc_relay", "mc_control"]
    names += ["origin", "proxy", "admin"]
    ports = {name: free_port() for name in names}
    ports["memcached"] = ports["mc"]
    for store in ("redis", "mc"):
        ports[f"{store}_via"] = ports[f"{store}_relay"] if store == relay else ports[store]
    procs = {"redis": lab.redis(ports["redis"]), "memcached": lab.memcached(ports["mc"])}
    for store, target in [(relay, ports[relay])] if relay else []:
        procs[f"{store}_relay"] = lab.python(
            f"relay-{store}", "chaos.relay", "--listen", str(ports[f"{store}_relay"]),
            "--target", f"127.0.0.1:{target}", "--control", str(ports[f"{store}_control"]),
        )  # fmt: skip
    procs["origin"] = lab.python("origin", "chaos.origin", "--port", str(ports["origin"]))
    for name in ("redis", "mc", "origin", *([f"{relay}_relay"] if relay else [])):
        wait_port(ports[name])
    env = Env(lab, ports, workdir / "policy" / "policy.yaml", procs)
    env.policy.parent.mkdir()
    env.write_policy()
    procs["sidecache"] = sidecache(lab, env.policy, ports["proxy"], ports["admin"], workers, src)
    return env


def load(
    env: Env, name: str, seconds: float, rate: float, connections: int, warm_passes: int = 0
) -> Path:
    out = env.lab.workdir / f"load-{name}.json"
    proc = env.lab.python(
        f"load-{name}", "chaos.load", "--port", str(env.ports["proxy"]), "--rate", f"{rate:g}",
        "--seconds", f"{seconds:g}", "--connections", str(connections), "--out", str(out),
        "--seed", str(int(time.time())), "--warm-passes", str(warm_passes),
    )  # fmt: skip
    assert proc.popen is not None
    proc.popen.wait(seconds + 60)
    return out


def settle(env: Env, timeout: float = 15.0) -> None:
    """Wait until every breaker is closed (a closed-loop warm-up can trip one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = http_get(f"http://127.0.0.1:{env.ports['admin']}/metrics")[1].decode()
        states = [line for line in text.splitlines() if line.startswith("sidecache_breaker_state")]
        if states and all(line.endswith(" 0.0") for line in states):
            return
        time.sleep(0.5)


def calibrate(args: argparse.Namespace, workdir: Path) -> float:
    """Requests/s of the mixed workload, closed-loop, on a warm lab."""
    env = start_lab(workdir / "calibrate", args.workers, args.src)
    try:
        load(env, "warm", args.warm, 0, args.connections, warm_passes=6)
        settle(env)
        data = json.loads(load(env, "max", args.calibrate, 0, args.connections).read_text())
        answered = sum(1 for s in data["status"] if s)
        return answered / args.calibrate
    finally:
        env.lab.stop_all()


def run_scenario(name: str, args: argparse.Namespace, rate: float, workdir: Path) -> dict:
    fault = FAULTS[name]
    env = start_lab(workdir / name, args.workers, args.src, fault.relay)
    try:
        load(env, "warm", args.warm, rate, args.connections, warm_passes=6)
        settle(env)
        total = args.before + args.during + args.after
        out = env.lab.workdir / "load-run.json"
        runner = env.lab.python(
            "load-run", "chaos.load", "--port", str(env.ports["proxy"]), "--rate", f"{rate:g}",
            "--seconds", f"{total:g}", "--connections", str(args.connections), "--out", str(out),
        )  # fmt: skip
        began = time.monotonic()
        time.sleep(args.before)
        fault_at = time.monotonic()
        fault.apply(env)
        time.sleep(max(0.0, fault_at + args.during - time.monotonic()))
        undo_at = time.monotonic()
        fault.undo(env)
        undone_at = time.monotonic()
        assert runner.popen is not None
        runner.popen.wait(total + 60)
        data = json.loads(out.read_text())
        result = analyse(data, began, fault_at, undo_at, event=fault.event)
        result.update(name=name, what=fault.what, store=fault.store, rate=rate)
        result["undo_seconds"] = round(undone_at - undo_at, 2)
        result["sidecache_alive"] = env.procs["sidecache"].alive()
        return result
    finally:
        env.lab.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/chaos/run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", help="default: all")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--load", type=float, default=0.5, help="fraction of the measured max")
    parser.add_argument("--rate", type=float, default=0, help="fixed req/s (no calibration)")
    parser.add_argument("--warm", type=float, default=5)
    parser.add_argument("--calibrate", type=float, default=10)
    parser.add_argument("--before", type=float, default=10)
    parser.add_argument("--during", type=float, default=20)
    parser.add_argument("--after", type=float, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "chaos" / "results"))
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument("--rev", default="HEAD", help="git revision to run, or 'worktree'")
    args = parser.parse_args()  # fmt: skip
    # A background job inherits SIGINT ignored, and SIGTERM would skip the ``finally``
    # that stops every process this run started: both become a clean exit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.list:
        for name, fault in FAULTS.items():
            print(f"{name:22} {fault.what}")
        return 0
    names = args.scenarios or list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="sidecache-chaos-"))
    args.src = export(args.rev, workdir / "src")
    args.revision = revision(args.rev)
    try:
        maximum = 0.0
        rate = args.rate
        if not rate:
            maximum = calibrate(args, workdir)
            rate = round(maximum * args.load)
            print(f"max {maximum:.0f} req/s closed-loop; driving {rate} req/s", flush=True)
        results = []
        for name in names:
            print(f"== {name}", flush=True)
            results.append(run_scenario(name, args, rate, workdir))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "timeline"}),
                  flush=True)  # fmt: skip
    finally:
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    args.src = str(args.src)
    summary = {"max_rps": maximum, "rate": rate, "args": vars(args), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"chaos-{stamp}.json").write_text(json.dumps(summary, indent=1))
    (out / f"chaos-{stamp}.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
