"""The largest model batch that fits in memory now: halved on out of memory, grown back later.

Retrying each failing batch in halves labels everything but never learns: under memory pressure that
lasts, every batch fails first (1,176 failing calls in 30 s, measured before this existed). Here the
size that failed is halved and kept; after `regrow_s` at the smaller size the next call tries twice
as many again. A growth that fails at once doubles the wait before the next try (up to
`regrow_max_s`), a growth that holds resets it: under pressure that lasts, failing calls grow with the
logarithm of the time, and once the pressure is gone the configured size returns within seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

REGROW_S = 5.0  # at a smaller size this long before trying twice as many
REGROW_MAX_S = 600.0  # the longest wait between tries after growths that failed


@dataclass
class BatchLimit:
    """Pure bookkeeping; the pipeline calls `shrink` on out of memory and `fitted` after a call that
    succeeded. `clock` is injected for tests.

    Examples:
        >>> now = [0.0]
        >>> limit = BatchLimit(16, clock=lambda: now[0])
        >>> limit.shrink(16), limit.shrink(8)
        (8, 4)
        >>> now[0] = 5.0; limit.fitted(4); limit.size
        8
    """
    configured: int
    regrow_s: float = REGROW_S
    regrow_max_s: float = REGROW_MAX_S
    clock: Callable[[], float] = time.monotonic
    size: int = 0  # 0: the configured size
    out_of_memory: int = 0  # calls that ran out of memory
    _wait_s: float = field(default=0.0, repr=False)
    _changed: float = field(default=0.0, repr=False)
    _grown: bool = field(default=False, repr=False)  # the last change was a growth not yet proven

    def __post_init__(self):
        self.size = self.size or self.configured
        self._wait_s = self.regrow_s

    def shrink(self, failed: int) -> int:
        """A call of `failed` images ran out of memory: the new size (half of it, at least 1)."""
        self.out_of_memory += 1
        self._wait_s = min(2 * self._wait_s, self.regrow_max_s) if self._grown else self.regrow_s
        self.size = max(1, min(self.size, failed // 2))
        self._grown, self._changed = False, self.clock()
        return self.size

    def fitted(self, images: int) -> None:
        """A call of `images` images succeeded: a growth is proven when it was a full one, and after
        `regrow_s` (or the wait that failed growths set) at a smaller size the next call may grow."""
        if images < self.size:
            return
        if self._grown:
            self._grown, self._wait_s = False, self.regrow_s
        if self.size < self.configured and self.clock() - self._changed >= self._wait_s:
            self.size = min(self.configured, 2 * self.size)
            self._grown, self._changed = True, self.clock()
