"""``Meter`` is made from the ``SERIES`` table: every metric attribute it declares comes
from exactly one row, of the declared kind, under the row's name."""

from __future__ import annotations

from typing import get_type_hints

from prometheus_client import Counter, Gauge, Histogram

from proxy.obs.metrics import SERIES, Meter

KINDS = (Counter, Gauge, Histogram)


def test_every_declared_metric_is_made_from_one_row() -> None:
    declared = {
        name: kind
        for name, kind in get_type_hints(Meter).items()
        if isinstance(kind, type) and issubclass(kind, KINDS)
    }
    assert sorted(declared) == sorted(series.attr for series in SERIES)
    meter = Meter()
    for series in SERIES:
        made = getattr(meter, series.attr)
        assert type(made) is declared[series.attr] is series.kind, series.attr
        assert [family.name for family in made.describe()] == [series.name], series.attr


def test_names_and_labels_as_scraped() -> None:
    meter = Meter()
    meter.request("items", "HIT", 0.003)
    meter.purge("admin", 2)
    text = meter.exposition().decode()
    assert 'sidecache_requests_total{cache="HIT",route="items"} 1.0' in text
    assert (
        'sidecache_request_duration_seconds_bucket{cache="HIT",le="0.005",route="items"} 1.0'
        in (text)
    )
    assert 'sidecache_purged_entries_total{source="admin"} 2.0' in text
    assert "sidecache_start_time_seconds " in text
    assert "_created" not in text
