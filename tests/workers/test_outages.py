"""Whose fault a failure is, what is down and since when, and the model's batch size under memory
pressure: pure logic, with the clocks injected."""
from __future__ import annotations

import asyncio

import pytest
import torch

from topics import events as ev
from workers import outages as outages_module
from workers.batch_limit import BatchLimit
from workers.failures import DEVICE, MEMORY, STORAGE, DeviceLost, RecordFault, SystemFault, fault_of, model_fault
from workers.health import WorkerHealth
from workers.outages import Abandoned, Outages


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("err, kind", [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), DEVICE),
    (RuntimeError("CUDA error: device-side assert triggered"), DEVICE),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), MEMORY),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), MEMORY),
    (MemoryError(), MEMORY),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ev.INTERNAL_ERROR),
])
def test_what_a_model_failure_says_by_itself(err, kind):
    fault = model_fault(err)
    if kind == DEVICE:
        assert isinstance(fault, DeviceLost)
    elif kind == MEMORY:
        assert isinstance(fault, SystemFault) and fault.dependency == MEMORY
    else:  # only a known-good input can tell: provisionally the record's
        assert isinstance(fault, RecordFault) and fault.reason == kind and "mat1" in fault.detail


def test_any_other_failure_on_a_record_s_path_is_the_record_s_with_a_bounded_detail():
    fault = fault_of(KeyError("x" * 5000))
    assert isinstance(fault, RecordFault) and fault.reason == ev.INTERNAL_ERROR
    assert fault.detail.startswith("KeyError: ") and len(fault.detail) == ev.MAX_DETAIL_CHARS
    down = SystemFault(STORAGE, "refused")
    assert fault_of(down) is down


def test_an_outage_is_counted_once_timed_and_past_its_budget_fails_liveness():
    clock, wall = Clock(), Clock()
    outages = Outages(budget_s=60, clock=clock, wall=wall)
    health = WorkerHealth(clock=clock, outages=outages, joined=True, model="m")
    assert health.ready() and health.live()
    outages.down(SystemFault(STORAGE, "connection refused"))
    clock.now += 10
    outages.down(SystemFault(STORAGE, "still refused"))  # the same outage, a newer detail
    status = health.status()
    assert status["paused"] == {STORAGE: {"since": wall.now, "seconds": 10.0, "detail": "still refused"}}
    assert status["outages"] == {STORAGE: 1} and status["paused_s"] == {STORAGE: 10.0}
    assert not health.ready() and health.live()  # paused: traffic goes elsewhere, no restart yet
    clock.now += 50
    assert not health.live()  # past the budget: restart it
    outages.up(STORAGE)
    assert health.ready() and health.live() and health.status()["paused"] == {}
    assert health.status()["paused_s"] == {STORAGE: 60.0}


def test_time_paused_does_not_count_as_a_stuck_batch():
    clock = Clock()
    outages = Outages(budget_s=600, clock=clock)
    health = WorkerHealth(clock=clock, outages=outages, joined=True, model="m", stall_s=300)
    health.batch_started(8)
    outages.down(SystemFault(STORAGE, "refused"))
    clock.now += 400  # within the budget, past stall_s
    assert health.live()
    outages.up(STORAGE)
    assert health.live()  # the batch's clock starts again when the outage ends
    clock.now += 300
    assert not health.live()  # stuck after the outage, for stall_s


def test_riding_an_outage_out_retries_with_backoff_until_the_dependency_answers(monkeypatch):
    waits = []

    async def no_wait(self, seconds):
        waits.append(seconds)
        self._check_abandoned()

    monkeypatch.setattr(Outages, "_wait", no_wait)
    outages, tries = Outages(), []

    async def attempt():
        tries.append(len(tries))
        if len(tries) < 6:
            raise SystemFault(STORAGE, f"try {len(tries)}")
        return "bytes"

    assert asyncio.run(outages.ride_out(attempt)) == "bytes"
    first, most = outages_module.RETRY_FIRST_S, outages_module.RETRY_MAX_S
    assert waits == [min(first * 2 ** n, most) for n in range(5)] and waits[-1] == most
    assert outages.count == {STORAGE: 1} and not outages.paused()


def test_a_lost_device_and_a_record_s_fault_are_not_ridden_out():
    outages = Outages()

    async def lost():
        raise DeviceLost("illegal memory access")

    async def not_found():
        raise RecordFault(ev.NOT_FOUND, "gone")

    with pytest.raises(DeviceLost):
        asyncio.run(outages.ride_out(lost))
    with pytest.raises(RecordFault):
        asyncio.run(outages.ride_out(not_found))
    assert not outages.count


def test_abandon_ends_a_wait_and_only_a_failing_step_checks_it():
    async def go():
        outages = Outages()
        outages.abandon()
        assert await outages.ride_out(lambda: asyncio.sleep(0, "fine")) == "fine"  # nothing failed: no effect

        async def down():
            raise SystemFault(STORAGE, "refused")

        with pytest.raises(Abandoned):
            await outages.ride_out(down)
        outages.carry_on()
        waiting = asyncio.ensure_future(outages.ride_out(down))
        while not outages.paused():
            await asyncio.sleep(0)
        outages.abandon()  # wakes the wait at once, whatever the backoff
        with pytest.raises(Abandoned):
            await asyncio.wait_for(waiting, 1.0)

    asyncio.run(go())


def test_the_batch_limit_halves_on_out_of_memory_and_grows_back_after_a_quiet_while():
    clock = Clock()
    limit = BatchLimit(16, regrow_s=5, regrow_max_s=40, clock=clock)
    assert (limit.shrink(16), limit.shrink(8), limit.size) == (8, 4, 4)
    limit.fitted(4)
    assert limit.size == 4  # not yet: the size just changed
    clock.now += 5
    limit.fitted(3)
    assert limit.size == 4  # a partial call proves nothing
    limit.fitted(4)
    assert limit.size == 8
    limit.fitted(8)  # the growth held: the wait is back to regrow_s
    clock.now += 5
    limit.fitted(8)
    assert limit.size == 16 and limit.out_of_memory == 2


def test_under_lasting_memory_pressure_failing_calls_grow_with_the_log_of_the_time():
    """A device where only 2 images fit, one call a second for an hour: the failing calls."""
    clock = Clock()
    limit = BatchLimit(16, clock=clock)
    for _ in range(3600):
        while limit.size > 2:
            limit.shrink(limit.size)
        limit.fitted(limit.size)
        clock.now += 1
    # 3 to settle, then one failed growth per doubling wait: 5, 10, ... up to 600 s, then every 10 min
    assert limit.out_of_memory <= 3 + 7 + 6 and limit.size <= 4
