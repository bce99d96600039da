"""Traces and metrics: in-memory exporters around a real pipeline, then across a real Kafka hop to a
worker process that exports over OTLP/HTTP to a receiver on loopback."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgpack
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cased_core.method.classifier import Classifier
from topics import events as ev
from workers.cli.broker import free_port
from workers.clients import ensure_topics, image_event, producer, publish, read_messages
from workers.pipeline import Pipeline
from workers.settings import Settings
from workers.offsets import Consumed
from workers.telemetry import Telemetry, exported_signals
from tests.workers.helpers import PARTITIONS, TOPICS, run, shape

STAGES = ("consume", "fetch", "decode", "preprocess", "encode", "search", "score", "history", "produce")


class Recorded:
    """A Telemetry whose spans and metrics stay in memory."""

    def __init__(self, *processors: SpanProcessor):
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        for processor in (*processors, SimpleSpanProcessor(self.spans)):
            tracer_provider.add_span_processor(processor)
        self.telemetry = Telemetry(tracer_provider, MeterProvider([self.metrics]))

    def finished(self, name: str) -> list:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def collect(self) -> dict[str, list]:
        """Each metric's data points (cumulative: totals so far)."""
        data = self.metrics.get_metrics_data()
        return {m.name: list(m.data.data_points) for rm in (data.resource_metrics if data else [])
                for sm in rm.scope_metrics for m in sm.metrics}


def traceparent(headers) -> tuple[int, int]:
    """(trace id, span id) of the W3C traceparent among Kafka headers."""
    [value] = [v for k, v in headers if k == "traceparent"]
    version, trace_id, span_id, flags = value.decode().split("-")
    return int(trace_id, 16), int(span_id, 16)


@pytest.fixture
def pipeline(tiny_model, tiny_database, lexicon):
    return Pipeline.init(Settings(), classifier=Classifier(tiny_model, tiny_database), lexicon=lexicon, warm_up=False)


def published(recorded: Recorded, events: list[ev.ImageEvent]) -> list[Consumed]:
    """Records as the worker would receive them from `publish`: a producer span's context in the headers."""
    received = []
    for offset, event in enumerate(events):
        span = recorded.telemetry.start_publish("images.in", event)
        received.append(Consumed("images.in", 0, offset, b"cam", headers=dict(recorded.telemetry.headers(span))))
        span.end()
    return received


def test_a_batch_has_event_spans_stage_spans_links_and_metrics(pipeline):
    recorded = Recorded()
    events = [image_event("cam", shape("star", 1), event_id="good-1"),
              image_event("cam", shape("heart", 2), event_id="good-2"),
              image_event("cam", b"not an image", event_id="bad")]
    values = [ev.encode_image_event(e) for e in events] + [b"\xc1 not msgpack"]
    events.append(image_event("cam", b"", event_id="unreadable"))  # for its publish span; its value is garbage
    trace = recorded.telemetry.batch(published(recorded, events))
    [outputs] = run(pipeline, values, trace=trace)
    headers = [trace.producing(i, o.topic) for i, o in enumerate(outputs)]
    trace.done(outputs)

    assert [o.topic for o in outputs] == [ev.LABELS_OUT, ev.LABELS_OUT, ev.DEAD_LETTER, ev.DEAD_LETTER]
    assert [o.reason for o in outputs[2:]] == [ev.NOT_AN_IMAGE, ev.INVALID_EVENT]
    producers = recorded.finished("cased.publish")
    event_spans = recorded.finished("cased.event")
    assert len(event_spans) == 4
    # Each event span continues its producer's trace, as the child of the producer span.
    for producer_span, event_span in zip(producers, event_spans):
        assert event_span.kind == SpanKind.CONSUMER
        assert event_span.context.trace_id == producer_span.context.trace_id
        assert event_span.parent.span_id == producer_span.context.span_id
        assert event_span.attributes["messaging.destination.name"] == "images.in"
        assert event_span.attributes["cased.stream_id"] == "cam"
    good, bad, unreadable = event_spans[:2], event_spans[2], event_spans[3]
    assert [s.attributes["cased.event_id"] for s in good + [bad]] == ["good-1", "good-2", "bad"]
    assert all(s.attributes["cased.outcome"] == "label" and not s.attributes["cased.replayed"] for s in good)
    assert bad.attributes["cased.outcome"] == "dead_letter" and bad.attributes["cased.reason"] == ev.NOT_AN_IMAGE
    assert unreadable.attributes["cased.reason"] == ev.INVALID_EVENT

    # Per-event stages are children of their event's span.
    children = defaultdict(list)
    for span in recorded.spans.get_finished_spans():
        if span.parent is not None:
            children[span.parent.span_id].append(span.name)
    expected = {0: ["consume", "fetch", "decode", "history", "produce"],
                1: ["consume", "fetch", "decode", "history", "produce"],
                2: ["consume", "fetch", "decode", "produce"], 3: ["consume", "produce"]}
    for i, stages in expected.items():
        assert sorted(children[event_spans[i].context.span_id]) == sorted(f"cased.{s}" for s in stages), i
    [decode_failed] = [s for s in recorded.finished("cased.decode") if s.status.status_code == StatusCode.ERROR]
    assert decode_failed.parent.span_id == bad.context.span_id
    assert decode_failed.attributes["error.type"] == ev.NOT_AN_IMAGE
    # Batch stages: one span each for the two events that reached the model, linked to both.
    for name in ("cased.preprocess", "cased.encode", "cased.search", "cased.score"):
        [span] = recorded.finished(name)
        assert span.parent is None
        assert [link.context.span_id for link in span.links] == [s.context.span_id for s in good]
        assert span.attributes["messaging.batch.message_count"] == 2
    # The output records carry each event's produce span, in the producer's trace.
    for i, (event_span, produce) in enumerate(zip(event_spans, recorded.finished("cased.produce"))):
        assert produce.kind == SpanKind.PRODUCER and produce.parent.span_id == event_span.context.span_id
        assert traceparent(headers[i]) == (producers[i].context.trace_id, produce.context.span_id)

    data = recorded.collect()
    assert [p.value for p in data["cased.events.in"]] == [4]
    assert [p.value for p in data["cased.labels.out"]] == [2]
    assert {p.attributes["reason"]: p.value for p in data["cased.dead_letters"]} == {
        ev.NOT_AN_IMAGE: 1, ev.INVALID_EVENT: 1}
    assert [p.value for p in data["cased.events.in_flight"]] == [0]
    [sizes] = data["cased.batch.size"]
    assert (sizes.count, sizes.sum) == (1, 4)
    counts = defaultdict(int)
    for point in data["cased.stage.duration"]:
        counts[point.attributes["stage"]] += point.count
        assert point.sum >= 0
    assert dict(counts) == {"consume": 4, "fetch": 3, "decode": 3, "preprocess": 1, "encode": 1, "search": 1,
                            "score": 1, "history": 2, "produce": 4}
    assert {p.attributes.get("error.type") for p in data["cased.stage.duration"]} == {
        None, "InvalidEvent", ev.NOT_AN_IMAGE}


class Broken(SpanProcessor):
    def on_start(self, span, parent_context=None):
        raise RuntimeError("a broken span processor")

    def on_end(self, span):
        raise RuntimeError("a broken span processor")


def test_broken_telemetry_never_breaks_processing(pipeline, caplog):
    recorded = Recorded(Broken())
    events = [image_event("cam", shape("star", 1), event_id="good"), image_event("cam", b"x", event_id="bad")]
    values = [ev.encode_image_event(e) for e in events]
    trace = recorded.telemetry.batch(published(recorded, events))
    [outputs] = run(pipeline, values, trace=trace)
    headers = [trace.producing(i, o.topic) for i, o in enumerate(outputs)]
    trace.done(outputs)
    assert [o.topic for o in outputs] == [ev.LABELS_OUT, ev.DEAD_LETTER]
    assert all(isinstance(h, (list, tuple)) for h in headers)
    assert "telemetry failed" in caplog.text


def test_off_the_worker_passes_the_producer_context_on_unchanged():
    producer_side = Recorded()
    event = image_event("cam", b"x", event_id="e")
    [received] = published(producer_side, [event])
    trace = Telemetry().batch([received])
    with trace.stage("fetch", 0) as span:
        assert span is None  # nothing is recorded, nothing is paid for
    headers = trace.producing(0, "labels.out")
    assert dict(headers) == dict(received.headers)


def test_exporting_is_off_without_otel_variables():
    assert exported_signals({}) == frozenset()
    assert exported_signals({"OTEL_SERVICE_NAME": "x"}) == frozenset()
    assert exported_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == {"traces", "metrics"}
    assert exported_signals({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == {"traces"}
    assert exported_signals({"OTEL_METRICS_EXPORTER": "otlp"}) == {"metrics"}
    assert exported_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}) \
        == {"metrics"}
    assert exported_signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}) \
        == frozenset()


class Partition:
    def __init__(self, topic: str, partition: int):
        self.topic, self.partition = topic, partition


class Consumer:
    """Just what the lag gauge reads of a Faust consumer."""

    def __init__(self, committed: dict, highwaters: dict):
        self._committed_offset, self.highwaters = committed, highwaters

    def assignment(self):
        return set(self.highwaters)

    def highwater(self, tp):
        return self.highwaters[tp]


def test_lag_is_per_partition_and_never_negative():
    recorded = Recorded()
    p0, p1, p2, p3 = (Partition("images.in", p) for p in range(4))
    other = Partition("stream-history-changelog", 0)
    consumer = Consumer({p0: 10, p1: 7, p3: 5, other: 0}, {p0: 15, p1: 6, p2: 9, p3: None, other: 99})
    assert "cased.consumer.lag" not in recorded.collect()  # nothing before the first assignment
    recorded.telemetry.observe_lag(consumer, "images.in")
    lag = {p.attributes["partition"]: p.value for p in recorded.collect()["cased.consumer.lag"]}
    # p2: nothing committed yet, p3: no highwater known yet; the changelog is not images.in
    assert lag == {0: 5, 1: 0}


def test_pauses_are_metrics_per_dependency():
    from workers.failures import STORAGE, SystemFault
    from workers.outages import Outages

    now = [0.0]
    outages, recorded = Outages(clock=lambda: now[0]), Recorded()
    recorded.telemetry.observe_outages(outages.status)
    assert recorded.collect().get("cased.paused", []) == []  # nothing down yet: no series
    outages.down(SystemFault(STORAGE, "refused"))
    now[0] = 12.5

    def by_dependency(name: str) -> dict:
        return {p.attributes["dependency"]: p.value for p in recorded.collect()[name]}

    assert by_dependency("cased.paused") == {STORAGE: 1} and by_dependency("cased.outages") == {STORAGE: 1}
    assert by_dependency("cased.paused.time") == {STORAGE: 12.5}
    outages.up(STORAGE)
    assert by_dependency("cased.paused") == {STORAGE: 0} and by_dependency("cased.paused.time") == {STORAGE: 12.5}


# ------------------------------------------------------------------ across Kafka, to a worker process

class OtlpReceiver:
    """An OTLP/HTTP endpoint on loopback that keeps what it is sent."""

    def __init__(self):
        self.received: list[tuple[str, bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list:
        return [span for path, body in list(self.received) if path == "/v1/traces"
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans for span in ss.spans]

    def metrics(self) -> dict[str, list]:
        """Each metric's data points from the latest export (cumulative: totals so far)."""
        latest = {}
        for path, body in list(self.received):
            if path == "/v1/metrics":
                for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            kind = metric.WhichOneof("data")
                            latest[metric.name] = list(getattr(metric, kind).data_points)
        return latest

    def service_names(self) -> set[str]:
        return {attr.value.string_value for path, body in list(self.received) if path == "/v1/traces"
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for attr in rs.resource.attributes if attr.key == "service.name"}


@pytest.fixture
def otlp():
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def attributes(span_or_point) -> dict:
    out = {}
    for kv in span_or_point.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def outputs_with_headers(broker_url: str, expected: int, timeout_s: float = 60.0) -> dict[str, tuple[str, list]]:
    """event_id -> (topic, headers) of labels.out and images.dlq records."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, tuple[str, list]] = {}
    while time.monotonic() < deadline and len(found) < expected:
        for message in read_messages(broker_url, ["labels.out", "images.dlq"], idle_timeout_s=1.0):
            found[msgpack.unpackb(message.value)["event_id"]] = (message.topic, message.headers)
        time.sleep(0.3)
    return found


def publish_traced(broker_url: str, recorded: Recorded, events: list[ev.ImageEvent]) -> dict[str, object]:
    client = producer(broker_url)
    try:
        publish(client, "images.in", events, recorded.telemetry)
    finally:
        client.close()
    return {s.attributes["cased.event_id"]: s for s in recorded.finished("cased.publish")}


def wait_for(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_the_trace_crosses_kafka_and_the_worker_exports_spans_and_metrics(broker, workers, otlp):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    workers(broker.url, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
                         "OTEL_METRIC_EXPORT_INTERVAL": "300"})
    recorded = Recorded()
    events = [image_event("cam", shape("star", 1), event_id="good"),
              image_event("cam", b"not an image", event_id="bad")]
    producers = publish_traced(broker.url, recorded, events)
    outputs = outputs_with_headers(broker.url, 2)
    assert {k: topic for k, (topic, _) in outputs.items()} == {"good": "labels.out", "bad": "images.dlq"}
    carried = {}
    for event_id, (_, headers) in outputs.items():
        trace_id, span_id = traceparent(headers)
        assert trace_id == producers[event_id].context.trace_id  # the same trace ...
        assert span_id != producers[event_id].context.span_id  # ... continued by the worker
        carried[event_id] = span_id

    def exported():
        spans = otlp.spans()
        names = [s.name for s in spans]
        return spans if names.count("cased.event") == 2 and names.count("cased.produce") == 2 else None

    spans = wait_for(exported)
    assert spans, [s.name for s in otlp.spans()]
    assert otlp.service_names() == {"cased-worker"}
    by_id = {s.span_id: s for s in spans}
    for event_id, producer_span in producers.items():
        # The producer's span is the parent of the worker's event span, across the Kafka hop ...
        [event] = [s for s in spans if s.name == "cased.event" and attributes(s)["cased.event_id"] == event_id]
        assert int.from_bytes(event.trace_id, "big") == producer_span.context.trace_id
        assert int.from_bytes(event.parent_span_id, "big") == producer_span.context.span_id
        assert event.kind == event.SPAN_KIND_CONSUMER
        # ... and the output record carries the worker's produce span, a child of the event span.
        produce = by_id[carried[event_id].to_bytes(8, "big")]
        assert produce.name == "cased.produce" and produce.parent_span_id == event.span_id
        stages = {s.name for s in spans if s.parent_span_id == event.span_id}
        expected = {"cased.consume", "cased.fetch", "cased.decode", "cased.produce"}
        assert stages == (expected | {"cased.history"} if event_id == "good" else expected), (event_id, stages)
        if event_id == "bad":
            assert attributes(event)["cased.reason"] == ev.NOT_AN_IMAGE
        else:
            for name in ("cased.preprocess", "cased.encode", "cased.search", "cased.score"):
                [batch_span] = [s for s in spans if s.name == name]
                assert [link.span_id for link in batch_span.links] == [event.span_id]

    def counted():
        metrics = otlp.metrics()
        totals = {name: sum(p.as_int for p in metrics.get(name, [])) for name in
                  ("cased.events.in", "cased.labels.out", "cased.dead_letters")}
        return metrics if totals == {"cased.events.in": 2, "cased.labels.out": 1, "cased.dead_letters": 1} \
            and "cased.consumer.lag" in metrics else None

    metrics = wait_for(counted)
    assert metrics, {name: points for name, points in otlp.metrics().items()}
    assert [attributes(p) for p in metrics["cased.dead_letters"]] == [{"reason": ev.NOT_AN_IMAGE}]
    stages = {attributes(p)["stage"] for p in metrics["cased.stage.duration"]}
    assert stages == set(STAGES)
    lag = {attributes(p)["partition"]: p.as_int for p in metrics["cased.consumer.lag"]}
    assert lag and set(lag) <= set(range(PARTITIONS)) and all(v >= 0 for v in lag.values()), lag
    assert sum(p.as_int for p in metrics["cased.events.in_flight"]) == 0


def test_without_otel_variables_the_worker_passes_the_context_on(broker, workers):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    workers(broker.url)
    recorded = Recorded()
    producers = publish_traced(broker.url, recorded, [image_event("cam", shape("moon", 3), event_id="plain")])
    outputs = outputs_with_headers(broker.url, 1)
    topic, headers = outputs["plain"]
    context = producers["plain"].context
    assert topic == "labels.out" and traceparent(headers) == (context.trace_id, context.span_id)
