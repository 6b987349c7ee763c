"""Strict validation of rendered objects: Kubernetes 1.29 schemas and the operator CRDs.

kubernetes-validate knows only built-in kinds; the prometheus-operator monitors and the
PrometheusRule are checked against the strict subset of their CRD schemas below (the
fields the chart emits). What a rule's PromQL means is promtool's job (test_chart_alerts).
"""

from __future__ import annotations

from typing import Any, Final

import jsonschema
import kubernetes_validate

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


_METADATA: Final = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 63}, "labels": _LABELS},
    "required": ["name"],
    "additionalProperties": False,
}
_ALERT: Final = {
    "type": "object",
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    "required": ["alert", "expr"],
    "additionalProperties": False,
}
PROMETHEUS_RULE: Final = {
    "type": "object",
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {"type": "array", "items": _ALERT, "minItems": 1},
                        },
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["groups"],
            "additionalProperties": False,
        },
    },
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
}
CRDS: Final = {**MONITORS, "PrometheusRule": PROMETHEUS_RULE}


def validate(doc: dict[str, Any]) -> None:
    """Validate one object strictly; raise on any unknown or invalid field."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        # Only the CRD kinds may be unknown to it; they have a schema of their own here.
        if doc["kind"] not in CRDS:
            raise
        jsonschema.validate(doc, CRDS[doc["kind"]])
