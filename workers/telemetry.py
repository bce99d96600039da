"""OpenTelemetry for the worker and the producer client: spans per event and stage, and metrics.

Off unless the standard OTEL_* variables ask for an exporter (`exported_signals`); off means no-op
providers, so every hook below costs a few attribute look-ups. The trace context crosses Kafka as
W3C `traceparent` record headers (through the propagators OTEL_PROPAGATORS names): `publish`
injects it, the worker takes it as each event span's parent and passes its own on in the output
record. With telemetry off, the worker's output carries the producer's context unchanged.

Hooks never raise: a failure in telemetry is logged and processing goes on.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, NoOpMeterProvider, Observation
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider

from topics import events as ev
from workers.offsets import Consumed

log = logging.getLogger("cased.telemetry")

SCOPE = "cased.worker"  # instrumentation scope (tracer and meter name)
# Histogram buckets: the SDK's default ones are meant for milliseconds.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
Headers = Sequence[tuple[str, bytes]]  # Kafka record headers, as kafka-python and Faust take them


def _guarded(fallback: Any = None) -> Callable:
    """Telemetry must never break processing: log what failed and return `fallback`."""
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def guarded(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception:
                log.exception("telemetry failed in %s; processing goes on", method.__name__)
                return fallback
        return guarded
    return wrap


class _KafkaHeaders(Getter, Setter):
    """Propagator access to Kafka headers: a name -> bytes mapping read, a (name, bytes) list written."""

    def get(self, carrier: Mapping[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        # never fails: a malformed value reaches the propagator, which ignores it
        return None if value is None else [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)]

    def keys(self, carrier: Mapping[str, bytes]) -> list[str]:
        return list(carrier)

    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode()))


KAFKA_HEADERS = _KafkaHeaders()


def exported_signals(environ: Mapping[str, str]) -> frozenset[str]:
    """Which of "traces" and "metrics" to export over OTLP, from the standard variables.

    OTEL_{TRACES,METRICS}_EXPORTER name the exporters (only `otlp` and `none` are installed); without
    them, a signal is exported when an OTLP endpoint is set for it (OTEL_EXPORTER_OTLP_ENDPOINT or
    OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT). Unlike the SDK's own default (otlp), nothing is
    exported when none of them is set: a worker without a collector should not retry against one.
    OTEL_SDK_DISABLED=true turns everything off.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return frozenset()
    signals = set()
    for signal in ("traces", "metrics"):
        chosen = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        names = {n.strip() for n in chosen.split(",") if n.strip()} if chosen else {"otlp"} if endpoint else set()
        if names - {"otlp", "none"}:
            log.warning("OTEL_%s_EXPORTER=%s: only otlp and none are supported here", signal.upper(), chosen)
        if "otlp" in names:
            signals.add(signal)
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                 "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):
        if signals and environ.get(name, "http/protobuf") != "http/protobuf":
            log.warning("%s=%s: only the http/protobuf exporter is installed; exporting with it", name,
                        environ[name])
    return frozenset(signals)


class Telemetry:
    """The worker's tracer and instruments. Without providers, everything is a no-op."""

    def __init__(self, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None):
        self._providers = [p for p in (tracer_provider, meter_provider) if p is not None]
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(SCOPE)
        meter = (meter_provider or NoOpMeterProvider()).get_meter(SCOPE)
        self.events_in = meter.create_counter("cased.events.in", "{event}", "images.in records taken")
        self.labels_out = meter.create_counter("cased.labels.out", "{event}", "labels.out records delivered")
        self.dead_letters = meter.create_counter("cased.dead_letters", "{event}",
                                                 "images.dlq records delivered, by reason")
        self.stage_duration = meter.create_histogram(
            "cased.stage.duration", "s", "time in one stage: per event (consume, fetch, decode, history, "
            "produce) or per batch (preprocess, encode, search, score)", explicit_bucket_boundaries_advisory=SECONDS)
        self.batch_size = meter.create_histogram("cased.batch.size", "{event}", "events per batch",
                                                 explicit_bucket_boundaries_advisory=BATCH_SIZES)
        self.in_flight = meter.create_up_down_counter("cased.events.in_flight", "{event}",
                                                      "events taken and not yet delivered")
        self._lag_source: tuple[Any, str] | None = None
        meter.create_observable_gauge("cased.consumer.lag", [self._observe_lag], "{message}",
                                      "records past the group's committed offset, per partition")
        self._outages: Callable[[], dict] | None = None
        meter.create_observable_gauge("cased.paused", [self._observe_paused], "1",
                                      "1 while a dependency (attribute dependency) fails for everyone and the worker waits")
        meter.create_observable_counter("cased.outages", [self._observe_outages], "{outage}",
                                        "outages of a dependency that paused the worker, per dependency")
        meter.create_observable_counter("cased.paused.time", [self._observe_paused_time], "s",
                                        "seconds the worker was paused, per dependency")

    @classmethod
    def from_env(cls, service_name: str = "cased-worker") -> "Telemetry":
        """OTLP/HTTP exporters configured by the standard OTEL_* variables, or no-op (see exported_signals).
        `service_name` applies when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one."""
        signals = exported_signals(os.environ)
        if not signals:
            return cls()
        # Imported only when on: the SDK and the exporters (protobuf, requests) cost start-up time.
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource

        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service_name}))
        tracer_provider = meter_provider = None
        if "traces" in signals:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer_provider = SdkTracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*
        if "metrics" in signals:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            meter_provider = SdkMeterProvider(  # interval: OTEL_METRIC_EXPORT_INTERVAL
                [PeriodicExportingMetricReader(OTLPMetricExporter())], resource=resource)
        log.info("telemetry on: exporting %s over OTLP/HTTP", " and ".join(sorted(signals)))
        return cls(tracer_provider, meter_provider)

    def batch(self, received: Sequence[Consumed]) -> "BatchTrace | NullTrace":
        """Start one event span per record (counted in events.in and in_flight); a NullTrace when
        telemetry is off, so that every hook the data path calls costs one method call."""
        return BatchTrace(self, received) if self._providers else NullTrace(received)

    @_guarded(fallback=trace.INVALID_SPAN)
    def start_publish(self, topic: str, event: ev.ImageEvent) -> Span:
        """A producer span for one images.in record, child of the caller's current span if any."""
        return self.tracer.start_span("cased.publish", kind=SpanKind.PRODUCER, attributes={
            **_messaging(topic, "send"), "cased.event_id": event.event_id, "cased.stream_id": event.stream_id})

    @_guarded(fallback=())
    def headers(self, span: Span, context: Context | None = None) -> Headers:
        """Record headers carrying `span` (and whatever else `context` propagates, e.g. baggage)."""
        headers: list[tuple[str, bytes]] = []
        propagate.inject(headers, trace.set_span_in_context(span, context), setter=KAFKA_HEADERS)
        return headers

    def observe_lag(self, consumer, topic: str) -> None:
        """Report `topic`'s lag from this Faust consumer (called on every assignment; the latest wins)."""
        self._lag_source = (consumer, topic)

    def observe_outages(self, status: Callable[[], dict]) -> None:
        """Report pauses from `status()` (workers.outages.Outages.status: paused, outages, paused_s)."""
        self._outages = status

    def _per_dependency(self, key: str, value: Callable[[Any], float]) -> Iterable[Observation]:
        if self._outages is None:
            return ()
        return [Observation(value(v), {"dependency": name}) for name, v in self._outages()[key].items()]

    @_guarded(fallback=())
    def _observe_paused(self, options: CallbackOptions) -> Iterable[Observation]:
        # Every dependency seen down once, 0 when it is up again: a gauge that drops, not one that vanishes.
        if self._outages is None:
            return ()
        status = self._outages()
        return [Observation(int(name in status["paused"]), {"dependency": name}) for name in status["outages"]]

    @_guarded(fallback=())
    def _observe_outages(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._per_dependency("outages", int)

    @_guarded(fallback=())
    def _observe_paused_time(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._per_dependency("paused_s", float)

    @_guarded(fallback={})
    def lag(self) -> dict[int, int]:
        """Records past the group's committed offset, per partition of the topic `observe_lag` named,
        from what the consumer already knows (no requests); a partition without a commit or a highwater
        yet is left out. Empty before the first assignment."""
        if self._lag_source is None:
            return {}
        consumer, topic = self._lag_source
        lags = {}
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            # Faust's committed offsets (the worker commits its frontier there): None until the
            # group committed there. The highwater is None until a fetch response reported one.
            committed = consumer._committed_offset.get(tp)
            highwater = consumer.highwater(tp) if committed is not None else None
            if highwater is not None:
                # never negative: a broker may report a highwater behind the committed offset
                lags[tp.partition] = max(0, highwater - committed)
        return lags

    @_guarded(fallback=())
    def _observe_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs in the metric reader's thread.
        topic = self._lag_source[1] if self._lag_source else None
        return [Observation(records, {"topic": topic, "partition": partition})
                for partition, records in self.lag().items()]

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters (blocks up to their timeouts)."""
        for provider in self._providers:
            try:
                provider.shutdown()
            except Exception:
                log.exception("telemetry shutdown failed")


OFF = Telemetry()


class NullTrace:
    """A BatchTrace that records nothing: what the pipeline gets when telemetry is off. Each output
    record carries its input record's trace-context headers unchanged (those the propagators read), so
    that a trace goes on past a worker that does not record it."""

    def __init__(self, received: Sequence[Consumed] = ()):
        self.received = received
        # the header names the propagators read, looked up once per batch rather than per record
        self.fields = propagate.get_global_textmap().fields if received else frozenset()

    def identify(self, i: int, event: ev.ImageEvent, replayed: bool = False) -> None:
        pass

    def stage(self, name: str, i: int) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    def batch_stage(self, name: str, members: Sequence[int]) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    def producing(self, i: int, topic: str) -> Headers:
        if i >= len(self.received):
            return ()
        return [(name, value) for name, value in self.received[i].headers.items() if name in self.fields]

    def done(self, outputs: Sequence[Any]) -> None:
        pass


NULL_TRACE = NullTrace()


def _messaging(topic: str | None, operation: str) -> dict[str, Any]:
    return {"messaging.system": "kafka", "messaging.operation.type": operation,
            **({"messaging.destination.name": topic} if topic else {})}


class BatchTrace:
    """One batch's spans: an event span per record (CONSUMER, parent = the producer's context from the
    record headers), per-event stage spans under it, batch-wide stage spans linked to the event spans
    they served, and a PRODUCER span per output record, whose context the output's headers carry."""

    def __init__(self, telemetry: Telemetry, received: Sequence[Consumed]):
        self.telemetry = telemetry
        self.size = len(received)
        self.contexts: list[Context] = []  # per event: the producer's context with the event span in it
        self.spans: list[Span] = []
        self._producing: dict[int, tuple[Span, float]] = {}
        for record in received:
            parent = self._extract(record.headers)
            span = self._start_event(record, parent)
            self.spans.append(span)
            self.contexts.append(trace.set_span_in_context(span, parent))
        self._count_in()

    @_guarded(fallback=Context())
    def _extract(self, headers: Mapping[str, bytes]) -> Context:
        return propagate.extract(headers, getter=KAFKA_HEADERS)

    @_guarded(fallback=trace.INVALID_SPAN)
    def _start_event(self, record: Consumed, parent: Context) -> Span:
        attributes = _messaging(record.topic, "process")
        if record.partition is not None:
            attributes["messaging.destination.partition.id"] = str(record.partition)
        if record.offset is not None:
            attributes["messaging.kafka.offset"] = record.offset
        if record.key is not None:
            attributes["cased.stream_id"] = record.key.decode("utf-8", "replace")
        return self.telemetry.tracer.start_span("cased.event", parent, SpanKind.CONSUMER, attributes)

    @_guarded()
    def _count_in(self) -> None:
        self.telemetry.events_in.add(self.size)
        self.telemetry.in_flight.add(self.size)
        self.telemetry.batch_size.record(self.size)

    @_guarded()
    def identify(self, i: int, event: ev.ImageEvent, replayed: bool = False) -> None:
        """Event `i` was read as `event`; `replayed`: re-delivered, answered from the stream's history."""
        self.spans[i].set_attributes({"cased.event_id": event.event_id, "cased.stream_id": event.stream_id,
                                      "cased.replayed": replayed})

    def stage(self, name: str, i: int) -> "_Stage":
        """A span (child of event `i`'s) and a duration sample for one event's stage."""
        return _Stage(self.telemetry, name, context=self.contexts[i])

    def batch_stage(self, name: str, members: Sequence[int]) -> "_Stage":
        """A span for a stage done once for the events `members`, linked to each of their spans."""
        return _Stage(self.telemetry, name, links=[Link(self.spans[i].get_span_context()) for i in members],
                      attributes={"messaging.batch.message_count": len(members)})

    @_guarded(fallback=())
    def producing(self, i: int, topic: str) -> Headers:
        """Start event `i`'s produce span; returns the headers for its output record."""
        span = self.telemetry.tracer.start_span("cased.produce", self.contexts[i], SpanKind.PRODUCER,
                                                _messaging(topic, "send"))
        self._producing[i] = (span, time.perf_counter())
        return self.telemetry.headers(span, self.contexts[i])

    @_guarded()
    def done(self, outputs: Sequence[Any]) -> None:
        """The batch's `outputs` (pipeline.Output, one per event, in order) were delivered: end the spans
        and count labels and dead letters."""
        now = time.perf_counter()
        for span, started in self._producing.values():
            span.end()
            self.telemetry.stage_duration.record(now - started, {"stage": "produce"})
        reasons: Counter = Counter()
        for span, output in zip(self.spans, outputs):
            if output.topic == ev.LABELS_OUT:
                span.set_attribute("cased.outcome", "label")
            else:
                span.set_attributes({"cased.outcome": "dead_letter", "cased.reason": output.reason or ""})
                reasons[output.reason or ""] += 1
            span.end()
        self.telemetry.labels_out.add(len(outputs) - sum(reasons.values()))
        for reason, count in reasons.items():
            self.telemetry.dead_letters.add(count, {"reason": reason})
        self.telemetry.in_flight.add(-self.size)


class _Stage:
    """Context manager: a stage span and its `cased.stage.duration` sample. An exception escaping the
    stage marks the span as an error (`error.type`: a dead letter's reason or the exception's type)
    and goes on to the caller."""

    def __init__(self, telemetry: Telemetry, name: str, context: Context | None = None,
                 links: Sequence[Link] = (), attributes: Mapping[str, Any] | None = None):
        self.telemetry, self.name = telemetry, name
        self.context, self.links, self.attributes = context, links, attributes
        self.span: Span = trace.INVALID_SPAN
        self.started = 0.0

    def __enter__(self) -> Span:
        self._start()
        return self.span

    def __exit__(self, kind, error, traceback) -> bool:
        self._end(error)
        return False

    @_guarded()
    def _start(self) -> None:
        self.span = self.telemetry.tracer.start_span(f"cased.{self.name}", self.context, links=self.links,
                                                     attributes=self.attributes)
        self.started = time.perf_counter()

    @_guarded()
    def _end(self, error: BaseException | None) -> None:
        attributes = {"stage": self.name}
        if error is not None:
            attributes["error.type"] = getattr(error, "reason", type(error).__name__)
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, str(error)))
            self.span.set_attribute("error.type", attributes["error.type"])
        self.span.end()
        self.telemetry.stage_duration.record(time.perf_counter() - self.started, attributes)
