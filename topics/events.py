"""Wire contracts of images.in, labels.out and images.dlq: msgpack maps, keyed by stream_id (UTF-8).

Field names are the product's API (documented in the README). No pickle anywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

SCHEMA_VERSION = 1
IMAGES_IN = "images.in"
LABELS_OUT = "labels.out"
DEAD_LETTER = "images.dlq"

# Dead-letter reasons: short machine-readable codes.
INVALID_EVENT = "invalid_event"
UNSUPPORTED_SOURCE = "unsupported_source"
FORBIDDEN_SOURCE = "forbidden_source"
FETCH_FAILED = "fetch_failed"
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
INTERNAL_ERROR = "internal_error"


class InvalidEvent(ValueError):
    """An images.in value that does not follow the contract; `detail` says what is wrong."""

    def __init__(self, detail: str, event_id: str | None = None, stream_id: str | None = None):
        super().__init__(detail)
        self.detail, self.event_id, self.stream_id = detail, event_id, stream_id


@dataclass(frozen=True)
class ImageEvent:
    event_id: str
    stream_id: str
    uri: str | None = None  # s3://bucket/key, http(s)://..., file://...
    image: bytes | None = None  # small inline frames
    ts: float | None = None  # unix seconds, set by the producer
    attrs: dict[str, Any] = field(default_factory=dict)  # passed through to labels.out


@dataclass(frozen=True)
class LabelEvent:
    event_id: str
    stream_id: str
    label: str  # the stream-consistent label
    raw_label: str  # what CaSED said for this image alone
    score: float
    candidates: list[list[Any]]  # top-N [name, probability]
    history: list[str]  # the stream's recent consistent labels, newest last
    model: str
    database: str
    ts_in: float | None
    ts_out: float
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    payload: bytes  # the original value, untouched
    event_id: str | None = None
    stream_id: str | None = None


def _pack(record: dict) -> bytes:
    return msgpack.packb({"v": SCHEMA_VERSION, **record}, use_bin_type=True)


def encode_image_event(event: ImageEvent) -> bytes:
    record = {k: v for k, v in asdict(event).items() if v is not None and not (k == "attrs" and not v)}
    return _pack(record)


def encode_label_event(event: LabelEvent) -> bytes:
    return _pack(asdict(event))


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return _pack({k: v for k, v in asdict(letter).items() if v is not None})


def _unpack(value: bytes) -> dict:
    try:
        record = msgpack.unpackb(value, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated types for bad input
        raise InvalidEvent(f"not a msgpack map: {type(err).__name__}: {err}") from err
    if not isinstance(record, dict):
        raise InvalidEvent(f"expected a msgpack map, got {type(record).__name__}")
    return record


def decode_image_event(value: bytes | None) -> ImageEvent:
    """Parse and validate an images.in value; raises InvalidEvent with the ids it could read."""
    if not value:
        raise InvalidEvent("empty value")
    record = _unpack(value)
    event_id, stream_id = record.get("event_id"), record.get("stream_id")
    ids = {"event_id": event_id if isinstance(event_id, str) else None,
           "stream_id": stream_id if isinstance(stream_id, str) else None}

    def invalid(detail: str) -> InvalidEvent:
        return InvalidEvent(detail, **ids)

    if record.get("v") != SCHEMA_VERSION:
        raise invalid(f"schema version {record.get('v')!r} is not supported (expected v={SCHEMA_VERSION})")
    for name in ("event_id", "stream_id"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise invalid(f"{name} must be a non-empty string")
    uri, image = record.get("uri"), record.get("image")
    if (uri is None) == (image is None):
        raise invalid("exactly one of uri and image must be set")
    if uri is not None and (not isinstance(uri, str) or not uri):
        raise invalid("uri must be a non-empty string")
    if image is not None and not isinstance(image, bytes):
        raise invalid("image must be bytes (msgpack bin)")
    ts = record.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        raise invalid("ts must be a number (unix seconds)")
    attrs = record.get("attrs", {})
    if not isinstance(attrs, dict):
        raise invalid("attrs must be a map")
    unknown = set(record) - {"v", "event_id", "stream_id", "uri", "image", "ts", "attrs"}
    if unknown:
        raise invalid(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    return ImageEvent(event_id, stream_id, uri, image, float(ts) if ts is not None else None, attrs)


def decode_label_event(value: bytes) -> LabelEvent:
    record = _unpack(value)
    record.pop("v", None)
    return LabelEvent(**record)


def decode_dead_letter(value: bytes) -> DeadLetter:
    record = _unpack(value)
    record.pop("v", None)
    return DeadLetter(**record)
