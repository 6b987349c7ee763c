"""The CLI as a user runs it: validate, and run as a subprocess against a real origin."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, Origin, SpawnProxy, policy_text

BROKEN = """version: 1
origin: http://127.0.0.1:8000
defaults:
  backend: local
  ttl: 5 minutes
routes:
  - name: products
    match: {pth: "/api/products/{id}"}
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )


def test_validate_accepts_the_example():
    result = _cli("validate", "policies/example.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "products" in result.stdout


def test_validate_names_file_line_and_misspelt_key(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = _cli("validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{path}:5:") and "defaults.ttl" in line for line in lines)
    assert any(f"{path}:8:" in line and "'pth'" in line for line in lines)
    assert any("did you mean 'path'" in line for line in lines)


def test_run_refuses_a_broken_policy_before_binding(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = _cli("run", "--policy", str(path), "--listen", "127.0.0.1:1")
    assert result.returncode == 2
    assert f"{path}:5:" in result.stderr
    assert "pth" in result.stderr


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


async def test_cli_proxy_serves_a_hit(origin: Origin, spawn_proxy: SpawnProxy):
    import asyncio

    policy = policy_text(origin.url, "defaults: {ttl: 60s}\n")
    proxy = spawn_proxy(policy)
    first = await asyncio.to_thread(_get, proxy.url + "/api/x?b=2&a=1")
    second = await asyncio.to_thread(_get, proxy.url + "/api/x?a=1&b=2")
    assert first[1]["X-Cache"] == "MISS"
    assert second[1]["X-Cache"] == "HIT"
    assert first[2] == second[2]
    assert origin.hits["/api/x"] == 1
    ready = await asyncio.to_thread(_get, proxy.admin_url + "/readyz")
    assert ready[0] == 200
    assert proxy.stop() == 0


async def test_cli_workers_share_the_port(origin: Origin, spawn_proxy: SpawnProxy):
    import asyncio

    policy = policy_text(origin.url, "defaults: {ttl: 60s}\n")
    proxy = spawn_proxy(policy, "--workers", "2")
    statuses = [(await asyncio.to_thread(_get, f"{proxy.url}/w/{i}"))[0] for i in range(20)]
    assert statuses == [200] * 20
    assert proxy.stop() == 0


def _workers(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def test_a_worker_that_dies_is_replaced(origin: Origin, spawn_proxy: SpawnProxy):
    import asyncio

    proxy = spawn_proxy(policy_text(origin.url, "defaults: {ttl: 60s}\n"), "--workers", "2")
    first = _workers(proxy.process.pid)
    assert len(first) == 2
    victim = min(first)
    os.kill(victim, signal.SIGKILL)  # an OOM kill, say
    deadline = time.monotonic() + 20
    while (now := _workers(proxy.process.pid)) - first == set() or len(now) != 2:
        assert time.monotonic() < deadline, f"workers {now}, {victim} killed"
        await asyncio.sleep(0.1)
    assert victim not in now
    statuses = [(await asyncio.to_thread(_get, f"{proxy.url}/w/{i}"))[0] for i in range(20)]
    assert statuses == [200] * 20
    assert proxy.stop() == 0
    assert proxy.process.stdout is not None
    said = proxy.process.stdout.read().decode()
    assert f"worker {victim} exited" in said
    assert "restarting" in said


SHADOWED = """version: 1
origin: http://127.0.0.1:8000
routes:
  - name: api
    match: {prefix: /api}
  - name: products
    match: {path: "/api/products/{id}"}
"""


def test_validate_warns_of_a_shadowed_route_and_exits_0(tmp_path: Path):
    path = tmp_path / "shadowed.yaml"
    path.write_text(SHADOWED)
    result = _cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"{path}:7:5: warning: routes[1].match: routes[1] (products) is never matched: "
        "routes[0] (api) comes first and its prefix /api encloses /api/products/{id}"
    ]
    assert "ok" in result.stdout


def test_validate_reports_every_error_in_one_pass(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(
        "version: 1\n"
        "origin: http://127.0.0.1:8000\n"
        "backends: [local]\n"
        "defaults:\n"
        "  backend: nosuch\n"
        "  ttl: soon\n"
    )
    result = _cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}:3:11: backends: expected a mapping of backend names to settings, got a list",
        f"{path}:6:8: defaults.ttl: invalid duration 'soon': use 250ms, 30s, 5m, 1h, 1d or seconds",
        "2 error(s); the policy was not loaded",
    ]


def test_validate_names_the_line_of_an_indentation_slip(tmp_path: Path):
    path = tmp_path / "slip.yaml"
    path.write_text(
        "version: 1\n"
        "origin: http://127.0.0.1:8000\n"
        "defaults:\n"
        " coalesce:\n"
        "    enabled: true\n"
        "  ttl: 5s\n"
    )
    result = _cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"{path}:4:2: (yaml): did not find expected key: check the indentation of 'coalesce' "
        "(the parser stopped on line 6)"
    )


def _taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_run_names_the_listener_and_address_it_cannot_bind():
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        result = _cli("run", "--policy", "policies/example.yaml", "--listen", f"127.0.0.1:{port}")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"cannot listen on proxy port 127.0.0.1:{port}: address already in use"
        )
        result = _cli(
            "run", "--policy", "policies/example.yaml", "--listen", "127.0.0.1:0",
            "--admin-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"cannot listen on admin port 127.0.0.1:{port}: address already in use"
        )
    result = _cli("run", "--policy", "policies/example.yaml", "--listen", "localhost")
    assert result.stderr.strip() == "cannot listen on proxy port localhost: expected HOST:PORT"
    result = _cli("run", "--policy", "policies/example.yaml", "--listen", "127.0.0.1:99999")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "cannot listen on proxy port 127.0.0.1:99999: the port must be 0-65535",
    )


async def test_run_prints_the_warnings_at_start_up(origin: Origin, spawn_proxy: SpawnProxy):
    proxy = spawn_proxy(SHADOWED.replace("http://127.0.0.1:8000", origin.url))
    assert proxy.stop() == 0
    assert proxy.process.stdout is not None
    output = proxy.process.stdout.read().decode()
    assert ": warning: routes[1].match: routes[1] (products) is never matched" in output


def test_validate_prints_warnings_among_the_errors(tmp_path: Path):
    path = tmp_path / "both.yaml"
    path.write_text(SHADOWED + "    ttl: soon\n")
    result = _cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}:7:5: warning: routes[1].match: routes[1] (products) is never matched: "
        "routes[0] (api) comes first and its prefix /api encloses /api/products/{id}",
        f"{path}:8:10: routes[1].ttl: invalid duration 'soon': use 250ms, 30s, 5m, 1h, 1d or "
        "seconds",
        "1 error(s); the policy was not loaded",
    ]
