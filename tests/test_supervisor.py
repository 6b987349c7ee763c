"""proxy.supervisor.settle_gc: what a worker does to the cyclic collector at start."""

from __future__ import annotations

import gc

from proxy.supervisor import FULL_GC_EVERY, settle_gc


def test_settle_gc_freezes_what_exists_and_spaces_full_passes():
    threshold = gc.get_threshold()
    try:
        settle_gc()
        assert gc.get_freeze_count() > 10_000  # the imported modules, at least
        assert gc.get_threshold() == (threshold[0], threshold[1], FULL_GC_EVERY)
        garbage = []
        garbage.append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
