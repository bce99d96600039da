"""The progress of long builds (a database's captions, terms, training, indexing, tuning): the core
reports `(step, done, total)` through a callback, this draws it. At a terminal, one tqdm bar per step
(rate and ETA); in a file or a pipe (a Kubernetes Job's log, `2>build.log`), where a redrawn bar is
garbage, a plain line per step at its start, at most once a minute while it runs, and at its end."""
from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressBars:
    """A `cased_core.artifacts.database_build.Progress` callback: bars at a terminal, lines elsewhere."""

    LABELS = {"captions": ("captions", "cap"), "terms": ("embedding terms", "term"), "training": ("training index", "step"),
              "indexing": ("indexing", "vec"), "tuning": ("tuning search", "step"), "checksums": ("checksums", "file")}

    def __init__(self, enabled: bool | None = None, stream=None, clock=time.monotonic, every_s: float = 60.0):
        """Args:
            enabled: draw bars (default: when `stream` is a terminal), else write lines.
            stream: where to write (default: stderr).
            clock: seconds, injected by tests.
            every_s: the most often a line is written while a step runs.
        """
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.clock, self.every_s = clock, every_s
        self.step, self.bar = None, None
        self.started = self.last = 0.0
        self.done, self.total = 0, None

    def __call__(self, step: str, done: int, total: int | None) -> None:
        if step != self.step:
            self.close()
            self.step, self.started, self.last = step, self.clock(), self.clock()
            if self.enabled:
                from tqdm import tqdm

                label, unit = self.LABELS.get(step, (step, "it"))
                self.bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, file=self.stream, mininterval=1.0)
            else:
                self._line(0, total)
        self.done, self.total = done, total
        if self.bar is not None:
            if total is not None and self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
        elif self.clock() - self.last >= self.every_s:
            self._line(done, total)

    def _line(self, done: int, total: int | None, finished: bool = False) -> None:
        now = self.clock()
        self.last = now
        label, unit = self.LABELS.get(self.step, (self.step, "it"))
        elapsed = now - self.started
        parts = [f"{label}: {done:,}" + (f" of {total:,} {unit}" if total else f" {unit}")]
        if total and not finished:
            parts.append(f"{100 * done / total:.0f}%")
        if elapsed > 0 and done:
            parts.append(f"{done / elapsed:,.1f} {unit}/s")
        if finished:
            parts.append(f"done in {_duration(elapsed)}")
        elif total and done and elapsed > 0:
            parts.append(f"ETA {_duration((total - done) * elapsed / done)}")
        print(", ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        """Ends the current step: closes its bar, or writes its last line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.step is not None:
            self._line(self.done, self.total, finished=True)
        self.step = None
