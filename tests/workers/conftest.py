"""Fixtures for worker tests (what they share otherwise is in helpers.py)."""
from __future__ import annotations

import signal

import pytest

from tests.workers.helpers import WorkerProcess


@pytest.fixture
def workers(tmp_path):
    """Starts worker processes (`workers(broker_url, env, faults=...)`); all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(broker_url: str, env: dict[str, str] | None = None, faults: dict | None = None) -> WorkerProcess:
        worker = WorkerProcess(broker_url, tmp_path, env, name=f"worker{len(started)}", faults=faults)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(signal.SIGKILL)
