"""A build's progress in a log file: plain lines, at most once a minute, with a rate and an ETA."""
from __future__ import annotations

import io

from workers.progress import ProgressBars


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_in_a_file_say_each_step_its_rate_and_eta_at_most_once_a_minute():
    out, clock = io.StringIO(), Clock()
    progress = ProgressBars(stream=out, clock=clock)
    assert not progress.enabled  # a StringIO is not a terminal
    progress("indexing", 0, 1_000_000)
    for done, at in ((100_000, 30), (250_000, 60), (300_000, 90), (500_000, 125)):
        clock.now = at
        progress("indexing", done, 1_000_000)
    clock.now = 200
    progress("tuning", 0, None)
    clock.now = 230
    progress("tuning", 12, None)
    progress.close()
    assert out.getvalue().splitlines() == [
        "indexing: 0 of 1,000,000 vec, 0%",
        "indexing: 250,000 of 1,000,000 vec, 25%, 4,166.7 vec/s, ETA 3m00s",
        "indexing: 500,000 of 1,000,000 vec, 50%, 4,000.0 vec/s, ETA 2m05s",
        "indexing: 500,000 of 1,000,000 vec, 2,500.0 vec/s, done in 3m20s",
        "tuning search: 0 step",
        "tuning search: 12 step, 0.4 step/s, done in 0m30s",
    ]


def test_a_terminal_gets_one_bar_per_step_and_no_lines():
    out = io.StringIO()
    progress = ProgressBars(enabled=True, stream=out)
    progress("captions", 5, 10)
    progress("captions", 10, 10)
    progress.close()
    assert "captions: 100%|" in out.getvalue() and "done in" not in out.getvalue()
