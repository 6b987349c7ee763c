"""The policies the chart ships pass ``sidecache validate`` and fit the pod they run in.

Each policy is validated as the container would see it: the file from the rendered
ConfigMap, and the environment from the rendered container (``$(VAR)`` references expanded
as the kubelet does, Secret values replaced by a placeholder).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from proxy.policy.load import LoadedPolicy, MemoryBackend, load_policy

from .chart import CASES

SIDECACHE: Final = Path(sys.executable).with_name("sidecache")
SECRET_PLACEHOLDER: Final = "s3cr3t"
# What a worker needs besides its memory stores: interpreter, libraries, in-flight bodies.
WORKER_BASELINE: Final = 96 * 1024**2
_QUANTITY: Final = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
_UNITS: Final = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}

INLINE: Final = sorted(
    case for case, values in CASES.items() if not values.get("policy", {}).get("existingConfigMap")
)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = SECRET_PLACEHOLDER
        else:
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                var["value"],
            )
    return env


def sidecache_validate(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIDECACHE), "validate", str(path)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def policy_file(rendered, tmp_path: Path) -> Path:
    if rendered.case not in INLINE:
        pytest.fail(f"{rendered.case} has no inline policy")
    path = tmp_path / "policy.yaml"
    path.write_text(rendered.policy_config["data"]["policy.yaml"], encoding="utf-8")
    return path


def loaded(rendered, policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> LoadedPolicy:
    for name, value in container_env(rendered.sidecar).items():
        monkeypatch.setenv(name, value)
    return load_policy(policy_file)


@pytest.mark.parametrize("rendered", INLINE, indirect=True)
def test_configmap_policy_passes_sidecache_validate(rendered, policy_file: Path) -> None:
    result = sidecache_validate(policy_file, container_env(rendered.sidecar))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{policy_file}: ok")


def test_validate_rejects_a_broken_policy(render, tmp_path: Path) -> None:
    """The check above has teeth: a typo in the chart's policy fails validation."""
    content = render({}).merged_values["policy"]["content"].replace("ttl:", "tll:")
    path = tmp_path / "policy.yaml"
    path.write_text(
        render({"policy": {"content": content}}).one("ConfigMap")["data"]["policy.yaml"]
    )
    result = sidecache_validate(path, {})
    assert result.returncode == 2
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: defaults\.tll: ", result.stderr, re.M)


def test_redis_url_reaches_the_policy(render, tmp_path: Path, monkeypatch) -> None:
    out = render(CASES["redis-values"], "redis-values")
    path = tmp_path / "policy.yaml"
    path.write_text(out.one("ConfigMap")["data"]["policy.yaml"])
    policy = loaded(out, path, monkeypatch).policy
    shared = policy.backends["shared"]
    assert shared.type == "redis"
    assert shared.url == (
        f"redis://:{SECRET_PLACEHOLDER}@redis-master.data.svc.cluster.local:6379/0"
    )


@pytest.mark.parametrize("rendered", INLINE, indirect=True)
def test_memory_stores_fit_the_memory_limit(rendered, policy_file, monkeypatch) -> None:
    policy = loaded(rendered, policy_file, monkeypatch).policy
    stores = sum(b.max_size for b in policy.backends.values() if isinstance(b, MemoryBackend))
    workers = rendered.merged_values["sidecar"]["workers"]
    limit = quantity(rendered.sidecar["resources"]["limits"]["memory"])
    assert workers * (stores + WORKER_BASELINE) <= limit


@pytest.mark.parametrize("rendered", INLINE, indirect=True)
def test_drain_fits_the_grace_period(rendered, policy_file, monkeypatch) -> None:
    policy = loaded(rendered, policy_file, monkeypatch).policy
    values = rendered.merged_values
    assert policy.server.shutdown_timeout <= values["sidecar"]["drainSeconds"]
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]
    assert grace > values["preStop"]["sleepSeconds"] + policy.server.shutdown_timeout


@pytest.mark.parametrize("rendered", INLINE, indirect=True)
def test_origin_is_the_app_port(rendered, policy_file, monkeypatch) -> None:
    origin = rendered.merged_values["sidecar"]["origin"]
    if not origin:
        origin = loaded(rendered, policy_file, monkeypatch).policy.origin
    parts = urlsplit(origin)
    assert parts.hostname == "127.0.0.1"
    assert parts.port == rendered.app["ports"][0]["containerPort"]


def quantity(text: str) -> int:
    found = _QUANTITY.match(text)
    assert found, f"unsupported quantity {text!r}"
    return int(found.group(1)) * _UNITS[found.group(2)]
