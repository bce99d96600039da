"""The worker's metrics for Prometheus, served at /metrics on its web port.

Built from what the worker already counts (`WorkerHealth.status()`, the snapshot /status shows, and the
consumer lag `Telemetry.lag` reads), not from a second set of counters: `families(snapshot)` turns one
snapshot into metric families, so what a scrape sees is what /status says at that moment.
prometheus_client writes the exposition (the text format, or OpenMetrics when the scraper asks for
it) and adds the process's own figures (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
open file descriptors). No label carries a stream id: streams are unbounded, and one series per stream
would grow Prometheus without end (the live view, `cased view`, shows streams).

Metrics (counters end in `_total`, times are seconds):

| metric | kind | labels | |
|---|---|---|---|
| `cased_events_in_total` | counter | | images.in records taken |
| `cased_labels_out_total` | counter | | labels.out records delivered |
| `cased_dead_letters_total` | counter | `reason` | images.dlq records delivered |
| `cased_batches_total` | counter | | batches taken |
| `cased_read_back_total` | counter | | records read back that Faust skipped |
| `cased_commit_failures_total` | counter | | batches whose offsets could not be committed |
| `cased_stage_cpu_seconds_total` | counter | `stage` | CPU time per data-path stage |
| `cased_batch_size` | histogram | | events per batch |
| `cased_batches_in_flight` | gauge | | batches taken and not yet answered |
| `cased_assigned_partitions` | gauge | | images.in partitions this worker owns |
| `cased_consumer_lag` | gauge | `partition` | images.in records past the committed offset |
| `cased_ready`, `cased_live`, `cased_halted` | gauge | | the probes' answers, 1 or 0 |
| `cased_worker_info` | gauge | `model`, `database`, `device`, ... | 1, what the worker serves |
| `cased_paused` | gauge | `dependency` | 1 while paused on a dependency's outage |
| `cased_outages_total` | counter | `dependency` | outages of each dependency |
| `cased_paused_seconds_total` | counter | `dependency` | time spent paused on each |
| `cased_model_batch_size` | gauge | | images per model batch now |
| `cased_reused_total` | counter | | labels the change gate answered from an earlier frame |
| `cased_out_of_memory_total` | counter | | model calls that ran out of memory (each halves the batch) |
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from workers.telemetry import BATCH_SIZES

PREFIX = "cased"
# WorkerHealth counters -> (metric, help)
COUNTERS = {
    "events_in": ("events_in", "images.in records taken"),
    "labels_out": ("labels_out", "labels.out records delivered"),
    "batches": ("batches", "batches taken"),
    "read_back": ("read_back", "images.in records read back after Faust skipped them"),
    "commit_failures": ("commit_failures", "batches whose images.in offsets could not be committed"),
    "reused": ("reused", "labels answered by the change gate from an earlier frame of their stream (no model call)"),
}


def families(snapshot: Mapping[str, Any]) -> list[Metric]:
    """Metric families for one worker snapshot.

    Args:
        snapshot: `WorkerHealth.status()` (counters, dead_letters, cpu_s_by_stage, partitions, ready, live,
            halted, model, database, serving; in_flight, batch_sizes, paused, outages, paused_s and
            model_batch_size when the worker reports them) plus "lag": {partition: records}. Missing
            keys give no metric, or a zero counter for the counters every worker has.

    Examples:
        >>> [m.name for m in families({"counters": {"events_in": 3}})][:2]
        ['cased_events_in', 'cased_labels_out']
    """
    out: list[Metric] = []
    counters = snapshot.get("counters") or {}
    for key, (name, help) in COUNTERS.items():
        out.append(_counter(name, help, value=counters.get(key, 0)))
    out.append(_counter("dead_letters", "images.dlq records delivered, by reason", ["reason"],
                        snapshot.get("dead_letters") or {}))
    out.append(_counter("stage_cpu_seconds", "CPU seconds spent in each data-path stage (thread CPU time)", ["stage"],
                        snapshot.get("cpu_s_by_stage") or {}))
    sizes = snapshot.get("batch_sizes")
    if sizes is not None:
        out.append(_histogram("batch_size", "events per batch taken", {int(k): v for k, v in sizes.items()},
                              BATCH_SIZES))
    if snapshot.get("in_flight") is not None:
        out.append(_gauge("batches_in_flight", "batches taken and not yet answered", value=snapshot["in_flight"]))
    out.append(_gauge("assigned_partitions", "images.in partitions assigned to this worker",
                      value=len(snapshot.get("partitions") or ())))
    out.append(_gauge("consumer_lag", "images.in records past the group's committed offset, per partition",
                      ["partition"], snapshot.get("lag") or {}))
    for probe, help in (("ready", "1 once the model and database are loaded and the consumer group joined"),
                        ("live", "0 when stuck or halted (the liveness probe fails)")):
        out.append(_gauge(probe, help, value=int(bool(snapshot.get(probe)))))
    out.append(_gauge("halted", "1 once the worker stopped taking events (commits kept failing)",
                      value=int(snapshot.get("halted") is not None)))
    info = {"model": snapshot.get("model"), "database": snapshot.get("database"),
            **{k: v for k, v in (snapshot.get("serving") or {}).items() if isinstance(v, str)}}
    info = {k: v for k, v in info.items() if v is not None}
    if info:
        family = GaugeMetricFamily(f"{PREFIX}_worker_info", "what this worker serves (always 1)", labels=list(info))
        family.add_metric(list(info.values()), 1)
        out.append(family)
    out.extend(_dependencies(snapshot))
    if snapshot.get("model_batch_size") is not None:
        out.append(_gauge("model_batch_size", "images per model batch now", value=snapshot["model_batch_size"]))
    if snapshot.get("out_of_memory") is not None:
        out.append(_counter("out_of_memory", "model calls that ran out of memory (each halves the batch)",
                            value=snapshot["out_of_memory"]))
    return out


def _dependencies(snapshot: Mapping[str, Any]) -> Iterable[Metric]:
    """Pausing on outages: each dependency the worker has a figure for, paused or not, so a series
    goes back to 0 rather than vanishing when the dependency returns."""
    paused, outages, paused_s = (snapshot.get(key) for key in ("paused", "outages", "paused_s"))
    if paused is None and outages is None and paused_s is None:
        return []
    paused, outages, paused_s = paused or {}, outages or {}, paused_s or {}
    names = sorted({*paused, *outages, *paused_s})
    return [_gauge("paused", "1 while the worker is paused on this dependency's outage", ["dependency"],
                   {name: int(name in paused) for name in names}),
            _counter("outages", "outages of each dependency the worker paused on", ["dependency"],
                     {name: outages.get(name, 0) for name in names}),
            _counter("paused_seconds", "seconds the worker spent paused on each dependency", ["dependency"],
                     {name: paused_s.get(name, 0.0) for name in names})]


def _counter(name: str, help: str, labels: list[str] | None = None, values: Mapping | None = None,
             value: float | None = None) -> CounterMetricFamily:
    """`name` gets `_total` from prometheus_client (and `_created` in OpenMetrics)."""
    family = CounterMetricFamily(f"{PREFIX}_{name}", help, labels=labels)
    _fill(family, values, value)
    return family


def _gauge(name: str, help: str, labels: list[str] | None = None, values: Mapping | None = None,
           value: float | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", help, labels=labels)
    _fill(family, values, value)
    return family


def _fill(family: Metric, values: Mapping | None, value: float | None) -> None:
    if values is None:
        family.add_metric([], value or 0)
    else:
        for key, number in sorted(values.items(), key=lambda item: str(item[0])):
            family.add_metric([str(key)], number)


def _histogram(name: str, help: str, counts: Mapping[int, int], bounds: Iterable[float]) -> HistogramMetricFamily:
    """A histogram from exact observation counts ({observed value: times}), cumulative per bound."""
    buckets = [(str(float(bound)), sum(n for v, n in counts.items() if v <= bound)) for bound in bounds]
    buckets.append(("+Inf", sum(counts.values())))
    return HistogramMetricFamily(f"{PREFIX}_{name}", help, buckets=buckets,
                                 sum_value=sum(v * n for v, n in counts.items()))


class _Snapshot:
    """A prometheus_client collector reading one snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return families(self.snapshot())


def registry(snapshot: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A registry of the worker's metrics (read from `snapshot()` at each scrape) and the process's."""
    found = CollectorRegistry(auto_describe=False)
    found.register(_Snapshot(snapshot))
    ProcessCollector(registry=found)
    GCCollector(registry=found)
    return found


def exposition(metrics: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """(body, content type) of a scrape: OpenMetrics when `accept` (the Accept header) asks for it,
    else Prometheus' text format."""
    encode, content_type = choose_encoder(accept or "")
    return encode(metrics), content_type


def page(health, telemetry):
    """The Faust page for /metrics: `health`'s status and `telemetry`'s consumer lag at each scrape."""
    metrics = registry(lambda: {**health.status(), "lag": telemetry.lag()})

    async def view(web, request):
        body, content_type = exposition(metrics, request.headers.get("Accept"))
        return web.bytes(body, headers={"Content-Type": content_type})

    return view
