"""Every rendered object validates against the Kubernetes 1.29 schema in strict mode.

kubernetes-validate knows only built-in kinds; the prometheus-operator monitors are
checked against the strict subset of their CRD schema below (the fields the chart emits).
"""

from __future__ import annotations

import copy
from typing import Any, Final

import jsonschema
import kubernetes_validate
import pytest

KUBERNETES: Final = "1.29.0"

_LABELS: Final = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR: Final = {
    "type": "object",
    "properties": {"matchLabels": _LABELS},
    "required": ["matchLabels"],
    "additionalProperties": False,
}
_DURATION: Final = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
    "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_ENDPOINT: Final = {
    "type": "object",
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
    },
    "required": ["port", "path"],
    "additionalProperties": False,
}


def _monitor(kind: str, endpoints: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63}, "labels": _LABELS},
                "required": ["name"],
                "additionalProperties": False,
            },
            "spec": {
                "type": "object",
                "properties": {
                    "selector": _SELECTOR,
                    endpoints: {"type": "array", "items": _ENDPOINT, "minItems": 1},
                },
                "required": ["selector", endpoints],
                "additionalProperties": False,
            },
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
    }


MONITORS: Final = {
    "PodMonitor": _monitor("PodMonitor", "podMetricsEndpoints"),
    "ServiceMonitor": _monitor("ServiceMonitor", "endpoints"),
}


def validate(doc: dict[str, Any]) -> None:
    """Validate one object strictly; raise on any unknown or invalid field."""
    if doc["kind"] in MONITORS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        jsonschema.validate(doc, MONITORS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


EXPECTED_KINDS: Final = {
    "default": ["ConfigMap", "Deployment", "Service"],
    "native-values": ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"],
    "legacy-values": ["ConfigMap", "Deployment", "Service"],
    "existing-configmap-values": ["Deployment", "Service"],
    "redis-values": ["ConfigMap", "Deployment", "Service"],
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
