"""The Faust and aiokafka internals the worker relies on, and the checks that they are still there.

The worker's offset guarantees reach past both packages' public APIs (workers/app.py): it commits
with the aiokafka client inside Faust's consumer thread, wraps Faust's seek to committed offsets,
reads Faust's committed offsets, and shortens the long-poll wait on aiokafka's fetcher. A release that renames or reshapes one
of these fails silently (a renamed `_fetch_max_wait_ms` just stops applying), so each is listed here
as data and checked: against the installed classes before the worker connects (`problems`,
`require_compatible`), and on the live consumer once it has partitions (`require_live`). The
worker refuses to start rather than run without a guarantee. Every access to them is here too, next
to its check (`commit`, `track_seeks`, `fetch_positions`, `set_fetch_wait`). pyproject pins both
packages to the releases these were verified on; a new release needs these checks and the crash and
graceful-restart tests to pass before its pin moves.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping

# What the crash and graceful-restart tests passed on, and the pins in pyproject.toml (a test keeps
# them equal).
TESTED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
PINS = ("faust-streaming>=0.15.3,<0.15.4", "aiokafka>=0.14.0,<0.14.1")
# Named in the refusal; mode-streaming (installed by Faust) provides call_thread.
PACKAGES = ("faust-streaming", "aiokafka", "mode-streaming")

COROUTINE = "coroutine function"
METHOD = "plain method"
ATTRIBUTE = "attribute set in __init__"


@dataclass(frozen=True)
class Internal:
    """An internal the worker uses, or a public method it overrides or patches."""

    owner: str  # "module:Class", imported at check time
    attr: str
    kind: str  # COROUTINE, METHOD or ATTRIBUTE
    use: str  # what the worker uses it for
    params: tuple[str, ...] = ()  # leading parameters after self, as the worker passes them; others optional
    # (upstream "module:Qualname", regex its source must match): the upstream code through which the
    # worker's write, override or patch takes effect. Without it the shape would be right and the
    # guarantee still gone.
    relied_on: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.owner.partition(':')[2]}.{self.attr} ({self.owner.split('.')[0]})"


_CONSUMER = "faust.transport.drivers.aiokafka:Consumer"
_THREAD = "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread"
_PERFORM_SEEK = r"consumer\.perform_seek\(\)"
_UPDATES_COMMITTED = r"self\._committed_offset\.update\("

INTERNALS: tuple[Internal, ...] = (
    Internal(_CONSUMER, "perform_seek", COROUTINE,
             use="wrapped per instance: restarts the frontier where Faust seeks after each assignment",
             relied_on=(("faust.tables.recovery:Recovery._resume_streams", _PERFORM_SEEK),
                        ("faust.tables.recovery:Recovery.on_recovery_completed", _PERFORM_SEEK))),
    Internal(_CONSUMER, "_committed_offset", ATTRIBUTE,
             use="each partition's committed offset: read after perform_seek and by the lag gauge, "
                 "updated by `commit`",
             relied_on=(("faust.transport.consumer:Consumer.perform_seek", _UPDATES_COMMITTED),)),
    Internal(_CONSUMER, "seek_wait", COROUTINE, params=("partitions",),
             use="seeks partitions with no committed offset to their earliest, in the consumer's thread"),
    Internal(_CONSUMER, "_thread", ATTRIBUTE, use="the consumer's thread, where its aiokafka client runs"),
    Internal(_THREAD, "_ensure_consumer", METHOD,
             use="the thread's aiokafka client: commits, fetch positions, and the fetcher's long-poll wait"),
    Internal(_THREAD, "call_thread", COROUTINE, params=("fun",),
             use="runs commits and the fetch-position probe in the consumer's thread"),
    Internal("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetcher", ATTRIBUTE,
             use="the client's fetcher, whose long-poll wait the worker sets",
             relied_on=(("aiokafka.consumer.consumer:AIOKafkaConsumer.start", r"self\._fetcher = Fetcher\("),)),
    Internal("faust.transport.drivers.aiokafka:Producer", "_ensure_producer", METHOD,
             use="the app's aiokafka producer, to which the worker hands a batch's records one batch per "
                 "partition (`producer_client`)"),
    Internal("aiokafka.consumer.fetcher:Fetcher", "_fetch_max_wait_ms", ATTRIBUTE,
             use="set to CASED fetch_wait_ms on assignment: Faust hardcodes 1500 ms",
             # read (not assigned) where the fetch requests are built
             relied_on=(("aiokafka.consumer.fetcher:Fetcher", r"self\._fetch_max_wait_ms\b(?!\s*=[^=])"),)),
)


@dataclass(frozen=True)
class Live:
    """What can only be checked on the running Faust consumer (after it joined the group)."""

    name: str
    get: Callable[[Any], Any]  # from the Faust consumer
    ok: Callable[[Any], bool]
    expected: str


def _client(consumer):
    return consumer._thread._ensure_consumer()


def _is_aiokafka_consumer(value) -> bool:
    import aiokafka
    return isinstance(value, aiokafka.AIOKafkaConsumer)


def _is_fetcher(value) -> bool:
    from aiokafka.consumer.fetcher import Fetcher
    return isinstance(value, Fetcher)


LIVE: tuple[Live, ...] = (
    Live("Consumer._committed_offset (faust)", lambda c: c._committed_offset,
         lambda v: isinstance(v, MutableMapping), "a mutable mapping"),
    Live("Consumer.perform_seek (faust)", lambda c: c.perform_seek, inspect.iscoroutinefunction,
         "a coroutine function"),
    Live("Consumer._thread.call_thread (faust)", lambda c: c._thread.call_thread, inspect.iscoroutinefunction,
         "a coroutine function"),
    Live("AIOKafkaConsumerThread._ensure_consumer() (faust)", _client, _is_aiokafka_consumer,
         "an aiokafka.AIOKafkaConsumer"),
    Live("AIOKafkaConsumer._fetcher (aiokafka)", lambda c: _client(c)._fetcher, _is_fetcher, "an aiokafka Fetcher"),
    # bool is an int too, and never a wait in milliseconds
    Live("Fetcher._fetch_max_wait_ms (aiokafka)", lambda c: _client(c)._fetcher._fetch_max_wait_ms,
         lambda v: type(v) is int, "an int"),
)


class IncompatibleDependency(RuntimeError):
    """The installed Faust or aiokafka lacks an internal the worker relies on."""


def _resolve(path: str) -> Any:
    module, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # built in, or no source shipped: nothing to match
        return ""


def _set_in_init(cls: type, attr: str) -> bool:
    assigns = re.compile(rf"self\.{re.escape(attr)}\s*(:[^=\n]*)?=(?!=)")
    return any(assigns.search(_source(klass.__dict__["__init__"])) for klass in cls.__mro__
               if "__init__" in klass.__dict__)


def _signature_problem(function, params: tuple[str, ...]) -> str | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return "has no readable signature"
    rest = list(signature.parameters.values())[1:]  # after self
    leading = [p.name for p in rest[:len(params)]
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in rest[len(params):]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if leading != list(params) or required:
        return f"no longer takes ({', '.join(params)}): its signature is {signature}"
    return None


def _check(internal: Internal) -> list[str]:
    name = internal.name
    try:
        owner = _resolve(internal.owner)
    except (ImportError, AttributeError) as err:
        return [f"{name}: {internal.owner} is gone ({err})"]
    if internal.kind == ATTRIBUTE:
        if not _set_in_init(owner, internal.attr):
            return [f"{name} is gone (no __init__ of {owner.__name__} sets it)"]
    else:
        function = getattr(owner, internal.attr, None)
        if function is None:
            return [f"{name} is gone"]
        if inspect.iscoroutinefunction(function) != (internal.kind == COROUTINE) or not callable(function):
            return [f"{name} is no longer a {internal.kind}"]
        wrong = _signature_problem(function, internal.params)
        if wrong:
            return [f"{name} {wrong}"]
    found = []
    for place, pattern in internal.relied_on:
        try:
            matched = re.search(pattern, _source(_resolve(place)))
        except (ImportError, AttributeError):
            found.append(f"{place} is gone, so the worker's use of {name} may no longer take effect")
            continue
        if not matched:
            found.append(f"{place} no longer uses {name}, so the worker's use of it would not take effect")
    return found


def problems(internals: tuple[Internal, ...] = INTERNALS) -> list[str]:
    """One line per internal that the installed packages lack or changed; empty when all are there."""
    return [line for internal in internals for line in _check(internal)]


def check_live_consumer(consumer, checks: tuple[Live, ...] = LIVE) -> list[str]:
    """One line per internal missing or of another type on Faust's running consumer (`app.consumer`),
    once its aiokafka client started (e.g. in on_partitions_assigned)."""
    found = []
    for check in checks:
        try:
            value = check.get(consumer)
        except Exception as err:  # a missing link, or a client not started
            found.append(f"{check.name} is unavailable ({type(err).__name__}: {err})")
            continue
        if not check.ok(value):
            found.append(f"{check.name} is not {check.expected} (got {type(value).__name__})")
    return found


def installed() -> str:
    """e.g. "faust-streaming 0.15.3 / aiokafka 0.14.0 / mode-streaming 0.7.1"."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "(not installed)"
    return " / ".join(f"{package} {version(package)}" for package in PACKAGES)


def require_compatible() -> None:
    """Raise IncompatibleDependency naming the versions and every problem of the installed classes
    (at start, before anything connects)."""
    _refuse(problems())


def require_live(consumer) -> None:
    """Raise IncompatibleDependency for what only Faust's started consumer shows (at each assignment:
    the class checks do not change while the process runs, so they are not repeated there)."""
    _refuse(check_live_consumer(consumer))


def _refuse(found: list[str]) -> None:
    if found:
        tested = " and ".join(f"{package} {version}" for package, version in TESTED.items())
        raise IncompatibleDependency(
            f"{installed()} lack what the worker relies on: {'; '.join(found)}; "
            f"tested with {tested} (pyproject pins {' and '.join(PINS)})")


# -- the uses: every access to the internals above, so that they sit next to their checks -------------


async def commit(consumer, offsets: Mapping) -> None:
    """Commit `offsets` ({TP: next offset}) with the aiokafka client's public commit, in the consumer's
    thread, and record them where Faust keeps committed offsets. Not through Faust's `_commit_offsets`:
    that one crashes the whole app on any commit error but a rebalance and reports nothing, where the
    worker wants to retry and decide itself. Raises whatever the commit raised (e.g. CommitFailedError
    after a rebalance, IllegalStateError for partitions no longer assigned)."""
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    if not offsets:
        return
    client = consumer._thread._ensure_consumer()
    await consumer._thread.call_thread(client.commit, {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(o, "")
                                                       for tp, o in offsets.items()})
    consumer._committed_offset.update(offsets)


def producer_client(producer):
    """The aiokafka producer inside Faust's (`app.producer`, started)."""
    import aiokafka

    client = producer._ensure_producer()
    if not isinstance(client, aiokafka.AIOKafkaProducer):
        _refuse([f"Producer._ensure_producer() (faust) is not an aiokafka.AIOKafkaProducer "
                 f"(got {type(client).__name__})"])
    return client


def track_seeks(consumer, topic: str, reset: Callable[[dict[int, int]], Any]) -> None:
    """After each of Faust's seeks to committed offsets, call `reset` with {partition: next offset} for
    the assigned partitions of `topic`: their committed offsets, or, for a partition without one, its
    earliest offset, sought there first.

    Faust seeks back to committed offsets (`perform_seek`) on every assignment, with the flow stopped;
    a partition without one kept its advanced position, so it is sought to its start here, in the
    same step (seeking later, from the event loop, raced records already in flight). Idempotent.
    """
    if getattr(consumer, "_cased_tracks_seeks", False):
        return
    original = consumer.perform_seek

    async def perform_seek() -> None:
        await original()
        mine = [tp for tp in consumer.assignment() if tp.topic == topic]
        start = {tp: consumer._committed_offset.get(tp) for tp in mine}
        todo = [tp for tp, offset in start.items() if offset is None]
        if todo:
            earliest = dict(await consumer.earliest_offsets(*todo))
            # seek_wait runs in the consumer's own thread, as Faust's recovery does.
            await consumer.seek_wait(earliest)
            start.update(earliest)
        reset({tp.partition: offset for tp, offset in start.items()})

    consumer.perform_seek = perform_seek
    consumer._cased_tracks_seeks = True


async def fetch_positions(consumer, topic: str, timeout_s: float = 5) -> dict[int, int]:
    """The next offset the Faust consumer's aiokafka client will fetch, per assigned partition of
    `topic`. Asked in the consumer's own thread, where aiokafka runs, and timed out there: a position
    that waits on an offset reset would otherwise hold one of that thread's two method-queue workers."""
    client = consumer._thread._ensure_consumer()
    mine = [tp for tp in client.assignment() if tp.topic == topic]

    async def positions() -> list:
        return await asyncio.gather(*(asyncio.wait_for(client.position(tp), timeout_s) for tp in mine),
                                    return_exceptions=True)  # e.g. a partition revoked meanwhile

    return {tp.partition: p for tp, p in zip(mine, await consumer._thread.call_thread(positions))
            if isinstance(p, int)}


def set_fetch_wait(consumer, wait_ms: int) -> None:
    """Set the started aiokafka client's long-poll wait (Faust creates it with 1500 ms and no setting)."""
    consumer._thread._ensure_consumer()._fetcher._fetch_max_wait_ms = int(wait_ms)
