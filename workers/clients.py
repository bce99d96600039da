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
    """A topic to read or write that the broker does not have."""


TOPIC_WAIT_S = 10.0  # how long a missing topic is waited for: a worker starting now creates its topics


def topic_partitions(consumer, broker: str, topics: list[str], wait_s: float = TOPIC_WAIT_S) -> list:
    """Every partition of `topics` (kafka-python TopicPartitions), once the broker has them all.

    Metadata requests here name the topics, which creates none: brokers that auto-create topics do it
    for producers (and `cased publish` refuses to write to a topic that does not exist, where no worker
    would read it).

    Raises:
        MissingTopic: a topic still missing after `wait_s` seconds (the time waited is named).
    """
    from kafka import TopicPartition

    started = time.monotonic()
    while True:
        found = {topic: sorted(consumer.partitions_for_topic(topic) or ()) for topic in topics}
        missing = [topic for topic, ids in found.items() if not ids]
        if not missing:
            return [TopicPartition(topic, p) for topic, ids in found.items() for p in ids]
        waited = time.monotonic() - started
        if waited >= wait_s:
            raise MissingTopic(f"no topic {', '.join(missing)} at {broker} (waited {waited:.0f} s): a worker creates "
                               "its topics when it starts (so does `cased local`); start one, or check the topic "
                               "names (--images-topic, --labels-topic, --dead-letter-topic)")
        time.sleep(0.2)


def require_topics(broker: str, topics: list[str], wait_s: float = TOPIC_WAIT_S, **kafka_options) -> None:
    """Return once the broker answers and has `topics` (see topic_partitions); with no topics, once it
    answers.

    Raises:
        MissingTopic: a topic still missing after `wait_s` seconds.
        ConnectionError: no broker answered.
    """
    from kafka import KafkaConsumer

    consumer = connect(KafkaConsumer, broker, kafka_options, enable_auto_commit=False)
    try:
        topic_partitions(consumer, broker, topics, wait_s)
    finally:
        consumer.close()


def read_records(broker: str, topics: list[str], idle_timeout_s: float | None = 5.0,
                 from_beginning: bool = True, **kafka_options) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) from every partition of `topics`, without a consumer group; stops after
    `idle_timeout_s` without a record (None: follow forever)."""
    for message in read_messages(broker, topics, idle_timeout_s, from_beginning, **kafka_options):
        yield message.topic, message.key, message.value


def read_messages(broker: str, topics: list[str], idle_timeout_s: float | None = 5.0,
                  from_beginning: bool = True, **kafka_options) -> Iterator:
    """As read_records, whole kafka-python ConsumerRecords (with headers, partition, offset)."""
    from kafka import KafkaConsumer

    consumer = connect(KafkaConsumer, broker, kafka_options,
                       consumer_timeout_ms=int(idle_timeout_s * 1000) if idle_timeout_s else float("inf"),
                       enable_auto_commit=False,
                       fetch_max_wait_ms=20,  # a reader measures latency: don't let the broker hold fetches
                       # kafka-python asks for fetches of up to 50 MB but refuses responses over 1 MB: a
                       # few labels carrying large attrs in one response made the reader fail
                       receive_message_max_bytes=64 * 1024 * 1024)
    try:
        partitions = topic_partitions(consumer, broker, topics)
        consumer.assign(partitions)
        if from_beginning:
            consumer.seek_to_beginning(*partitions)
        yield from consumer
    finally:
        consumer.close()
