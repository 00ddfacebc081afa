"""The one timing loop behind every latency rubik reports (profile, twist --latency, bench, the int8 boundary).

Plain Python (no torch, no rubik imports), so models-level code, the deploy runtimes and the
benchmarks all time the same way: warm-up calls first, then rounds in which every function is
called once, so that a machine other work slows down slows every contender alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

MIN_ROUNDS = 20  # a time budget never cuts a run below this many rounds: the median needs some samples


def time_interleaved(fns: dict[str, Callable[[], object]], runs: int = 100, warmup: int = 10,
                     budget_s: float | None = None) -> dict[str, list[float]]:
    """Wall times in ms of each function, one call of each per round; stops early past `budget_s`."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start_all = time.perf_counter()
    for done in range(1, runs + 1):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - start) * 1e3)
        if budget_s is not None and done >= MIN_ROUNDS and time.perf_counter() - start_all > budget_s:
            break
    return times


def median_ms(fns: dict[str, Callable[[], object]], runs: int = 100, warmup: int = 10,
              budget_s: float | None = None) -> dict[str, float]:
    """Median ms of each function, timed interleaved (`time_interleaved`)."""
    return {k: statistics.median(v) for k, v in time_interleaved(fns, runs, warmup, budget_s).items()}
