"""The CLI as a user runs it: validate, and run as a subprocess against a real origin."""

from __future__ import annotations

import subprocess
import sys
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
