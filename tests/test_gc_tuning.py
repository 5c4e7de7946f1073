"""The collector settings a serving process (the API, a standalone worker) takes once started
(app.platform.gc_tuning)."""

from __future__ import annotations

import gc

from app.platform import gc_tuning


def test_tuning_freezes_the_start_up_heap_and_raises_the_young_threshold_and_restore_undoes_it() -> None:
    before = gc.get_threshold()
    previous = gc_tuning.tune_for_serving()
    try:
        assert previous == before
        assert gc.get_freeze_count() > 10_000  # all the session has allocated so far: out of the collector's reach
        assert gc.get_threshold() == (max(gc_tuning.GEN0_THRESHOLD, before[0]), before[1], before[2])
    finally:
        gc_tuning.restore(previous)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
