"""Assertions on the rendered pod: sidecar placement, probes, security, policy mount, shutdown."""

from __future__ import annotations

import hashlib
from typing import Any, Final

import helm_python as helm
import pytest

from .chart import CHART

POLICY_DIR: Final = "/etc/sidecache"
RESTRICTED: Final = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def port_number(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    return ports[name]


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} given {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def test_sidecar_position_and_restart_policy(rendered) -> None:
    spec = rendered.pod_spec
    init = [c["name"] for c in spec.get("initContainers", [])]
    regular = [c["name"] for c in spec["containers"]]
    if rendered.merged_values["sidecar"]["native"]:
        assert init == ["sidecache"]
        assert "sidecache" not in regular
        assert spec["initContainers"][0]["restartPolicy"] == "Always"
    else:
        assert "initContainers" not in spec
        assert regular == ["app", "sidecache"]
        assert "restartPolicy" not in rendered.sidecar
    assert "app" in regular


def test_legacy_case_is_legacy_and_default_is_native(render) -> None:
    assert "initContainers" not in render({"sidecar": {"native": False}}).pod_spec
    assert render({}).pod_spec["initContainers"][0]["name"] == "sidecache"


def test_probes_hit_the_admin_port_only(rendered) -> None:
    sidecar = rendered.sidecar
    admin_port = rendered.merged_values["sidecar"]["adminPort"]
    assert port_number(sidecar, "sidecache-admin") == admin_port
    assert flag(sidecar["args"], "--admin-listen") == f"0.0.0.0:{admin_port}"
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        handler = sidecar[probe]
        # Never exec, tcpSocket or the proxy port: nothing that touches origin or stores.
        assert set(handler) - {"httpGet"} <= {
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
            "initialDelaySeconds",
        }
        assert handler["httpGet"]["port"] == "sidecache-admin"
        paths[probe] = handler["httpGet"]["path"]
    assert paths == {
        "startupProbe": "/readyz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }


def test_proxy_port_and_service(rendered) -> None:
    sidecar, service = rendered.sidecar, rendered.all("Service")[0]
    port = rendered.merged_values["sidecar"]["port"]
    assert port_number(sidecar, "sidecache") == port
    assert flag(sidecar["args"], "--listen") == f"0.0.0.0:{port}"
    # The Service sends clients to the cache, never straight to the app; by number, since
    # Services resolve named ports of native sidecars only from Kubernetes 1.32.
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]
    assert service["spec"]["selector"].items() <= rendered.pod["metadata"]["labels"].items()


def test_restricted_security_context(rendered) -> None:
    pod = rendered.pod_spec
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in (rendered.sidecar, rendered.app):
        context = container["securityContext"]
        assert context.items() >= RESTRICTED.items(), container["name"]
        assert isinstance(context["runAsUser"], int)
        assert context["runAsUser"] > 0


def test_writable_tmp_is_an_empty_dir(rendered) -> None:
    volumes = {v["name"]: v for v in rendered.pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in rendered.sidecar["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert not mounts["/tmp"].get("readOnly", False)


def test_policy_configmap_mounted_as_a_directory(rendered) -> None:
    sidecar, values = rendered.sidecar, rendered.merged_values
    assert flag(sidecar["args"], "--policy") == f"{POLICY_DIR}/policy.yaml"
    mounts = [m for m in sidecar["volumeMounts"] if m["mountPath"] == POLICY_DIR]
    assert len(mounts) == 1
    # subPath mounts are never updated by the kubelet: hot reload would go deaf.
    for container in (rendered.sidecar, rendered.app):
        assert all("subPath" not in m for m in container.get("volumeMounts", []))
    assert mounts[0]["readOnly"] is True
    volume = next(v for v in rendered.pod_spec["volumes"] if v["name"] == mounts[0]["name"])
    source = volume["configMap"]
    assert [item["path"] for item in source["items"]] == ["policy.yaml"]
    if values["policy"]["existingConfigMap"]:
        assert rendered.policy_configs() == []
        assert source["name"] == values["policy"]["existingConfigMap"]
        assert source["items"][0]["key"] == values["policy"]["existingConfigMapKey"]
    else:
        configmap = rendered.policy_config
        assert source["name"] == configmap["metadata"]["name"]
        assert configmap["data"] == {source["items"][0]["key"]: values["policy"]["content"]}


def test_checksum_annotation_tracks_the_inline_policy(rendered) -> None:
    annotations = rendered.pod["metadata"].get("annotations", {})
    policy = rendered.merged_values["policy"]
    if policy["existingConfigMap"]:
        assert "checksum/policy" not in annotations
    else:
        digest = hashlib.sha256(policy["content"].encode()).hexdigest()
        assert annotations["checksum/policy"] == digest


def test_checksum_changes_with_the_policy(render) -> None:
    base = render({}).pod["metadata"]["annotations"]["checksum/policy"]
    content = render({}).merged_values["policy"]["content"].replace("ttl: 60s", "ttl: 61s")
    changed = render({"policy": {"content": content}}).pod["metadata"]["annotations"]
    assert changed["checksum/policy"] != base
    off = render({"policy": {"rollOnChange": False}}).pod["metadata"]
    assert "checksum/policy" not in off.get("annotations", {})


def test_resources_requests_memory_limit_no_cpu_limit(rendered) -> None:
    for container in (rendered.sidecar, rendered.app):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert set(resources["limits"]) == {"memory"}, container["name"]


def test_shutdown_budget(rendered) -> None:
    values = rendered.merged_values
    pause, drain = values["preStop"]["sleepSeconds"], values["sidecar"]["drainSeconds"]
    assert rendered.pod_spec["terminationGracePeriodSeconds"] > pause + drain
    app_stop = rendered.app["lifecycle"]["preStop"]
    if values["sidecar"]["native"]:
        # The native sidecar is signalled after the app exits: the app takes the pause.
        assert "lifecycle" not in rendered.sidecar
        assert app_stop == {"sleep": {"seconds": pause}}
    else:
        # Signalled together: sidecache pauses, the app outlives its drain.
        assert rendered.sidecar["lifecycle"]["preStop"] == {
            "exec": {"command": ["sleep", str(pause)]}
        }
        assert app_stop == {"exec": {"command": ["sleep", str(pause + drain)]}}


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        # helm-python-sdk renders for a current Kubernetes: auto picks the sleep action.
        ("auto", {"sleep": {"seconds": 5}}),
        ("sleep", {"sleep": {"seconds": 5}}),
        ("exec", {"exec": {"command": ["sleep", "5"]}}),
    ],
)
def test_prestop_action(render, action: str, expected: dict[str, Any]) -> None:
    values = {"sidecar": {"native": False}, "preStop": {"action": action, "sleepSeconds": 5}}
    assert render(values).sidecar["lifecycle"]["preStop"] == expected


def test_redis_password_from_secret(render) -> None:
    values = {
        "redis": {
            "url": "redis://redis-master:6379/0",
            "existingSecret": "redis-auth",
            "existingSecretPasswordKey": "password",
        }
    }
    env = render(values).sidecar["env"]
    names = [e["name"] for e in env]
    # $(REDIS_PASSWORD) expands only if the variable is defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
    by_name = {e["name"]: e for e in env}
    assert by_name["REDIS_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis-auth", "key": "password"}
    }
    assert by_name["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis-master:6379/0"


def test_redis_url_without_password(render) -> None:
    env = render({"redis": {"url": "redis://cache:6379/1"}}).sidecar["env"]
    assert env == [{"name": "REDIS_URL", "value": "redis://cache:6379/1"}]


def test_no_env_by_default(render) -> None:
    assert "env" not in render({}).sidecar


def test_extras_and_scheduling_pass_through(render) -> None:
    values = {
        "extraArgs": ["--log-level", "debug"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "origin-ca"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
        "sidecar": {"origin": "http://127.0.0.1:3000", "workers": 3},
        "image": {"digest": "sha256:" + "ab" * 32},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "cache", "operator": "Exists", "effect": "NoSchedule"}],
        "metrics": {"prometheusAnnotations": True},
    }
    out = render(values)
    sidecar, spec = out.sidecar, out.pod_spec
    assert sidecar["args"][-2:] == ["--log-level", "debug"]
    assert flag(sidecar["args"], "--origin") == "http://127.0.0.1:3000"
    assert flag(sidecar["args"], "--workers") == "3"
    assert {"name": "TZ", "value": "UTC"} in sidecar["env"]
    assert spec["volumes"][-1]["name"] == "certs"
    assert sidecar["volumeMounts"][-1]["mountPath"] == "/etc/certs"
    assert sidecar["image"] == "sidecache@sha256:" + "ab" * 32
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "cache"
    annotations = out.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_image_tag_is_the_app_version(render) -> None:
    with helm.Chart.load(CHART) as chart:
        app_version = chart.metadata["appVersion"]
    assert render({}).sidecar["image"] == f"sidecache:{app_version}"
    assert render({"image": {"tag": "1.2.3"}}).sidecar["image"] == "sidecache:1.2.3"


def test_monitors_select_the_admin_port(render) -> None:
    out = render({"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}})
    pod_labels = out.pod["metadata"]["labels"]
    pod_monitor = out.one("PodMonitor")["spec"]
    assert pod_monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [e["port"] for e in pod_monitor["podMetricsEndpoints"]] == ["sidecache-admin"]
    assert port_number(out.sidecar, "sidecache-admin") == 9090

    selector = out.one("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    matched = [s for s in out.all("Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert len(matched) == 1, "the ServiceMonitor must select only the metrics Service"
    (metrics_port,) = matched[0]["spec"]["ports"]
    assert metrics_port["targetPort"] == 9090
    assert out.one("ServiceMonitor")["spec"]["endpoints"][0]["port"] == metrics_port["name"]
    assert matched[0]["spec"]["selector"].items() <= pod_labels.items()


def test_monitors_off_by_default(render) -> None:
    kinds = {doc["kind"] for doc in render({}).docs}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PodDisruptionBudget"}


def test_pdb_selects_the_pods(render) -> None:
    out = render(
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": None, "minAvailable": 1}}
    )
    pdb = out.one("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1
    assert "maxUnavailable" not in pdb
    assert pdb["selector"]["matchLabels"].items() <= out.pod["metadata"]["labels"].items()


def test_deployment_disabled_leaves_only_the_configmap(render) -> None:
    out = render({"deployment": {"enabled": False}, "podMonitor": {"enabled": True}})
    assert [doc["kind"] for doc in out.docs] == ["ConfigMap"]
