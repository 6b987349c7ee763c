"""Strict validation of rendered objects: Kubernetes 1.29 schemas and the monitor CRDs.

kubernetes-validate knows only built-in kinds; the prometheus-operator monitors are
checked against the strict subset of their CRD schema below (the fields the chart emits).
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


def validate(doc: dict[str, Any]) -> None:
    """Validate one object strictly; raise on any unknown or invalid field."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        # Only the CRD kinds may be unknown to it; they have a schema of their own here.
        if doc["kind"] not in MONITORS:
            raise
        jsonschema.validate(doc, MONITORS[doc["kind"]])
