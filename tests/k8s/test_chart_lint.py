"""``helm lint --strict`` on every values case, and what the chart refuses to render."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from .chart import CASES, CHART, NAMESPACE, RELEASE

WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kube_version", ["v1.29.0", "v1.33.0"])
def test_lint_strict(case: str, kube_version: str) -> None:
    report = helm.lint(
        CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []
    assert report["total_charts_linted"] == 1


def test_chart_metadata() -> None:
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
        assert chart.schema is not None
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "sidecache"
    # Native sidecars are on by default from 1.29; below that the chart cannot install.
    assert meta["kubeVersion"] == ">=1.29.0-0"


def test_ci_cases_cover_the_issue() -> None:
    assert {"native-values", "legacy-values", "existing-configmap-values"} <= set(CASES)
    assert {"redis-values", "monitors-values", "observability-values"} <= set(CASES)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"bogus": True}, "'bogus' not allowed"),
        ({"sidecar": {"workers": 0}}, "/sidecar/workers"),
        ({"sidecar": {"nativ": False}}, "'nativ' not allowed"),
        ({"startupProbe": {"exec": {"command": ["true"]}}}, "'exec' not allowed"),
        ({"preStop": {"action": "wait"}}, "/preStop/action"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"podAnnotations": {"a": 1}}, "/podAnnotations/a"),
    ],
)
def test_schema_rejects(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"terminationGracePeriodSeconds": 25}, "must exceed preStop.sleepSeconds"),
        (
            {"sidecar": {"drainSeconds": 40}, "preStop": {"sleepSeconds": 5}},
            r"terminationGracePeriodSeconds \(45\) must exceed .* \(45\)",
        ),
        ({"policy": {"content": ""}}, "set policy.content or policy.existingConfigMap"),
        (
            {"redis": {"url": "redis://:pw@redis:6379/0", "existingSecret": "redis"}},
            "redis.url must carry no userinfo",
        ),
        ({"sidecar": {"adminPort": 8080}}, "must differ"),
        (
            {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}},
            "exactly one of minAvailable and maxUnavailable",
        ),
    ],
)
def test_render_refuses(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
