"""CPU time per stage of the data path, summed over the threads that ran it: where a worker's cost
per image goes (`/status` reports it, `cased bench stream` divides it by the images answered).

CPU time, not wall time: on a machine shared with other processes a stage's wall time grows with the
neighbours' load, its CPU time barely. Each stage adds the CPU time of the thread it ran on, read with
`time.thread_time` (one clock read at each end, about a microsecond); the threads torch starts for
intra-op parallelism, and the I/O of uri fetches and Kafka clients on the event loop (measuring
across an await would count whatever else ran meanwhile), are not seen here and land in the
process's unattributed rest.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

# Commits are not a stage here: their cost is waiting on the broker, not CPU.
STAGES = ("consume", "fetch", "decode", "gate", "preprocess", "encode", "search", "score", "history", "produce")


class StageCosts:
    """CPU seconds per stage (thread-safe: stages run on the event loop and in thread pools)."""

    def __init__(self, clock: Callable[[], float] = time.thread_time):
        self.clock = clock
        self._seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] += seconds

    def measure(self, stage: str) -> "_Measured":
        """`with costs.measure("decode"): ...` adds the block's CPU time (this thread's) to `stage`."""
        return _Measured(self, stage)

    def snapshot(self) -> dict[str, float]:
        """CPU seconds per stage so far, every stage named."""
        with self._lock:
            return {stage: round(seconds, 6) for stage, seconds in self._seconds.items()}


class _Measured:
    __slots__ = ("costs", "stage", "started")

    def __init__(self, costs: StageCosts, stage: str):
        self.costs, self.stage = costs, stage

    def __enter__(self) -> None:
        self.started = self.costs.clock()

    def __exit__(self, *exc) -> bool:
        self.costs.add(self.stage, self.costs.clock() - self.started)
        return False
