"""The chart's audit CronJob does its job: its container's command, environment and
mounted policy, taken from the rendered chart, run ``sidecache audit`` against a real
Redis; a clean store passes (exit 0), a key without a TTL fails the Job (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.k8s.chart import CHART, render_chart
from tests.ops.conftest import RedisServer

MOUNT = "/etc/sidecache"
POLICY = """\
version: 1
origin: http://127.0.0.1:8000
backends:
  shared: {type: redis, url: "${REDIS_URL}"}
defaults: {backend: shared, ttl: 60s}
routes:
  - name: products
    match: {prefix: /api/products}
"""


def run_job(redis: RedisServer, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the CronJob's container as the kubelet would: the policy ConfigMap's keys as
    files under the mount path (here a temporary directory), its env, its args."""
    values = {
        "audit": {"enabled": True, "extraArgs": list(extra)},
        "redis": {"url": redis.url},
        "policy": {"content": POLICY},
    }
    docs = render_chart(CHART, values)
    cron_job = next(d for d in docs if d["kind"] == "CronJob")
    config_map = next(d for d in docs if d["metadata"]["name"].endswith("-policy"))
    pod = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    mounted = tmp_path / "etc-sidecache"
    mounted.mkdir()
    for item in next(v for v in pod["volumes"] if v["name"] == "sidecache-policy")["configMap"][
        "items"
    ]:
        (mounted / item["path"]).write_text(config_map["data"][item["key"]])
    args = [a.replace(MOUNT, str(mounted)) for a in container["args"]]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
    # the image's ENTRYPOINT is `sidecache`, which is `python -m proxy`
    command = [sys.executable, "-m", "proxy", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_a_clean_store_passes(redis_server: RedisServer, tmp_path: Path) -> None:
    with redis_server.client() as client:
        client.set("sc:products:GET:/api/products/1", b"x", ex=60)
    done = run_job(redis_server, tmp_path, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert orjson.loads(done.stdout)["findings"] == []


def test_a_key_without_ttl_fails_the_job(redis_server: RedisServer, tmp_path: Path) -> None:
    with redis_server.client() as client:
        client.set("sc:products:handmade", b"x")  # no TTL
    done = run_job(redis_server, tmp_path, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    found = [(f["finding"], f["route"]) for f in orjson.loads(done.stdout)["findings"]]
    assert ("no-ttl", "products") in found
