"""The flow's steps driven in process, inside a worker whose Faust app is built, never started."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from workers import flow as flow_module
from workers.app import Worker
from workers.batch_limit import BatchLimit
from workers.costs import StageCosts
from workers.outages import Outages
from workers.settings import Settings


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.setattr(flow_module, "COMMIT_BACKOFF_S", 0.0)
    # the steps tested here never reach the model
    pipeline = SimpleNamespace(costs=StageCosts(), outages=Outages(), batch_limit=BatchLimit(16))
    built = Worker.init(Settings(broker="kafka://127.0.0.1:9"), pipeline=pipeline, stop=lambda: None)
    built.frontier.reset({0: 10, 1: 20})
    return built


def test_a_commit_is_retried_and_a_success_resets_the_failure_count(worker, monkeypatch):
    calls = []

    async def flaky(consumer, offsets):
        calls.append(dict(offsets))
        if len(calls) < flow_module.COMMIT_ATTEMPTS:
            raise RuntimeError("coordinator moving")

    monkeypatch.setattr(flow_module.compat, "commit", flaky)
    worker.health.commit_failures = 2
    asyncio.run(worker.flow.commit({0}))
    assert len(calls) == flow_module.COMMIT_ATTEMPTS and all(set(c) == {("images.in", 0)} for c in calls)
    assert [offset for offset in calls[0].values()] == [10]  # the partition's frontier
    assert worker.health.commit_failures == 0 and worker.health.halted is None


def test_commits_failing_batch_after_batch_halt_the_worker(worker, monkeypatch):
    async def broken(consumer, offsets):
        raise RuntimeError("no coordinator")

    monkeypatch.setattr(flow_module.compat, "commit", broken)
    for batch in range(flow_module.COMMIT_FAILURES_FATAL - 1):
        asyncio.run(worker.flow.commit({1}))
        assert worker.health.halted is None and worker.health.live()
    asyncio.run(worker.flow.commit({1}))
    assert worker.health.halted and "RuntimeError: no coordinator" in worker.health.halted
    assert not worker.health.live()
    status = worker.health.status()
    assert status["halted"] == worker.health.halted and status["commit_failures_in_a_row"] == 3
    assert status["counters"]["commit_failures"] == 3
