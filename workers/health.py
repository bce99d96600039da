"""What the worker's health endpoints report: readiness, liveness and a status summary.

Ready: loaded, joined, and no dependency down. Live: not halted, not stuck (a batch in flight, or
records waiting, for `stall_s` while nothing is down), and not paused for longer than the outage
budget (workers/outages.py): a worker that cannot recover by waiting is restarted.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from workers.batch_limit import BatchLimit
from workers.costs import StageCosts
from workers.outages import Outages


@dataclass
class WorkerHealth:
    model: str | None = None  # set once the model and database are loaded
    database: str | None = None
    stall_s: float = 300.0  # a batch in flight longer than this means the worker is stuck
    clock: Callable[[], float] = time.monotonic
    joined: bool = False  # the consumer joined its group (set on every assignment)
    partitions: list[int] = field(default_factory=list)
    busy_since: float | None = None  # since when batches are in flight without one finishing; None: idle
    in_flight: int = 0  # batches taken and not yet answered
    waiting_since: float | None = None  # since when fetched records wait unanswered while idle
    last_progress: float | None = None
    started: float = field(default_factory=time.monotonic)
    counters: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    batch_sizes: Counter = field(default_factory=Counter)  # batches taken, by their number of events
    commit_failures: int = 0  # batches in a row whose commit failed
    last_commit_error: str | None = None
    halted: str | None = None  # why the worker stopped taking events; /live fails while set
    costs: StageCosts = field(default_factory=StageCosts)  # CPU seconds per data-path stage
    serving: dict = field(default_factory=dict)  # search backend, threads, JPEG decoder
    outages: Outages = field(default_factory=Outages)  # dependencies down now, and past outages
    batch_limit: BatchLimit | None = None  # images per model call that fit in memory now

    def loaded(self, model: str, database: str, serving: dict | None = None) -> None:
        """`serving`: how the model and database run (search backend, threads, JPEG decoder)."""
        self.model, self.database, self.serving = model, database, serving or {}

    def assigned(self, partitions: list[int]) -> None:
        self.joined = True
        self.partitions = partitions

    def batch_started(self, events: int) -> None:
        self.in_flight += 1
        if self.busy_since is None:
            self.busy_since = self.clock()
        self.counters["events_in"] += events
        self.counters["batches"] += 1
        self.batch_sizes[events] += 1

    def batch_done(self, labels: int, dead_letter_reasons: list[str], reused: int = 0) -> None:
        """A batch answered: `labels` labels (`reused` of them by the change gate) and these dead letters."""
        self.in_flight = max(0, self.in_flight - 1)
        self.last_progress = self.clock()
        self.busy_since = self.last_progress if self.in_flight else None
        self.counters["labels_out"] += labels
        self.counters["reused"] += reused
        self.dead_letters.update(dead_letter_reasons)

    def read_back(self, records: int) -> None:
        self.counters["read_back"] += records

    def committed(self) -> None:
        self.commit_failures = 0

    def commit_failed(self, reason: str) -> int:
        """A batch's commit failed for `reason`; returns how many batches in a row that makes."""
        self.commit_failures += 1
        self.counters["commit_failures"] += 1
        self.last_commit_error = reason
        return self.commit_failures

    def halt(self, reason: str) -> None:
        """The worker takes no more events: not live from now on, `reason` in the status."""
        self.halted = reason

    def backlog(self, waiting: bool) -> None:
        """Whether records the consumer fetched wait unanswered while no batch runs."""
        if not waiting:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = self.clock()

    def ready(self) -> bool:
        """Ready once the model and database are loaded and the consumer group was joined, while no
        dependency is down."""
        return self.joined and self.model is not None and not self.outages.paused()

    def live(self) -> bool:
        """Fails once halted; while a dependency is down, once the outage budget is spent; otherwise
        when a batch has been in flight for longer than `stall_s` (counted from the end of the last
        outage), or records have been waiting that long with no batch answering them (stuck, as opposed
        to idle)."""
        if self.halted is not None:
            return False
        if self.outages.paused():
            return not self.outages.past_budget()
        now = self.clock()
        busy_since = self.busy_since
        if busy_since is not None and self.outages.last_resumed is not None:
            busy_since = max(busy_since, self.outages.last_resumed)
        stuck_batch = busy_since is not None and now - busy_since >= self.stall_s
        stuck_backlog = self.waiting_since is not None and self.busy_since is None and \
            now - max(self.waiting_since, self.last_progress or self.waiting_since) >= self.stall_s
        return not (stuck_batch or stuck_backlog)

    def status(self) -> dict:
        now = self.clock()
        return {
            "model": self.model, "database": self.database, "serving": self.serving,
            "ready": self.ready(), "live": self.live(),
            "partitions": self.partitions, "uptime_s": round(now - self.started, 1),
            "seconds_since_progress": None if self.last_progress is None else round(now - self.last_progress, 1),
            "batch_in_flight_s": None if self.busy_since is None else round(now - self.busy_since, 1),
            "counters": dict(self.counters), "dead_letters": dict(self.dead_letters),
            "in_flight": self.in_flight, "batch_sizes": dict(self.batch_sizes),
            "commit_failures_in_a_row": self.commit_failures, "last_commit_error": self.last_commit_error,
            "halted": self.halted, "cpu_s_by_stage": self.costs.snapshot(),
            **self.outages.status(),
            "model_batch_size": None if self.batch_limit is None else self.batch_limit.size,
            "out_of_memory": 0 if self.batch_limit is None else self.batch_limit.out_of_memory,
        }
