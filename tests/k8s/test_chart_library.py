"""The example in docs/kubernetes.md, built as a parent chart, renders a valid sidecar pod.

The parent chart is assembled from the documentation's code blocks whose first line names
a file (``# templates/deployment.yaml``), so the documented lines are the tested ones.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Final

import helm_python as helm
import pytest
import yaml

from .chart import CHART, REPO, container, render_chart
from .manifests import validate

DOC: Final = REPO / "docs" / "kubernetes.md"
_BLOCK: Final = re.compile(r"^```yaml\n# (\S+)\n(.*?)^```$", re.M | re.S)


def doc_files() -> dict[str, str]:
    files = {name: body for name, body in _BLOCK.findall(DOC.read_text(encoding="utf-8"))}
    assert {"Chart.yaml", "values.yaml", "templates/deployment.yaml"} <= set(files)
    return files


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parent") / "shop"
    for name, body in doc_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body, encoding="utf-8")
    # What `helm dependency build` does for a file:// dependency.
    shutil.copytree(CHART, root / "charts" / "sidecache")
    return root


@pytest.fixture(scope="module")
def docs(parent: Path) -> list[dict[str, Any]]:
    return render_chart(parent)


def test_parent_chart_lints_strict(parent: Path) -> None:
    report = helm.lint(parent, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_parent_renders_only_its_workload_and_the_policy(docs: list[dict[str, Any]]) -> None:
    names = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert names == [
        ("ConfigMap", "shop-sidecache-policy"),
        ("Deployment", "shop-shop"),
        ("Service", "shop-shop"),
    ]
    for doc in docs:
        validate(doc)


def test_included_sidecar(docs: list[dict[str, Any]]) -> None:
    by_kind = {d["kind"]: d for d in docs}
    pod = by_kind["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["sidecache"]
    sidecar = container(spec, "sidecache")
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.example.com/sidecache:0.1.0"
    # The policy volume names the ConfigMap the dependency rendered.
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["sidecache-policy"]["configMap"]["name"] == "shop-sidecache-policy"
    policy = yaml.safe_load(by_kind["ConfigMap"]["data"]["policy.yaml"])
    assert policy["backends"]["local"]["max_size"] == "128MiB"
    assert "checksum/policy" in pod["metadata"]["annotations"]
    # The Service reaches the app through the cache.
    assert by_kind["Service"]["spec"]["ports"][0]["targetPort"] == 8080
    assert {"name": "sidecache", "containerPort": 8080, "protocol": "TCP"} in sidecar["ports"]


def test_parent_can_switch_to_a_legacy_sidecar(parent: Path, tmp_path: Path) -> None:
    legacy = tmp_path / "shop"
    shutil.copytree(parent, legacy)
    deployment = legacy / "templates" / "deployment.yaml"
    text = deployment.read_text(encoding="utf-8")
    # As docs/kubernetes.md says: include the container under `containers` instead.
    text = text.replace("      initContainers:\n", "      containers:\n", 1)
    text = text.replace("      containers:\n        - name: shop", "        - name: shop", 1)
    deployment.write_text(text, encoding="utf-8")
    docs = render_chart(legacy, {"sidecache": {"sidecar": {"native": False}}})
    spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["sidecache", "shop"]
    assert "preStop" in container(spec, "sidecache")["lifecycle"]
    for doc in docs:
        validate(doc)
