"""The dependencies failing now, and since when: what pauses a worker, and riding an outage out.

A system fault (workers/failures.py) charges no record: the step that met it waits with backoff and
tries again until the dependency answers (`Outages.ride_out`), so the batch it belongs to, and with it
every later one, stays unanswered and uncommitted meanwhile. While any dependency is down the worker
is not ready; past the outage budget it is not live either, so the orchestrator restarts it.
`abandon` ends every wait at once (a revocation or a stop must not wait for the storage to come
back): the waiting steps raise `Abandoned` and their events are answered again by whoever owns them
next.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from workers.failures import DeviceLost, SystemFault

log = logging.getLogger("cased.worker")

T = TypeVar("T")

RETRY_FIRST_S = 0.5  # the first wait after a system fault, doubled after each failed try
RETRY_MAX_S = 5.0  # the longest wait between tries: how late a worker may notice a dependency is back


class Abandoned(BaseException):
    """A step waiting out an outage was told to give up (its partitions are moving, or the worker stops).
    Like a cancellation, not an Exception: no handler of a record's failure may take it for one."""


@dataclass
class Outage:
    dependency: str
    detail: str  # what the dependency said last
    since: float  # unix time it started
    started: float  # the monotonic clock's time it started


class Outages:
    """Per dependency: down since when and why, how many outages so far, the seconds paused in all.

    `clock` (monotonic) and `wall` (unix time) are injected for tests; `sleep` waits between tries.
    """

    def __init__(self, budget_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.budget_s, self.clock, self.wall = budget_s, clock, wall
        self.down_now: dict[str, Outage] = {}
        self.count: Counter = Counter()  # outages started, per dependency
        self.paused_s: Counter = Counter()  # seconds paused in outages that ended, per dependency
        self.last_resumed: float | None = None  # monotonic time the last outage ended
        self._abandoned = asyncio.Event()  # bound to the event loop that first waits on it

    # -- what is down ------------------------------------------------------------------------------

    def down(self, fault: SystemFault) -> None:
        """`fault.dependency` fails for everyone (again): an outage starts, or goes on with this detail."""
        outage = self.down_now.get(fault.dependency)
        if outage is not None:
            outage.detail = fault.detail
            return
        self.down_now[fault.dependency] = Outage(fault.dependency, fault.detail, self.wall(), self.clock())
        self.count[fault.dependency] += 1
        log.warning("%s unavailable (%s): pausing, the events in flight are kept unanswered and uncommitted; "
                    "not ready until it answers, not live after %.0f s", fault.dependency, fault.detail,
                    self.budget_s)

    def up(self, dependency: str) -> None:
        """`dependency` answered: its outage, if any, is over."""
        outage = self.down_now.pop(dependency, None)
        if outage is None:
            return
        now = self.clock()
        self.paused_s[dependency] += now - outage.started
        self.last_resumed = now
        log.warning("%s back after %.1f s: resuming", dependency, now - outage.started)

    def paused(self) -> bool:
        return bool(self.down_now)

    def paused_for(self) -> float:
        """Seconds since the oldest outage going on started (0 when none is)."""
        if not self.down_now:
            return 0.0
        return self.clock() - min(o.started for o in self.down_now.values())

    def past_budget(self) -> bool:
        return self.paused() and self.paused_for() >= self.budget_s

    def status(self) -> dict:
        """For /status and metrics: what is down now (since when, for how long, why), outages so far and
        the seconds paused per dependency (ongoing outages included)."""
        now = self.clock()
        paused_s = Counter(self.paused_s)
        for outage in self.down_now.values():
            paused_s[outage.dependency] += now - outage.started
        return {
            "paused": {o.dependency: {"since": round(o.since, 3), "seconds": round(now - o.started, 1),
                                      "detail": o.detail} for o in self.down_now.values()},
            "outages": dict(self.count),
            "paused_s": {name: round(seconds, 3) for name, seconds in paused_s.items()},
        }

    # -- riding one out ----------------------------------------------------------------------------

    async def ride_out(self, attempt: Callable[[], Awaitable[T]], failed: SystemFault | None = None) -> T:
        """`attempt()`'s result, tried again with backoff (RETRY_FIRST_S doubling up to RETRY_MAX_S) for
        as long as it raises SystemFault; each such fault marks its dependency down, a success marks it
        up again. `failed`: the fault a first try met already (the wait comes first). DeviceLost, and
        anything else `attempt` raises, goes through.

        Raises:
            Abandoned: `abandon()` was called while waiting.
        """
        delay, failing = RETRY_FIRST_S, None
        while True:
            if failed is not None:
                self.down(failed)
                failing = failed.dependency
                await self._wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
            try:
                result = await attempt()
            except DeviceLost:
                raise
            except SystemFault as fault:
                failed = fault
                continue
            if failing is not None:
                self.up(failing)
            return result

    def abandon(self) -> None:
        """End every wait in `ride_out` now (they raise Abandoned), until `carry_on`."""
        self._abandoned.set()

    def carry_on(self) -> None:
        self._abandoned.clear()

    def _check_abandoned(self) -> None:
        if self._abandoned.is_set():  # only a step that failed checks: others finish as usual
            raise Abandoned("the worker's partitions moved or it is stopping while a dependency was down")

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._abandoned.wait(), seconds)
        except asyncio.TimeoutError:
            return
        self._check_abandoned()
