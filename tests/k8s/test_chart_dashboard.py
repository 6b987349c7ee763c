"""The chart's Grafana dashboard: a ConfigMap Grafana's sidecar picks up, panels for what
the issue lists, and every panel query valid PromQL (promtool checks each one as a
recording rule, with the dashboard's variables filled in)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from .manifests import validate

PROMTOOL: Final = shutil.which("promtool") or str(Path(sys.executable).with_name("promtool"))
# What Grafana puts in for the variables, with "All" picked for the multi-value ones.
VARIABLES: Final = {
    "$__rate_interval": "1m",
    "$namespace": "web",
    "$job": ".*",
    "$route": ".*",
}
PANELS: Final = {
    "Routes": [
        "Requests by result",
        "Hit ratio",
        "Latency p50 / p99",
        "Origin fetches by status",
        "Coalesced requests",
        "Bytes stored",
    ],
    "Backends": ["Memory", "Evictions", "Errors", "Breaker state"],
}


def dashboard_of(config_map: dict[str, Any]) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(config_map["data"]["sidecache.json"])
    return board


def queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, legend, PromQL with the variables filled in) of every query."""
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((panel["title"], target["legendFormat"], expr))
    return found


def promtool_check(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    rules = [{"record": f"sidecache_dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def config_map(render) -> dict[str, Any]:
    rendered = render({"dashboard": {"enabled": True, "labels": {"team": "shop"}}})
    found = [d for d in rendered.all("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert len(found) == 1
    return found[0]


def test_off_by_default(render) -> None:
    names = [d["metadata"]["name"] for d in render({}).all("ConfigMap")]
    assert names == ["shop-sidecache-policy"]


def test_a_config_map_grafana_picks_up(config_map) -> None:
    validate(config_map)
    assert config_map["metadata"]["name"] == "shop-sidecache-dashboard"
    labels = config_map["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert labels["team"] == "shop"
    assert list(config_map["data"]) == ["sidecache.json"]


def test_panels_cover_routes_and_backends(config_map) -> None:
    board = dashboard_of(config_map)
    assert board["uid"] == "sidecache"
    rows: dict[str, list[str]] = {}
    for panel in board["panels"]:
        if panel["type"] == "row":
            rows[panel["title"]] = []
        else:
            list(rows.values())[-1].append(panel["title"])
    assert rows == PANELS
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    variables = [v["name"] for v in board["templating"]["list"]]
    assert variables == ["datasource", "namespace", "job", "route"]


def test_latency_is_p50_and_p99_of_the_request_histogram(config_map) -> None:
    latency = [q for t, _, q in queries(dashboard_of(config_map)) if t == "Latency p50 / p99"]
    assert [q.split(",")[0] for q in latency] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ]
    assert all("sidecache_request_duration_seconds_bucket" in q for q in latency)


def test_every_query_is_valid_promql(config_map, tmp_path: Path) -> None:
    exprs = [q for _, _, q in queries(dashboard_of(config_map))]
    assert not [q for q in exprs if "$" in q], "a variable left unfilled"
    run = promtool_check(tmp_path, exprs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in run.stdout


def test_promtool_catches_a_broken_query(config_map, tmp_path: Path) -> None:
    """The check above has teeth: one unbalanced parenthesis fails it."""
    exprs = [q for _, _, q in queries(dashboard_of(config_map))]
    exprs[3] = exprs[3] + ")"
    assert promtool_check(tmp_path, exprs).returncode != 0


def test_legends_name_only_labels_the_query_keeps(config_map) -> None:
    for title, legend, expr in queries(dashboard_of(config_map)):
        kept = set()
        for group in re.findall(r"by \(([^)]*)\)", expr):
            kept |= {label.strip() for label in group.split(",")}
        assert set(re.findall(r"\{\{(\w+)\}\}", legend)) <= kept - {"le"}, title
