"""Plain Kafka clients for the CLI, the demo and the tests: create topics, publish images, read records.

Each function takes `**kafka_options`, extra kafka-python keyword arguments: the security settings from
`workers.security.kafka_python_options(settings)` (none for PLAINTEXT)."""
from __future__ import annotations

import ssl
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from opentelemetry.trace import use_span

from topics import events as ev
from workers.telemetry import OFF, Telemetry

INLINE_LIMIT = 512 * 1024  # local files up to this size travel inline; larger ones need a shared uri


def bootstrap(broker: str) -> list[str]:
    """'kafka://a:9092,b:9092' (Faust style) or 'a:9092' -> ['a:9092', 'b:9092']."""
    return [part.removeprefix("kafka://").strip() for part in broker.split(",") if part.strip()]


def connect(client_class, broker: str, kafka_options: dict, **config):
    """A kafka-python client for `broker`; brokers it cannot reach or trust are a ConnectionError that
    says what to check, rather than kafka-python's NoBrokersAvailable or a bare SSL error."""
    from kafka.errors import KafkaConnectionError, NoBrokersAvailable

    protocol = kafka_options.get("security_protocol", "PLAINTEXT")
    try:
        return client_class(bootstrap_servers=bootstrap(broker), **config, **kafka_options)
    except ssl.SSLError as err:
        raise ConnectionError(f"TLS with the Kafka brokers at {broker} failed ({err}): check CASED_KAFKA_CA_FILE "
                              "(the CA that signed the brokers' certificates) and that the broker address is "
                              "a name in their certificates") from err
    except (NoBrokersAvailable, KafkaConnectionError) as err:
        raise ConnectionError(f"no Kafka broker answered at {broker} over {protocol} ({err}): check the address "
                              "(--broker, CASED_BROKER) and CASED_KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL for a TLS "
                              "listener)" + (", CASED_KAFKA_SASL_MECHANISM and the credentials"
                                             if protocol.startswith("SASL_") else "")) from err


def ensure_topics(broker: str, names: Iterable[str], partitions: int, configs: dict[str, str] | None = None,
                  **kafka_options) -> None:
    """Create the topics that do not exist yet, with `partitions` partitions and topic `configs`."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = connect(KafkaAdminClient, broker, kafka_options, client_id="cased-admin")
    try:
        # One at a time, tolerating existing ones: listing topics first trips kafka-python on some
        # brokers' metadata (Tansu's authorised-operations field), and creation is idempotent anyway.
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def producer(broker: str, **kafka_options):
    from kafka import KafkaProducer

    return connect(KafkaProducer, broker, kafka_options, acks="all", linger_ms=5)


def image_event(stream_id: str, source: str | bytes | Path, attrs: dict | None = None,
                event_id: str | None = None, ts: float | None = None) -> ev.ImageEvent:
    """An event for a uri, inline bytes, or a local file (sent inline when small), taken at `ts` (unix
    seconds; default: now)."""
    uri = image = None
    if isinstance(source, bytes):
        image = source
    elif isinstance(source, Path) or "://" not in source:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; pass a uri (s3://, https://, file://) or a local image")
        if path.stat().st_size > INLINE_LIMIT:
            raise ValueError(f"{path} is over {INLINE_LIMIT} bytes: upload it and publish its s3:// or https:// uri")
        image = path.read_bytes()
    else:
        uri = source
    return ev.ImageEvent(event_id=event_id or uuid.uuid4().hex, stream_id=stream_id, uri=uri, image=image,
                         ts=time.time() if ts is None else ts, attrs=attrs or {})


def publish(client, topic: str, events: Iterable[ev.ImageEvent], telemetry: Telemetry = OFF) -> list[str]:
    """Send events keyed by stream_id, in order; returns their event ids once all were acknowledged.
    Each record's headers carry its trace context (W3C traceparent): a `cased.publish` span of
    `telemetry`'s, else the caller's current span, if any."""
    sent, ids = [], []
    for event in events:
        span = telemetry.start_publish(topic, event)
        sent.append((span, client.send(topic, key=event.stream_id.encode(), value=ev.encode_image_event(event),
                                       headers=list(telemetry.headers(span)))))
        ids.append(event.event_id)
    for span, future in sent:
        with use_span(span, end_on_exit=True):  # ends when acknowledged; an error marks it
            future.get(timeout=30)
    return ids


class MissingTopic(ValueError):
    """A topic to read that the broker does not have."""


def read_records(broker: str, topics: list[str], idle_timeout_s: float | None = 5.0,
                 from_beginning: bool = True, **kafka_options) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) from every partition of `topics`, without a consumer group; stops after
    `idle_timeout_s` without a record (None: follow forever)."""
    for message in read_messages(broker, topics, idle_timeout_s, from_beginning, **kafka_options):
        yield message.topic, message.key, message.value


def read_messages(broker: str, topics: list[str], idle_timeout_s: float | None = 5.0,
                  from_beginning: bool = True, **kafka_options) -> Iterator:
    """As read_records, whole kafka-python ConsumerRecords (with headers, partition, offset)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = connect(KafkaConsumer, broker, kafka_options,
                       consumer_timeout_ms=int(idle_timeout_s * 1000) if idle_timeout_s else float("inf"),
                       enable_auto_commit=False,
                       fetch_max_wait_ms=20,  # a reader measures latency: don't let the broker hold fetches
                       # kafka-python asks for fetches of up to 50 MB but refuses responses over 1 MB: a
                       # few labels carrying large attrs in one response made the reader fail
                       receive_message_max_bytes=64 * 1024 * 1024)
    try:
        partitions = []
        deadline = time.monotonic() + 10
        for topic in topics:
            ids = consumer.partitions_for_topic(topic)
            while ids is None and time.monotonic() < deadline:
                time.sleep(0.2)
                ids = consumer.partitions_for_topic(topic)
            partitions += [TopicPartition(topic, p) for p in sorted(ids or ())]
        missing = [t for t in topics if not any(p.topic == t for p in partitions)]
        if missing:
            raise MissingTopic(f"no topic {', '.join(missing)} at {broker} after 10 s: a worker creates its "
                               "topics when it starts; start one, or check the topic names (--labels-topic, "
                               "--dead-letter-topic, --images-topic)")
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        yield from consumer
    finally:
        consumer.close()
