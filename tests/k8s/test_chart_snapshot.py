"""snapshot.enabled: an emptyDir at the snapshot directory, and a policy that writes there."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from proxy.policy.load import parse_policy

from .chart import CASES, CHART, NAMESPACE, RELEASE


def _mount(rendered: Any, path: str) -> dict[str, Any] | None:
    mounts = [m for m in rendered.sidecar["volumeMounts"] if m["mountPath"] == path]
    return mounts[0] if mounts else None


def test_off_by_default(rendered) -> None:
    values = rendered.merged_values
    if values["snapshot"]["enabled"]:
        return
    names = {v["name"] for v in rendered.pod_spec["volumes"]}
    assert "sidecache-snapshot" not in names
    assert _mount(rendered, values["snapshot"]["mountPath"]) is None


def test_enabled_mounts_an_empty_dir_the_policy_writes_into(render) -> None:
    rendered = render(CASES["snapshot-values"], "snapshot-values")
    values = rendered.merged_values
    mount = _mount(rendered, "/var/cache/sidecache")
    assert mount is not None
    assert not mount.get("readOnly", False)  # the root filesystem is read-only
    volume = next(v for v in rendered.pod_spec["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"sizeLimit": "600Mi"}
    loaded = parse_policy(rendered.policy_config["data"]["policy.yaml"])
    snapshot = loaded.policy.server.snapshot
    assert snapshot is not None
    assert snapshot.path.startswith(values["snapshot"]["mountPath"] + "/")
    assert snapshot.interval == 300


def test_a_policy_without_the_path_is_refused(render) -> None:
    values = {**CASES["snapshot-values"], "policy": {"content": "version: 1\norigin: http://a\n"}}
    with pytest.raises(helm.HelmError, match=r"server\.snapshot\.path must be a file in"):
        render(values)


def test_a_path_outside_the_mount_is_refused(render) -> None:
    content = CASES["snapshot-values"]["policy"]["content"].replace(
        "/var/cache/sidecache/snapshot", "/data/snapshot"
    )
    values = {**CASES["snapshot-values"], "policy": {"content": content}}
    with pytest.raises(helm.HelmError, match=r'\(it is "/data/snapshot"\)'):
        render(values)


def test_an_existing_config_map_is_the_operators_to_check(render) -> None:
    values = {
        "snapshot": {"enabled": True},
        "policy": {"existingConfigMap": "mine", "content": ""},
    }
    assert _mount(render(values), "/var/cache/sidecache") is not None


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"snapshot": {"mountPath": "relative"}}, "/snapshot/mountPath"),
        ({"snapshot": {"mountPath": "/var/cache/"}}, "/snapshot/mountPath"),
        ({"snapshot": {"sizeLimit": "lots"}}, "/snapshot/sizeLimit"),
        ({"snapshot": {"enable": True}}, "'enable' not allowed"),
    ],
)
def test_schema_rejects(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
