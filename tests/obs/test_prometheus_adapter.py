"""Pins what proxy/obs/prometheus_adapter.py relies on in prometheus-client's internals: a
batch added with ``add_observations`` reads exactly as the same values ``observe``d one
by one, in one process and in multiprocess mode switched on after import. An upgrade of
prometheus-client that changes either fails here."""

from __future__ import annotations

import subprocess
import sys
from bisect import bisect_left
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.obs.prometheus_adapter import add_observations, is_multiprocess

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = (0.0005, 0.001, 0.003, 0.003, 0.05, 0.7, 2.5, 30.0)


def batched(values: tuple[float, ...]) -> tuple[float, list[int]]:
    """What ``Meter`` tallies between flushes: the sum and per-bucket counts, +Inf last."""
    counts = [0] * (len(BUCKETS) + 1)
    for value in values:
        counts[bisect_left(BUCKETS, value)] += 1
    return sum(values), counts


def exposition(fill: str) -> str:
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "t", ["route"], buckets=BUCKETS, registry=registry)
    child = histogram.labels("r")
    if fill == "observe":
        for value in VALUES:
            child.observe(value)
    else:
        add_observations(child, *batched(VALUES))
    text = generate_latest(registry).decode()
    return "".join(line for line in text.splitlines(True) if "_created" not in line)


def test_a_batch_reads_as_the_same_observations_one_by_one() -> None:
    assert not is_multiprocess()  # the test process stays in single-process mode
    expected = exposition("observe")
    assert 't_seconds_bucket{le="0.01",route="r"} 4.0' in expected
    assert 't_seconds_count{route="r"} 8.0' in expected
    assert exposition("add") == expected


MULTIPROCESS = """
import sys
from pathlib import Path

from prometheus_client import Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.obs.prometheus_adapter import (
    add_observations, enable_multiprocess, is_multiprocess, merged_registry, multiprocess_dir,
)
from tests.obs.test_prometheus_adapter import BUCKETS, VALUES, batched

directory = Path(sys.argv[1])
assert not is_multiprocess() and multiprocess_dir() is None
enable_multiprocess(str(directory))  # after prometheus_client was imported
assert is_multiprocess() and multiprocess_dir() == str(directory)
assert not (directory / "stale.db").exists()  # an earlier run's file is not summed in
one = Histogram("one_seconds", "t", ["route"], buckets=BUCKETS).labels("r")
for value in VALUES:
    one.observe(value)
two = Histogram("two_seconds", "t", ["route"], buckets=BUCKETS).labels("r")
add_observations(two, *batched(VALUES))
assert list(directory.glob("histogram_*.db")), "values are not in the mmap files"
text = generate_latest(merged_registry()).decode()
lines = sorted(line for line in text.splitlines() if not line.startswith("#"))
one = [line.removeprefix("one") for line in lines if line.startswith("one")]
two = [line.removeprefix("two") for line in lines if line.startswith("two")]
assert one == two, (one, two)
assert '_seconds_count{route="r"} 8.0' in one, one
print("ok")
"""


def test_multiprocess_mode_switched_on_after_import(tmp_path: Path) -> None:
    (tmp_path / "stale.db").write_bytes(b"")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
