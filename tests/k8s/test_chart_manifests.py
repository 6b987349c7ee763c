"""Every rendered object validates against the Kubernetes 1.29 schema in strict mode."""

from __future__ import annotations

import copy
from typing import Final

import jsonschema
import kubernetes_validate
import pytest

from .manifests import MONITORS, validate

EXPECTED_KINDS: Final = {
    "default": ["ConfigMap", "Deployment", "Service"],
    "native-values": ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"],
    "legacy-values": ["ConfigMap", "Deployment", "Service"],
    "existing-configmap-values": ["Deployment", "Service"],
    "redis-values": ["ConfigMap", "Deployment", "Service"],
    "snapshot-values": ["ConfigMap", "Deployment", "Service"],
    "observability-values": [
        "ConfigMap",
        "ConfigMap",
        "CronJob",
        "Deployment",
        "PrometheusRule",
        "Service",
        "Service",
        "ServiceMonitor",
    ],
    "monitors-values": [
        "ConfigMap",
        "Deployment",
        "PodMonitor",
        "Service",
        "Service",
        "ServiceMonitor",
    ],
}


def test_rendered_kinds(rendered) -> None:
    assert sorted(doc["kind"] for doc in rendered.docs) == EXPECTED_KINDS[rendered.case]


def test_every_document_validates_strict(rendered) -> None:
    for doc in rendered.docs:
        validate(doc)


def test_strict_validation_catches_a_typo(rendered) -> None:
    """The check above has teeth: an unknown field in the pod spec fails it."""
    deployment = copy.deepcopy(rendered.one("Deployment"))
    deployment["spec"]["template"]["spec"]["initContainer"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@pytest.mark.parametrize("kind", sorted(MONITORS))
def test_monitor_schema_catches_a_typo(render, kind) -> None:
    monitors = {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}
    monitor = render(monitors).one(kind)
    monitor["spec"]["selectors"] = monitor["spec"].pop("selector")
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
