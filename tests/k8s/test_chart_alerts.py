"""The chart's PrometheusRule, run by promtool: ``check rules`` on its spec, and ``test
rules`` with input series under which each alert fires and series under which it does not.

The spec of a rendered PrometheusRule is the content of a Prometheus rules file, so the
test writes it out as one and hands it to Debian's promtool (``scripts/test-deps``
installs the ``prometheus`` package). Each case below is one alert: the series that make
it fire (with the labels and annotations the alert then carries), series around them that
must not fire it, and a time before its ``for:`` has elapsed, when nothing fires yet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import helm_python as helm
import jsonschema
import pytest
import yaml

from .chart import CHART, NAMESPACE, RELEASE
from .manifests import validate

PROMTOOL: Final = shutil.which("promtool") or str(Path(sys.executable).with_name("promtool"))
TARGET: Final = {"namespace": "web", "job": "shop-metrics"}
ALERTS: Final = [
    "SidecacheLowHitRatio",
    "SidecacheStoreErrors",
    "SidecacheBreakerOpen",
    "SidecacheBackendMemoryHigh",
    "SidecacheEvictions",
    "SidecacheOriginErrors",
    "SidecacheStaleOnOriginError",
]


def series(name: str, values: str, pod: str = "shop-1", **labels: str) -> dict[str, str]:
    """One input series of the scrape target ``TARGET`` (a pod of job shop-metrics)."""
    every = {**TARGET, "pod": pod, **labels}
    text = ",".join(f'{k}="{v}"' for k, v in every.items())
    return {"series": f"{name}{{{text}}}", "values": values}


@dataclass
class Fired:
    """An alert the case expects: its grouping labels and its value as humanized."""

    labels: dict[str, str]
    value: str


@dataclass
class Case:
    alert: str
    input: list[dict[str, str]]
    at: str  # an evaluation time where exactly ``fired`` are firing
    fired: list[Fired]
    pending_at: str  # an evaluation time before ``for:`` elapsed: none fires yet
    values: dict[str, Any] = field(default_factory=dict)


REQ = "sidecache_requests_total"
ERR = "sidecache_store_errors_total"
OPS = "sidecache_store_operations_total"
ORIGIN = "sidecache_origin_responses_total"

CASES: Final = [
    Case(
        "SidecacheLowHitRatio",
        [
            # products: 50% hits at 2 requests/s over two pods: fires after 1h
            *(
                series(REQ, "0+30x150", pod=p, route="products", cache=c)
                for p in ("a", "b")
                for c in ("HIT", "MISS")
            ),
            # search: 50% hits, but 0.2 requests/s, under minRequestRate: ignored
            series(REQ, "0+6x150", route="search", cache="HIT"),
            series(REQ, "0+6x150", route="search", cache="MISS"),
            # items: 90% hits (STALE counts as a lookup that was no hit)
            series(REQ, "0+90x150", route="items", cache="HIT"),
            series(REQ, "0+10x150", route="items", cache="STALE"),
            # live: cache: false, only BYPASS, has no hit ratio
            series(REQ, "0+600x150", route="live", cache="BYPASS"),
        ],
        "75m",
        [Fired({"route": "products"}, "50%")],
        "50m",
    ),
    Case(
        "SidecacheStoreErrors",
        [
            # redis: 1 error and 1 timeout a second in 20 operations: 10% fail
            series(OPS, "0+1200x40", backend="redis", op="get"),
            series(ERR, "0+60x40", backend="redis", op="get", reason="errors"),
            series(ERR, "0+60x40", backend="redis", op="get", reason="timeouts"),
            # mc: 1% fail
            series(OPS, "0+600x40", backend="mc", op="get"),
            series(ERR, "0+6x40", backend="mc", op="get", reason="errors"),
            # down: every call refused by the open breaker (SidecacheBreakerOpen's case)
            series(OPS, "0x40", backend="down", op="get"),
            series(ERR, "0+600x40", backend="down", op="get", reason="rejected"),
        ],
        "20m",
        [Fired({"backend": "redis"}, "10%")],
        "8m",
    ),
    Case(
        "SidecacheBreakerOpen",
        [
            # redis: open in one pod of two for 20 minutes
            series("sidecache_breaker_state", "2x20", pod="a", backend="redis"),
            series("sidecache_breaker_state", "0x20", pod="b", backend="redis"),
            # mc: half-open (probing) is not open
            series("sidecache_breaker_state", "1x20", backend="mc"),
            # flaky: open 3 minutes, then closed
            series("sidecache_breaker_state", "0 0 0 0 2 2 2 0 0 0 0 0 0 0 0", backend="flaky"),
        ],
        "10m",
        [Fired({"backend": "redis"}, "2")],
        "3m",
    ),
    Case(
        "SidecacheBackendMemoryHigh",
        [
            # redis: 95% of maxmemory, as seen by both pods
            *(
                series("sidecache_backend_memory_bytes", "95x30", pod=p, backend="redis")
                for p in "ab"
            ),
            *(
                series("sidecache_backend_memory_limit_bytes", "100x30", pod=p, backend="redis")
                for p in "ab"
            ),
            # mc: half full
            series("sidecache_backend_memory_bytes", "50x30", backend="mc"),
            series("sidecache_backend_memory_limit_bytes", "100x30", backend="mc"),
            # unbounded: Redis without maxmemory (limit 0) never fires
            series("sidecache_backend_memory_bytes", "1e9x30", backend="unbounded"),
            series("sidecache_backend_memory_limit_bytes", "0x30", backend="unbounded"),
        ],
        "20m",
        [Fired({"backend": "redis"}, "95%")],
        "10m",
    ),
    Case(
        "SidecacheEvictions",
        [
            # local: a memory store, 1,200 evictions an hour in pod a, 300 in pod b
            series("sidecache_store_evictions_total", "0+20x90", pod="a", backend="local"),
            series("sidecache_store_evictions_total", "0+5x90", pod="b", backend="local"),
            # redis: the server's own evicted_keys, 1,800 an hour, seen by both pods
            *(
                series("sidecache_backend_evictions_total", "0+30x90", pod=p, backend="redis")
                for p in "ab"
            ),
            # mc: 60 an hour
            series("sidecache_backend_evictions_total", "0+1x90", backend="mc"),
        ],
        "70m",
        [Fired({"backend": "local", "pod": "a"}, "1.2k"), Fired({"backend": "redis"}, "1.8k")],
        "36m",  # redis over 1,000 since 34m, not yet for 5m
    ),
    Case(
        "SidecacheOriginErrors",
        [
            # products: 20% 5xx
            series(ORIGIN, "0+48x40", route="products", status="2xx"),
            series(ORIGIN, "0+12x40", route="products", status="5xx"),
            # reports: 10% of fetches get no answer at all
            series(ORIGIN, "0+54x40", route="reports", status="2xx"),
            series(ORIGIN, "0+6x40", route="reports", status="unreachable"),
            # search: 1 timeout and 1 404 a minute in 61 fetches: under 5%
            series(ORIGIN, "0+59x40", route="search", status="2xx"),
            series(ORIGIN, "0+1x40", route="search", status="4xx"),
            series(ORIGIN, "0+1x40", route="search", status="timeout"),
        ],
        "20m",
        [Fired({"route": "products"}, "20%"), Fired({"route": "reports"}, "10%")],
        "8m",
    ),
    Case(
        "SidecacheStaleOnOriginError",
        [
            # products: 6 stale answers a minute because the origin failed
            series("sidecache_stale_served_total", "0+6x40", route="products", reason="error"),
            # search: stale-while-revalidate is the cache working as designed
            series("sidecache_stale_served_total", "0+60x40", route="search", reason="revalidate"),
            # items: served stale on error once, long ago
            series("sidecache_stale_served_total", "1x40", route="items", reason="error"),
        ],
        "20m",
        [Fired({"route": "products"}, "0.10")],
        "8m",
    ),
]


def rule_of(rendered_rule: dict[str, Any], alert: str) -> dict[str, Any]:
    rules = [r for g in rendered_rule["spec"]["groups"] for r in g["rules"]]
    found = [r for r in rules if r["alert"] == alert]
    assert len(found) == 1, alert
    rule: dict[str, Any] = found[0]
    return rule


def render_annotation(template: str, labels: dict[str, str], value: str) -> str:
    """What Prometheus makes of one annotation, for the few template forms the chart uses;
    any other form fails here, so an expectation never silently skips a template."""
    text = re.sub(
        r"\{\{ with \$labels\.(\w+) \}\}(.*?)\{\{ \. \}\}(.*?)\{\{ end \}\}",
        lambda m: f"{m[2]}{labels[m[1]]}{m[3]}" if m[1] in labels else "",
        template,
    )
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)
    text = re.sub(r"\{\{ \$value \| humanize(Percentage)? \}\}", value, text)
    text = text.replace('{{ printf "%.2f" $value }}', value)
    assert "{{" not in text, text
    return text


def promtool_test(tmp_path: Path, rule: dict[str, Any], case: Case) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))

    def expected(fired: Fired) -> dict[str, Any]:
        rendered = rule_of(rule, case.alert)
        labels = {**TARGET, **fired.labels, **rendered["labels"]}
        return {
            "exp_labels": labels,
            "exp_annotations": {
                name: render_annotation(text, labels, fired.value)
                for name, text in rendered["annotations"].items()
            },
        }

    test = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": case.input,
                "alert_rule_test": [
                    {"eval_time": case.pending_at, "alertname": case.alert, "exp_alerts": []},
                    {
                        "eval_time": case.at,
                        "alertname": case.alert,
                        "exp_alerts": [expected(f) for f in case.fired],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(test, sort_keys=False))
    run = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def rule(render) -> dict[str, Any]:
    rendered: dict[str, Any] = render({"prometheusRule": {"enabled": True}}).one("PrometheusRule")
    return rendered


def test_off_by_default(render) -> None:
    assert render({}).all("PrometheusRule") == []


def test_every_alert_has_a_case(rule) -> None:
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert names == ALERTS
    assert [c.alert for c in CASES] == ALERTS


def test_promtool_check_rules(rule, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in run.stdout


@pytest.mark.parametrize("case", CASES, ids=[c.alert for c in CASES])
def test_alert_fires_only_on_its_series(rule, case: Case, tmp_path: Path) -> None:
    promtool_test(tmp_path, rule, case)


def _case(alert: str) -> Case:
    return next(c for c in CASES if c.alert == alert)


VALUED: Final = [
    # the threshold and the floor are the values'
    ("hitRatio", {"hitRatio": 0.4}, "SidecacheLowHitRatio", "50m", "75m", []),
    (
        "minRequestRate",
        {"minRequestRate": 0.1},
        "SidecacheLowHitRatio",
        "50m",
        "75m",
        [Fired({"route": "products"}, "50%"), Fired({"route": "search"}, "50%")],
    ),
    # so is how long a condition must hold
    (
        "for",
        {"for": {"lowHitRatio": "30m"}},
        "SidecacheLowHitRatio",
        "20m",
        "50m",
        [Fired({"route": "products"}, "50%")],
    ),
    (
        "evictionsPerHour",
        {"evictionsPerHour": 1500},
        "SidecacheEvictions",
        "36m",
        "70m",
        [Fired({"backend": "redis"}, "1.8k")],
    ),
    # series of another job are not this release's
    (
        "selector",
        {"selector": 'namespace="web",job="other"'},
        "SidecacheOriginErrors",
        "8m",
        "20m",
        [],
    ),
    # labels for Alertmanager's routing ride on every alert (the expectation adds them)
    (
        "ruleLabels",
        {"ruleLabels": {"team": "shop"}, "severity": {"breakerOpen": "page"}},
        "SidecacheBreakerOpen",
        "3m",
        "10m",
        [Fired({"backend": "redis"}, "2")],
    ),
]


@pytest.mark.parametrize(
    ("values", "alert", "pending_at", "at", "fired"),
    [v[1:] for v in VALUED],
    ids=[v[0] for v in VALUED],
)
def test_values_reach_the_rules(
    render, tmp_path: Path, values, alert: str, pending_at: str, at: str, fired: list[Fired]
) -> None:
    rule = render({"prometheusRule": {"enabled": True, **values}}).one("PrometheusRule")
    if "ruleLabels" in values:
        assert rule_of(rule, alert)["labels"] == {"severity": "page", "team": "shop"}
    case = _case(alert)
    promtool_test(tmp_path, rule, Case(alert, case.input, at, fired, pending_at))


def test_object_labels_and_runbook_links(render) -> None:
    values = {
        "enabled": True,
        "additionalLabels": {"release": "kube-prometheus-stack"},
        "runbookUrl": "https://git.example.com/shop/sidecache/blob/main/docs/kubernetes.md",
    }
    rule = render({"prometheusRule": values}).one("PrometheusRule")
    validate(rule)
    assert rule["metadata"]["name"] == "shop-sidecache"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for alert in ALERTS:
        annotations = rule_of(rule, alert)["annotations"]
        assert annotations["runbook_url"] == f"{values['runbookUrl']}#{alert.lower()}"
        assert set(annotations) == {"summary", "description", "runbook_url"}
    # every alert has a runbook heading of that anchor in docs/kubernetes.md
    doc = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    headings = {line.lstrip("#").strip().lower() for line in doc.splitlines() if line[:4] == "### "}
    assert {a.lower() for a in ALERTS} <= headings


def test_rule_schema_catches_a_typo(rule) -> None:
    validate(rule)
    broken = {**rule, "spec": {"groups": [{"name": "sidecache", "rule": []}]}}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_rendered_alongside_the_sidecar_of_a_parent_chart(render) -> None:
    """With deployment.enabled false (the chart as a dependency) the alerts still render."""
    rendered = render({"deployment": {"enabled": False}, "prometheusRule": {"enabled": True}})
    assert [d["kind"] for d in rendered.docs] == ["ConfigMap", "PrometheusRule"]


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"hitRatio": 75}, "/prometheusRule/hitRatio"),
        ({"for": {"lowHitRatio": "1 hour"}}, "/prometheusRule/for/lowHitRatio"),
        ({"for": {"lowHitRatios": "1h"}}, "'lowHitRatios' not allowed"),
        ({"selector": '{namespace="web"}'}, "/prometheusRule/selector"),
        ({"severity": {"evictions": ""}}, "/prometheusRule/severity/evictions"),
    ],
)
def test_schema_rejects(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.render({"prometheusRule": values}, name=RELEASE, namespace=NAMESPACE)
