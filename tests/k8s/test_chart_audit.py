"""The audit CronJob: ``sidecache audit`` on a schedule, with the sidecar's image, policy,
Redis settings, env and securityContext (tests/ops/test_audit_cronjob.py runs its command
against a real Redis)."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from .chart import CHART, NAMESPACE, RELEASE
from .manifests import validate

REDIS = {"url": "redis://redis.web:6379/0", "existingSecret": "redis"}


def job_container(cron_job: dict[str, Any]) -> dict[str, Any]:
    containers = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def test_off_by_default(render) -> None:
    assert render({}).all("CronJob") == []


def test_weekly_by_default_and_never_retried(render) -> None:
    cron_job = render({"audit": {"enabled": True}}).one("CronJob")
    validate(cron_job)
    assert cron_job["metadata"]["name"] == "shop-sidecache-audit"
    spec = cron_job["spec"]
    assert spec["schedule"] == "0 3 * * 0"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    # exit 1 means findings: the Job fails visibly and is not run again until next week
    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_same_image_policy_env_and_security_as_the_sidecar(render) -> None:
    values = {"audit": {"enabled": True}, "redis": REDIS, "extraEnv": [{"name": "A", "value": "1"}]}
    rendered = render(values)
    container = job_container(rendered.one("CronJob"))
    sidecar = rendered.sidecar
    assert container["image"] == sidecar["image"] == "sidecache:0.1.0"
    assert container["securityContext"] == sidecar["securityContext"]
    assert container["env"] == sidecar["env"]
    assert [e["name"] for e in container["env"]] == ["REDIS_PASSWORD", "REDIS_URL", "A"]
    policy = sidecar["args"][sidecar["args"].index("--policy") + 1]
    assert container["args"] == ["audit", "--policy", policy]
    assert container["volumeMounts"] == sidecar["volumeMounts"]
    pod = rendered.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["volumes"] == rendered.pod_spec["volumes"]
    assert pod["securityContext"] == rendered.pod_spec["securityContext"]
    assert pod["automountServiceAccountToken"] is False


def test_schedule_time_zone_and_arguments(render) -> None:
    audit = {
        "enabled": True,
        "schedule": "@daily",
        "timeZone": "Europe/Berlin",
        "extraArgs": ["--sample", "100000"],
    }
    cron_job = render({"audit": audit}).one("CronJob")
    validate(cron_job)
    assert cron_job["spec"]["schedule"] == "@daily"
    assert cron_job["spec"]["timeZone"] == "Europe/Berlin"
    assert job_container(cron_job)["args"][-2:] == ["--sample", "100000"]


def test_rendered_for_a_parent_chart_too(render) -> None:
    """With deployment.enabled false (the sidecar included elsewhere) the audit still runs."""
    rendered = render({"deployment": {"enabled": False}, "audit": {"enabled": True}})
    assert sorted(d["kind"] for d in rendered.docs) == ["ConfigMap", "CronJob"]
    assert job_container(rendered.one("CronJob"))["image"] == "sidecache:0.1.0"


@pytest.mark.parametrize(
    ("audit", "where"),
    [({"schedule": "weekly"}, "/audit/schedule"), ({"extraArgs": "--json"}, "/audit/extraArgs")],
)
def test_schema_rejects(audit: dict[str, Any], where: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match=where):
        chart.render({"audit": audit}, name=RELEASE, namespace=NAMESPACE)
