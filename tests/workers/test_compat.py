"""workers/compat.py: every internal check passes on the installed packages and fails when its internal
is missing or reshaped. The upstream classes are broken with monkeypatch; the live checks use fakes."""
from __future__ import annotations

import asyncio
import inspect
import tomllib
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import aiokafka
import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher
from packaging.requirements import Requirement

from workers import compat

# -- the checks against the installed classes ----------------------------------------------------------


def test_installed_packages_have_every_internal():
    assert compat.problems() == []
    compat.require_compatible()


def _defining(cls: type, attr: str) -> list[type]:
    return [klass for klass in cls.__mro__ if attr in klass.__dict__]


def _remove(monkeypatch, internal: compat.Internal) -> None:
    owner = compat._resolve(internal.owner)
    if internal.kind == compat.ATTRIBUTE:  # no __init__ sets it any more
        def __init__(self, *args, **kwargs):
            pass
        for klass in owner.__mro__:
            if "__init__" in klass.__dict__ and f"self.{internal.attr}" in compat._source(klass.__dict__["__init__"]):
                monkeypatch.setattr(klass, "__init__", __init__)
    else:
        for klass in _defining(owner, internal.attr):
            monkeypatch.delattr(klass, internal.attr)


def _flip_kind(monkeypatch, internal: compat.Internal) -> None:
    """A coroutine function becomes a plain one and the other way round, with the same signature."""
    owner = compat._resolve(internal.owner)
    original = getattr(owner, internal.attr)
    if inspect.iscoroutinefunction(original):
        def stub(*args, **kwargs):
            pass
    else:
        async def stub(*args, **kwargs):
            pass
    stub.__signature__ = inspect.signature(original)
    monkeypatch.setattr(owner, internal.attr, stub)


def _change_params(monkeypatch, internal: compat.Internal) -> None:
    """Same kind, but a parameter the worker does not pass (a new required one, or a rename)."""
    owner = compat._resolve(internal.owner)
    if internal.kind == compat.COROUTINE:
        async def stub(self, unexpected):
            pass
    else:
        def stub(self, unexpected):
            pass
    monkeypatch.setattr(owner, internal.attr, stub)


def _stop_using(monkeypatch, place: str) -> None:
    """The upstream code through which the worker's use takes effect no longer mentions the internal."""
    target = compat._resolve(place)
    if inspect.isclass(target):  # swapped in its module for a subclass without source
        monkeypatch.setattr(inspect.getmodule(target), target.__name__, type(target.__name__, (target,), {}))
        return
    if inspect.iscoroutinefunction(target):
        async def stub(*args, **kwargs):
            pass
    else:
        def stub(*args, **kwargs):
            pass
    stub.__signature__ = inspect.signature(target)  # so that only the use is gone, not the shape
    monkeypatch.setattr(compat._resolve(place.rpartition(".")[0]), place.rpartition(".")[2], stub)


def _breaking_cases():
    for internal in compat.INTERNALS:
        yield pytest.param(internal, _remove, id=f"{internal.owner}.{internal.attr}-gone")
        if internal.kind != compat.ATTRIBUTE:
            yield pytest.param(internal, _flip_kind, id=f"{internal.owner}.{internal.attr}-kind")
            yield pytest.param(internal, _change_params, id=f"{internal.owner}.{internal.attr}-params")
        for place, _ in internal.relied_on:
            yield pytest.param(internal, lambda mp, _, place=place: _stop_using(mp, place),
                               id=f"{internal.owner}.{internal.attr}-unused-by-{place}")


@pytest.mark.parametrize("internal, breaks", list(_breaking_cases()))
def test_each_check_reports_its_internal(monkeypatch, internal, breaks):
    breaks(monkeypatch, internal)
    found = compat.problems((internal,))
    assert found, "the check did not notice"
    assert all(internal.name in line for line in found), found
    assert set(found) <= set(compat.problems())


def test_the_check_list_covers_what_the_worker_uses():
    names = {(i.owner.partition(":")[2], i.attr) for i in compat.INTERNALS}
    assert {("Consumer", "perform_seek"), ("Consumer", "_committed_offset"),
            ("Consumer", "seek_wait"), ("Consumer", "_thread"), ("AIOKafkaConsumerThread", "_ensure_consumer"),
            ("AIOKafkaConsumerThread", "call_thread"), ("AIOKafkaConsumer", "_fetcher"),
            ("Fetcher", "_fetch_max_wait_ms")} <= names
    assert all(i.use and i.kind in (compat.COROUTINE, compat.METHOD, compat.ATTRIBUTE) for i in compat.INTERNALS)


def test_a_missing_module_is_a_problem_not_a_crash():
    gone = compat.Internal("faust.no_such_module:Consumer", "_commit_offsets", compat.COROUTINE, use="-")
    assert compat.problems((gone,)) == [f"{gone.name}: faust.no_such_module:Consumer is gone "
                                        "(No module named 'faust.no_such_module')"]


# -- the checks on the live consumer ----------------------------------------------------------------


class StartedClient(aiokafka.AIOKafkaConsumer):
    """An aiokafka consumer as after start(), without a broker."""

    def __init__(self, fetcher):
        self._fetcher = fetcher


class FakeFetcher(Fetcher):
    def __init__(self):
        self._fetch_max_wait_ms = 1500


def _live_consumer():
    async def perform_seek():
        pass

    async def call_thread(fun, *args, **kwargs):
        return await fun(*args, **kwargs)

    client = StartedClient(FakeFetcher())
    return SimpleNamespace(_committed_offset={}, perform_seek=perform_seek,
                           _thread=SimpleNamespace(call_thread=call_thread, _ensure_consumer=lambda: client))


def _client(consumer):
    return consumer._thread._ensure_consumer()


# One way to break each live check; a new check without one fails test_every_live_check_has_a_breaker.
LIVE_BREAKERS = {
    "Consumer._committed_offset (faust)": lambda c: setattr(c, "_committed_offset", []),
    "Consumer.perform_seek (faust)": lambda c: setattr(c, "perform_seek", lambda: None),
    "Consumer._thread.call_thread (faust)": lambda c: delattr(c._thread, "call_thread"),
    "AIOKafkaConsumerThread._ensure_consumer() (faust)": lambda c: setattr(c._thread, "_ensure_consumer", object),
    "AIOKafkaConsumer._fetcher (aiokafka)": lambda c: setattr(_client(c), "_fetcher", None),
    "Fetcher._fetch_max_wait_ms (aiokafka)": lambda c: setattr(_client(c)._fetcher, "_fetch_max_wait_ms", True),
}


def test_every_live_check_has_a_breaker():
    assert {check.name for check in compat.LIVE} == set(LIVE_BREAKERS)


def test_live_checks_pass_on_a_consumer_with_every_internal():
    assert compat.check_live_consumer(_live_consumer()) == []


@pytest.mark.parametrize("check", compat.LIVE, ids=lambda check: check.name)
def test_each_live_check_reports_its_internal(check):
    consumer = _live_consumer()
    LIVE_BREAKERS[check.name](consumer)
    found = compat.check_live_consumer(consumer)
    assert found and found[0].startswith(check.name), found
    # what lies behind a broken link is unavailable too; nothing before it is reported
    assert all(not line.startswith(other.name) for other in compat.LIVE[:compat.LIVE.index(check)]
               for line in found), found


def test_live_checks_pass_on_faust_s_own_consumer(monkeypatch):
    app = faust.App("compat-test", broker="kafka://127.0.0.1:1", store="memory://")
    consumer = app.consumer  # built without connecting
    # Before start the thread has no aiokafka client: the checks say so, rather than crash.
    assert [line.split(" is ")[0] for line in compat.check_live_consumer(consumer)] == [
        "AIOKafkaConsumerThread._ensure_consumer() (faust)", "AIOKafkaConsumer._fetcher (aiokafka)",
        "Fetcher._fetch_max_wait_ms (aiokafka)"]
    monkeypatch.setattr(consumer._thread, "_consumer", StartedClient(FakeFetcher()))
    assert compat.check_live_consumer(consumer) == []


# -- the refusal ------------------------------------------------------------------------------------


def test_refusal_names_the_versions_the_problems_and_the_pins(monkeypatch):
    for klass in _defining(faust.transport.drivers.aiokafka.Consumer, "seek_wait"):
        monkeypatch.delattr(klass, "seek_wait")
    with pytest.raises(compat.IncompatibleDependency) as raised:
        compat.require_compatible()
    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError) and "\n" not in message
    assert f"faust-streaming {metadata.version('faust-streaming')} / aiokafka {metadata.version('aiokafka')}" in message
    assert "Consumer.seek_wait (faust) is gone" in message
    assert "tested with faust-streaming 0.15.3 and aiokafka 0.14.0" in message
    assert all(pin in message for pin in compat.PINS)


def test_refusal_includes_the_live_consumer():
    consumer = _live_consumer()
    consumer._committed_offset = None
    with pytest.raises(compat.IncompatibleDependency, match=r"Consumer\._committed_offset \(faust\) is not a mutable"):
        compat.require_live(consumer)
    compat.require_live(_live_consumer())


def test_pyproject_pins_what_was_tested():
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    pins = {Requirement(pin).name: Requirement(pin) for pin in compat.PINS}
    assert set(pins) == set(compat.TESTED)
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        if requirement.name in pins:
            assert str(requirement) == str(pins.pop(requirement.name))
            assert requirement.specifier.contains(compat.TESTED[requirement.name])
            assert requirement.specifier.contains(metadata.version(requirement.name))
    assert not pins, f"not in pyproject: {pins}"


# -- the uses ---------------------------------------------------------------------------------------


def _tp(partition: int, topic: str = "images.in"):
    return faust.types.TP(topic, partition)


def test_commit_uses_the_client_in_the_consumer_thread_records_it_and_raises_what_it_raised():
    from aiokafka.errors import CommitFailedError
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    calls, threaded = [], []

    def consumer_whose_commit(error: Exception | None):
        async def commit(offsets):
            calls.append(offsets)
            if error is not None:
                raise error

        async def call_thread(fun, *args):
            threaded.append(fun)
            return await fun(*args)

        thread = SimpleNamespace(_ensure_consumer=lambda: SimpleNamespace(commit=commit), call_thread=call_thread)
        return SimpleNamespace(_thread=thread, _committed_offset={})

    consumer = consumer_whose_commit(None)
    asyncio.run(compat.commit(consumer, {_tp(0): 7}))
    assert calls == [{TopicPartition("images.in", 0): OffsetAndMetadata(7, "")}] and len(threaded) == 1
    assert consumer._committed_offset == {_tp(0): 7}
    failing = consumer_whose_commit(CommitFailedError("rebalanced"))
    with pytest.raises(CommitFailedError):
        asyncio.run(compat.commit(failing, {_tp(1): 3}))
    assert failing._committed_offset == {}  # not recorded as committed
    asyncio.run(compat.commit(failing, {}))  # nothing to commit: nothing asked
    assert len(calls) == 2


def test_track_seeks_resets_from_committed_offsets_and_seeks_the_others_to_their_start():
    seeks, resets, originals = [], [], []

    async def perform_seek():
        originals.append(True)

    async def earliest_offsets(*tps):
        return {tp: 2 for tp in tps}

    async def seek_wait(partitions):
        seeks.append(partitions)

    consumer = SimpleNamespace(perform_seek=perform_seek, earliest_offsets=earliest_offsets, seek_wait=seek_wait,
                               assignment=lambda: {_tp(0), _tp(1), _tp(0, "stream-history-changelog")},
                               _committed_offset={_tp(0): 5, _tp(1): None})
    compat.track_seeks(consumer, "images.in", resets.append)
    compat.track_seeks(consumer, "images.in", resets.append)  # once per consumer
    asyncio.run(consumer.perform_seek())
    assert originals == [True] and seeks == [{_tp(1): 2}] and resets == [{0: 5, 1: 2}]


def test_fetch_positions_asks_in_the_consumer_thread_and_skips_what_fails_or_hangs():
    in_thread = []

    async def position(tp):
        if tp.partition == 1:
            raise RuntimeError("revoked")
        if tp.partition == 2:
            await asyncio.sleep(10)
        return 40 + tp.partition

    async def call_thread(fun, *args, **kwargs):
        in_thread.append(fun)
        return await fun(*args, **kwargs)

    client = SimpleNamespace(assignment=lambda: {_tp(0), _tp(1), _tp(2), _tp(3, "other")}, position=position)
    consumer = SimpleNamespace(_thread=SimpleNamespace(call_thread=call_thread, _ensure_consumer=lambda: client))
    assert asyncio.run(compat.fetch_positions(consumer, "images.in", timeout_s=0.05)) == {0: 40}
    assert len(in_thread) == 1


def test_set_fetch_wait_sets_the_started_client_s_long_poll_wait():
    consumer = _live_consumer()
    compat.set_fetch_wait(consumer, 100)
    assert _client(consumer)._fetcher._fetch_max_wait_ms == 100
    assert compat.check_live_consumer(consumer) == []
