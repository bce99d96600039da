"""Wire contracts of images.in, labels.out and images.dlq: msgpack maps, keyed by stream_id (UTF-8).

Field names are the product's API (documented in docs/streaming.md). No pickle anywhere.

`attrs` is the producer's, passed through; two keys are read: `attrs.history` (HISTORY_ATTR) picks the
stream's history policy, one of cased_core.options.HISTORY_POLICIES: `steady` (a change of label must
be confirmed; the default), `fast` (a change is followed at once) or `upload` (naming only). Any
other value, such as `live` from producers of earlier versions, gets the worker's default policy
(CASED_HISTORY_POLICY). `attrs.gate` (GATE_ATTR) = `off` (GATE_OFF) keeps the change gate off for
the stream (cased_core.method.gate).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import msgpack

SCHEMA_VERSION = 1
IMAGES_IN = "images.in"
LABELS_OUT = "labels.out"
DEAD_LETTER = "images.dlq"
HISTORY_ATTR = "history"  # the attrs key naming a stream's history policy
SOURCE_ATTR = "source"  # the attrs key `cased publish` names a local file's path in (labels print it)
GATE_ATTR = "gate"  # GATE_OFF there: never answer a frame of this stream from an earlier one
GATE_OFF = "off"

# Dead-letter reasons: short machine-readable codes.
INVALID_EVENT = "invalid_event"
UNSUPPORTED_SOURCE = "unsupported_source"
FORBIDDEN_SOURCE = "forbidden_source"
FETCH_FAILED = "fetch_failed"
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_IMAGE = "unsupported_image"  # decodes, but too extreme to classify meaningfully (shape, mode)
INTERNAL_ERROR = "internal_error"

# Bounds on what a producer controls, so that every record a worker writes (label, dead letter, history
# state) stays far below Kafka's default 1 MB record limit whatever the producer sends. An event over
# a bound is an invalid_event dead letter.
MAX_ID_BYTES = 256  # event_id, stream_id (UTF-8)
MAX_URI_BYTES = 8192  # presigned S3 URLs run to ~2 KB
MAX_ATTRS_BYTES = 16 * 1024  # attrs, as msgpack; echoed in every label and kept for replays
MAX_ATTRS_DEPTH = 8  # nesting of maps and arrays inside attrs
# A dead letter keeps at most this much of the original value (an inline image can be ~1 MB, the
# record limit itself), and its detail at most this many characters.
MAX_DEAD_PAYLOAD_BYTES = 64 * 1024
MAX_DETAIL_CHARS = 1000


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
    concept: str | None = None  # the label's concept: wn:<synset>-n, or name:<digest> (lexicon.concept_id)
    changed: bool | None = None  # the stream's consistent label changed at this event (its first label too)
    # The event whose classification this frame reused: the change gate found it unchanged since that
    # frame, the last of its stream the model saw. None: classified itself.
    reused: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    payload: bytes  # the original value, or its first MAX_DEAD_PAYLOAD_BYTES when `truncated`
    event_id: str | None = None
    stream_id: str | None = None
    payload_size: int | None = None  # the original value's length in bytes
    truncated: bool = False  # payload holds only a prefix of the original value


def dead_letter(reason: str, detail: str, value: bytes | None, event_id: str | None = None,
                stream_id: str | None = None) -> DeadLetter:
    """A dead letter for `value` that fits a Kafka record whatever the producer sent: the payload is
    cut to MAX_DEAD_PAYLOAD_BYTES (and says so), the detail to MAX_DETAIL_CHARS, ids over their bound
    are left out."""
    value = value or b""
    return DeadLetter(reason, bounded_detail(detail), value[:MAX_DEAD_PAYLOAD_BYTES], _bounded_id(event_id),
                      _bounded_id(stream_id), len(value), len(value) > MAX_DEAD_PAYLOAD_BYTES)


def bounded_detail(detail: str) -> str:
    """`detail` cut to MAX_DETAIL_CHARS (details quote what producers send, which can be megabytes)."""
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[:MAX_DETAIL_CHARS - 3] + "..."


def _bounded_id(value: str | None) -> str | None:
    return value if isinstance(value, str) and value and len(value.encode()) <= MAX_ID_BYTES else None


def _shallow(record) -> dict:
    """A record's fields as they are: msgpack packs their lists and maps itself (dataclasses.asdict
    deep-copies every value, which cost more than the rest of making a label event)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _pack(record: dict) -> bytes:
    return msgpack.packb({"v": SCHEMA_VERSION, **record}, use_bin_type=True)


def encode_image_event(event: ImageEvent) -> bytes:
    record = {k: v for k, v in _shallow(event).items() if v is not None and not (k == "attrs" and not v)}
    return _pack(record)


def encode_label_event(event: LabelEvent) -> bytes:
    return _pack(_shallow(event))


def encode_dead_letter(letter: DeadLetter) -> bytes:
    return _pack({k: v for k, v in _shallow(letter).items() if v is not None and not (k == "truncated" and not v)})


def _unpack(value: bytes) -> dict:
    try:
        record = msgpack.unpackb(value, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated types for bad input
        raise InvalidEvent(f"not a msgpack map: {type(err).__name__}: {err}") from err
    if not isinstance(record, dict):
        raise InvalidEvent(f"expected a msgpack map, got {type(record).__name__}")
    return record


def decode_record(value: bytes) -> dict:
    """Any record of these topics as the map it is on the wire (every field, known or not).

    Raises:
        InvalidEvent: not a msgpack map.
    """
    return _unpack(value)


def decode_image_event(value: bytes | None) -> ImageEvent:
    """Parse and validate an images.in value; raises InvalidEvent with the ids it could read."""
    if not value:
        raise InvalidEvent("empty value")
    record = _unpack(value)
    event_id, stream_id = record.get("event_id"), record.get("stream_id")
    ids = {"event_id": _bounded_id(event_id), "stream_id": _bounded_id(stream_id)}

    def invalid(detail: str) -> InvalidEvent:
        return InvalidEvent(detail, **ids)

    if record.get("v") != SCHEMA_VERSION:
        raise invalid(f"schema version {record.get('v')!r} is not supported (expected v={SCHEMA_VERSION})")
    for name in ("event_id", "stream_id"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise invalid(f"{name} must be a non-empty string")
        if len(record[name].encode()) > MAX_ID_BYTES:
            raise invalid(f"{name} is longer than {MAX_ID_BYTES} bytes")
    uri, image = record.get("uri"), record.get("image")
    if (uri is None) == (image is None):
        raise invalid("exactly one of uri and image must be set")
    if uri is not None and (not isinstance(uri, str) or not uri):
        raise invalid("uri must be a non-empty string")
    if uri is not None and len(uri.encode("utf-8", "surrogatepass")) > MAX_URI_BYTES:
        raise invalid(f"uri is longer than {MAX_URI_BYTES} bytes")
    if image is not None and not isinstance(image, bytes):
        raise invalid("image must be bytes (msgpack bin)")
    ts = record.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        raise invalid("ts must be a number (unix seconds)")
    attrs = record.get("attrs", {})
    if not isinstance(attrs, dict):
        raise invalid("attrs must be a map")
    if _depth(attrs) > MAX_ATTRS_DEPTH:
        raise invalid(f"attrs are nested more than {MAX_ATTRS_DEPTH} levels deep")
    if len(msgpack.packb(attrs, use_bin_type=True)) > MAX_ATTRS_BYTES:
        raise invalid(f"attrs take more than {MAX_ATTRS_BYTES} bytes")
    unknown = set(record) - {"v", "event_id", "stream_id", "uri", "image", "ts", "attrs"}
    if unknown:
        names = ", ".join(sorted(map(str, unknown))[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise invalid(f"unknown fields: {names}")
    return ImageEvent(event_id, stream_id, uri, image, float(ts) if ts is not None else None, attrs)


def _depth(value: Any) -> int:
    """Nesting depth of maps and arrays, without recursion (a producer can nest thousands deep)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children = list(item.keys()) + list(item.values())
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_ATTRS_DEPTH:
            break
        todo += [(child, depth + 1) for child in children]
    return deepest


def decode_label_event(value: bytes) -> LabelEvent:
    """A labels.out value; fields a later version adds are ignored (optional fields only are added)."""
    return LabelEvent(**_known(LabelEvent, _unpack(value)))


def decode_dead_letter(value: bytes) -> DeadLetter:
    return DeadLetter(**_known(DeadLetter, _unpack(value)))


def _known(kind: type, record: dict) -> dict:
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in record.items() if k in names}
