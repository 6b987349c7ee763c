"""Where sidecache bends prometheus-client past its public API, and nowhere else.

Two things the library offers no public way to do: switch to multiprocess mode after it
was imported (``enable_multiprocess``), and add many observations to a histogram at once
(``add_observations``). Both touch its internals; tests/obs/test_prometheus_adapter.py pins
the behaviour relied on, so an upgrade that changes it fails there, not in production.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(path: str) -> None:
    """Keep metric values in mmap files under ``path`` (call before any metric exists).

    prometheus-client picks its value class when it is imported, which the CLI has
    done long before it knows about ``--workers``; switching the class here is what its
    environment variable would have done at import time. The variable is set too: the
    library's multiprocess collector and the forked workers read it.
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)  # files of an earlier run would be summed in
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def is_multiprocess() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def multiprocess_dir() -> str | None:
    """The directory of the per-process files, in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) if is_multiprocess() else None


def forget_process(pid: int) -> None:
    """A worker died: drop its live gauges (its counters still count)."""
    if is_multiprocess():
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def merged_registry() -> CollectorRegistry:
    """Every worker's files summed (multiprocess mode only)."""
    merged = CollectorRegistry()
    MultiProcessCollector(merged, os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
    return merged


def add_observations(histogram: Histogram, total: float, counts: Sequence[int]) -> None:
    """What ``observe`` would have done for a batch of observations summing to ``total``,
    ``counts[i]`` of them in bucket ``i`` (not cumulative, ``+Inf`` last).

    prometheus-client has no public "add n observations": its per-bucket values and sum
    are what ``observe`` increments, in the process or in the mmap files alike.
    """
    histogram._sum.inc(total)
    for index, count in enumerate(counts):
        if count:
            histogram._buckets[index].inc(count)
