"""Configurations and start-up of every server a scenario needs, each on its own port.

nginx, Varnish, Redis and Memcached run from config files written into the run's
temporary directory (never /etc, never a system service); sidecache runs from a
generated policy. Each ``start_*`` returns a :class:`Server` once it accepts requests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.origin_app import BODIES
from harness.procs import Proc, Supervisor, wait_http, wait_tcp

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_DIR = REPO / "bench"
# Debian package per binary; varnish is optional (its rows are skipped if it fails).
PACKAGES = {
    "wrk": "wrk",
    "nginx": "nginx",
    "varnishd": "varnish",
    "redis-server": "redis-server",
    "memcached": "memcached",
}


@dataclass
class Server:
    """A started server: where to send requests and which process tree to measure."""

    key: str
    url: str
    proc: Proc
    # Stores the server calls (Redis, Memcached): their CPU is reported apart.
    stores: list[Proc] = field(default_factory=list)


def ensure_tools(optional: frozenset[str] = frozenset({"varnishd"})) -> set[str]:
    """Install missing binaries from Debian's packages; return the ones still missing."""
    missing = [tool for tool in PACKAGES if shutil.which(tool) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = [PACKAGES[tool] for tool in missing]
        print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(install, env=env, check=False)
    still = {tool for tool in PACKAGES if shutil.which(tool) is None}
    required = still - optional
    if required:
        raise SystemExit(f"missing tools: {', '.join(sorted(required))} (install them as root)")
    return still


# ---------------------------------------------------------------- nginx


_NGINX_HTTP = """
    access_log off;
    sendfile on;
    tcp_nopush off;   # Debian's default (on) stalls 64 KB responses ~40 ms on loopback
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    types {{ application/json json; }}
    default_type application/json;
"""


def _nginx_conf(d: Path, workers: int, server_block: str, http_extra: str = "") -> str:
    return (
        f"worker_processes {workers};\n"
        "daemon off;\n"
        f"pid {d}/nginx.pid;\n"
        f"error_log {d}/error.log warn;\n"
        "worker_rlimit_nofile 65536;\n"
        "events { worker_connections 8192; }\n"
        "http {\n" + _NGINX_HTTP.format(d=d) + http_extra + server_block + "}\n"
    )


def _start_nginx(sup: Supervisor, key: str, port: int, conf: str) -> Proc:
    d = sup.workdir / key
    d.mkdir(exist_ok=True)
    (d / "nginx.conf").write_text(conf)
    proc = sup.start(key, ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", "nginx.conf"])
    wait_tcp(proc, port)
    return proc


def start_nginx_origin(sup: Supervisor, workers: int = 1) -> Server:
    """nginx serving the bodies as static files with ``Cache-Control: max-age=3600``."""
    key, port = "origin-nginx", sup.free_port()
    d = sup.workdir / key
    www = d / "www"
    for sub in (www, www / "pass"):
        sub.mkdir(parents=True, exist_ok=True)
        for name, body in BODIES.items():
            (sub / f"{name}.json").write_bytes(body)
    server = f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /__status {{ stub_status; }}
        location / {{ add_header Cache-Control "max-age=3600"; }}
        # The realistic scenario's distinct URLs: /r/kb1/<i>.json is /kb1.json, etc.
        location ~ ^(/pass)?/r/(?<body>kb1|kb64)/ {{
            add_header Cache-Control "max-age=3600";
            try_files /$body.json =404;
        }}
    }}
"""
    d.mkdir(exist_ok=True)
    proc = _start_nginx(sup, key, port, _nginx_conf(d, workers, server))
    return Server(key, f"http://127.0.0.1:{port}", proc)


def start_aiohttp_origin(sup: Supervisor, delay: float, slow_max_age: int) -> Server:
    key, port = "origin-aiohttp", sup.free_port()
    argv = [str(VENV_PYTHON), "-m", "harness.origin_app", "--port", str(port)]
    argv += ["--delay", str(delay), "--slow-max-age", str(slow_max_age)]
    proc = sup.start(key, argv, cwd=BENCH_DIR)
    wait_tcp(proc, port)
    return Server(key, f"http://127.0.0.1:{port}", proc)


def start_nginx_cache(
    sup: Supervisor,
    key: str,
    origin: Server,
    workers: int,
    location_extra: str = "",
    cache: bool = True,
) -> Server:
    """The reference: nginx ``proxy_cache`` with keep-alive to the origin.

    ``cache=False``: the same proxy without a cache (``proxy_pass`` only), the reference
    of sidecache's pass-through.
    """
    port = sup.free_port()
    d = sup.workdir / key
    # SO_REUSEPORT spreads connections over workers as sidecache's workers do.
    reuse = " reuseport" if workers > 1 else ""
    http_extra = (
        f"    proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:16m max_size=2g"
        " inactive=1h use_temp_path=off;\n"
        if cache
        else ""
    )
    http_extra += (
        f"    upstream origin {{ server {origin.url.removeprefix('http://')}; keepalive 64; }}\n"
    )
    caching = "proxy_cache bench;\n            add_header X-Cache $upstream_cache_status;"
    server = f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096{reuse};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            {caching if cache else ""}
            {location_extra}
        }}
    }}
"""
    d.mkdir(exist_ok=True)
    proc = _start_nginx(sup, key, port, _nginx_conf(d, workers, server, http_extra))
    return Server(key, f"http://127.0.0.1:{port}", proc)


def origin_requests(origin: Server) -> int | None:
    """Requests the origin has served so far (nginx stub_status or the aiohttp counter)."""
    try:
        if origin.key == "origin-nginx":
            with urllib.request.urlopen(origin.url + "/__status", timeout=2) as resp:
                # "server accepts handled requests\n A H R" on the third line.
                lines = resp.read().decode().splitlines()
            return int(lines[2].split()[2])
        with urllib.request.urlopen(origin.url + "/__stats", timeout=2) as resp:
            return int(json.loads(resp.read())["total"])
    except (OSError, ValueError, IndexError, KeyError):
        return None


# ---------------------------------------------------------------- Varnish


def start_varnish(sup: Supervisor, key: str, origin: Server) -> Server:
    port, d = sup.free_port(), sup.workdir / key
    d.mkdir(exist_ok=True)
    host, _, oport = origin.url.removeprefix("http://").partition(":")
    vcl = d / "bench.vcl"
    vcl.write_text(
        "vcl 4.1;\n"
        f'backend default {{ .host = "{host}"; .port = "{oport}"; }}\n'
        "sub vcl_deliver {\n"
        '    if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; }\n'
        '    else { set resp.http.X-Cache = "MISS"; }\n'
        "}\n"
    )
    argv = ["varnishd", "-F", "-a", f"127.0.0.1:{port}", "-f", str(vcl), "-n", str(d / "work")]
    argv += ["-T", "none", "-s", "malloc,256m"]
    proc = sup.start(key, argv)
    wait_tcp(proc, port, timeout=30)
    return Server(key, f"http://127.0.0.1:{port}", proc)


# ---------------------------------------------------------------- stores


def start_redis(sup: Supervisor) -> tuple[Proc, int]:
    port, d = sup.free_port(), sup.workdir / "redis"
    d.mkdir(exist_ok=True)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(d), "--daemonize", "no"]
    proc = sup.start("redis", argv)
    wait_tcp(proc, port)
    return proc, port


def start_memcached(sup: Supervisor) -> tuple[Proc, int]:
    port = sup.free_port()
    argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024", "-c", "4096"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # memcached refuses to run as root without -u
    proc = sup.start("memcached", argv)
    wait_tcp(proc, port)
    return proc, port


# ---------------------------------------------------------------- sidecache


def sidecache_policy(
    origin: Server,
    backend: str,
    redis_port: int | None = None,
    memcached_port: int | None = None,
    routes: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    """A policy whose default route caches in ``backend``; ``/pass/`` is never cached."""
    # 1 GiB: the realistic scenario keeps 10,000 bodies of 64 KB (655 MB) warm.
    backends: dict[str, object] = {"memory": {"type": "memory", "max_size": "1GiB"}}
    if redis_port is not None:
        backends["redis"] = {"type": "redis", "url": f"redis://127.0.0.1:{redis_port}/0"}
        backends["tiered"] = {"type": "tiered", "l1": "memory", "l2": "redis", "l1_ttl": "5s"}
    if memcached_port is not None:
        backends["memcached"] = {"type": "memcached", "servers": [f"127.0.0.1:{memcached_port}"]}
    pass_route = {"name": "pass", "match": {"prefix": "/pass/"}, "cache": False}
    return {
        "version": 1,
        "origin": origin.url,
        "backends": backends,
        # Compression off: the references store and serve the origin's bytes as they are.
        "defaults": {"backend": backend, "ttl": "1h", "compression": {"algorithm": "none"}},
        "routes": [*(routes or []), pass_route],
    }


def checkout(sup: Supervisor, rev: str) -> Path:
    """``proxy/`` as of ``rev``, extracted with ``git archive`` (the repository is not touched).

    The working tree is shared with people editing it: a revision gives a stable subject.
    """
    src = sup.workdir / "src"
    src.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "proxy"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    return src


def start_sidecache(
    sup: Supervisor,
    key: str,
    policy: dict[str, object],
    workers: int,
    stores: list[Proc] | None = None,
    src: Path = REPO,
) -> Server:
    port, admin = sup.free_port(), sup.free_port()
    path = sup.workdir / f"{key}.policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    argv = [str(VENV_PYTHON), "-m", "proxy", "run", "--policy", str(path)]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    # ``python -m proxy`` imports from the working directory first: the tree under test.
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = sup.start(key, argv, cwd=src, env=env)
    wait_http(proc, f"http://127.0.0.1:{admin}/healthz")
    wait_tcp(proc, port)
    return Server(key, f"http://127.0.0.1:{port}", proc, stores or [])
