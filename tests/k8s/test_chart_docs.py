"""docs/kubernetes.md and README's Kubernetes lines keep up with the chart's values for
alerts, dashboard and audit."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from .chart import CHART


@pytest.mark.parametrize("section", ["prometheusRule", "dashboard", "audit"])
def test_every_value_is_documented(section: str) -> None:
    """docs/kubernetes.md names every value of the alerts, dashboard and audit (the keys
    under ``for`` and ``severity`` by their defaults' table cell), and README its keys."""
    repo = CHART.parents[1]
    doc = (repo / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    readme = (repo / "README.md").read_text(encoding="utf-8")
    with helm.Chart.load(CHART) as chart:
        values: dict[str, Any] = chart.merge_values({})[section]
    for key, default in values.items():
        assert f"`{section}.{key}" in doc, f"{section}.{key}"
        assert key in readme, f"{section}.{key}"
        if isinstance(default, dict) and key in ("for", "severity"):
            for alert in default:
                assert f"`{alert}" in doc, f"{section}.{key}.{alert}"
