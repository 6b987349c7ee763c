"""The Helm chart rendered offline (helm-python-sdk) into plain objects, for assertions.

Each case is the chart's default values or one of ``helm/sidecache/ci/*.yaml``, the
same files ``helm lint`` and chart-testing use. No cluster, no network, no helm binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import helm_python as helm
import yaml

REPO: Final = Path(__file__).resolve().parents[2]
CHART: Final = REPO / "helm" / "sidecache"
RELEASE: Final = "shop"
NAMESPACE: Final = "web"


def _ci_cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted((CHART / "ci").glob("*.yaml")):
        cases[path.stem] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return cases


CASES: Final = _ci_cases()


def render_chart(chart_dir: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt and empty templates dropped)."""
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


@dataclass(frozen=True)
class Rendered:
    """One rendering of the chart, with lookups for the objects tests look at."""

    case: str
    values: dict[str, Any]
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"{self.case}: {len(found)} {kind} objects"
        return found[0]

    def policy_configs(self) -> list[dict[str, Any]]:
        """The policy ConfigMaps (the dashboard's ConfigMap is not one)."""
        return [d for d in self.all("ConfigMap") if "policy.yaml" in d.get("data", {})]

    @property
    def policy_config(self) -> dict[str, Any]:
        found = self.policy_configs()
        assert len(found) == 1, f"{self.case}: {len(found)} policy ConfigMaps"
        return found[0]

    @property
    def merged_values(self) -> dict[str, Any]:
        with helm.Chart.load(CHART) as chart:
            return chart.merge_values(self.values)

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]
        return spec

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.pod["spec"]
        return spec

    @property
    def sidecar(self) -> dict[str, Any]:
        return container(self.pod_spec, "sidecache")

    @property
    def app(self) -> dict[str, Any]:
        return container(self.pod_spec, "app")


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The container named ``name``, whether an init container or a regular one."""
    every = pod_spec.get("initContainers", []) + pod_spec["containers"]
    found = [c for c in every if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]
