import msgpack
import pytest

from topics import events as ev


def test_image_event_round_trip_and_wire_field_names():
    event = ev.ImageEvent("e1", "cam-1", uri="s3://b/k.jpg", ts=12.5, attrs={"history": "live"})
    value = ev.encode_image_event(event)
    assert msgpack.unpackb(value) == {"v": 1, "event_id": "e1", "stream_id": "cam-1", "uri": "s3://b/k.jpg",
                                      "ts": 12.5, "attrs": {"history": "live"}}
    assert ev.decode_image_event(value) == event
    inline = ev.ImageEvent("e2", "up", image=b"\x89PNG")
    assert ev.decode_image_event(ev.encode_image_event(inline)) == inline


def test_label_event_and_dead_letter_round_trip():
    label = ev.LabelEvent("e1", "cam", "star", "stars", 0.9, [["star", 0.9]], ["star"], "tiny@x", "db@y", 1.0, 2.0,
                          {"a": 1})
    assert ev.decode_label_event(ev.encode_label_event(label)) == label
    assert msgpack.unpackb(ev.encode_label_event(label))["v"] == ev.SCHEMA_VERSION
    letter = ev.DeadLetter(ev.NOT_AN_IMAGE, "bad bytes", b"\x00", "e1", "cam")
    assert ev.decode_dead_letter(ev.encode_dead_letter(letter)) == letter


def test_label_events_gain_optional_fields_compatibly():
    label = ev.LabelEvent("e1", "cam", "star", "star", 0.9, [["star", 0.9]], ["star"], "tiny@x", "db@y", 1.0, 2.0,
                          concept="wn:09444100-n", changed=True)
    record = msgpack.unpackb(ev.encode_label_event(label))
    assert record["concept"] == "wn:09444100-n" and record["changed"] is True
    assert ev.decode_label_event(ev.encode_label_event(label)) == label
    # a record from before these fields, and one from a later version with a field this one lacks
    del record["concept"], record["changed"]
    older = ev.decode_label_event(msgpack.packb(record))
    assert older.concept is None and older.changed is None and older.label == "star"
    assert ev.decode_label_event(msgpack.packb({**record, "added_later": 1})).event_id == "e1"


@pytest.mark.parametrize("record, message", [
    ({"v": 1, "stream_id": "s", "uri": "s3://b/k"}, "event_id must be a non-empty string"),
    ({"v": 2, "event_id": "e", "stream_id": "s", "uri": "s3://b/k"}, "schema version 2"),
    ({"v": 1, "event_id": "e", "stream_id": "s"}, "exactly one of uri and image"),
    ({"v": 1, "event_id": "e", "stream_id": "s", "uri": "x", "image": b"y"}, "exactly one of uri and image"),
    ({"v": 1, "event_id": "e", "stream_id": "s", "image": "text"}, "image must be bytes"),
    ({"v": 1, "event_id": "e", "stream_id": "s", "uri": "x", "ts": "noon"}, "ts must be a number"),
    ({"v": 1, "event_id": "e", "stream_id": "s", "uri": "x", "attrs": [1]}, "attrs must be a map"),
    ({"v": 1, "event_id": "e", "stream_id": "s", "uri": "x", "colour": "red"}, "unknown fields: colour"),
])
def test_invalid_events_say_what_is_wrong(record, message):
    with pytest.raises(ev.InvalidEvent, match=message) as err:
        ev.decode_image_event(msgpack.packb(record))
    if isinstance(record.get("event_id"), str):
        assert err.value.event_id == record["event_id"]


def test_non_msgpack_values_are_invalid():
    for value in (b"", None, b"\xc1", msgpack.packb([1, 2]), b"{\"json\": true}"):
        with pytest.raises(ev.InvalidEvent):
            ev.decode_image_event(value)


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("field, value, message", [
    ("event_id", "e" * (ev.MAX_ID_BYTES + 1), "event_id is longer than 256 bytes"),
    ("stream_id", "é" * (ev.MAX_ID_BYTES // 2 + 1), "stream_id is longer than 256 bytes"),  # bytes, not characters
    ("uri", "s3://b/" + "k" * ev.MAX_URI_BYTES, "uri is longer than"),
    ("attrs", {"a": nested(ev.MAX_ATTRS_DEPTH)}, "nested more than 8 levels"),
    ("attrs", {"a": nested(400)}, "nested more than 8 levels"),
    ("attrs", {"a": "x" * ev.MAX_ATTRS_BYTES}, "attrs take more than"),
])
def test_fields_over_their_bound_are_invalid(field, value, message):
    record = {"v": 1, "event_id": "e", "stream_id": "s", "uri": "s3://b/k", field: value}
    with pytest.raises(ev.InvalidEvent, match=message) as err:
        ev.decode_image_event(msgpack.packb(record))
    # an id over its bound is not echoed; the other one is
    assert err.value.event_id == (None if field == "event_id" else "e")
    assert err.value.stream_id == (None if field == "stream_id" else "s")


def test_fields_at_their_bound_are_valid():
    record = {"v": 1, "event_id": "e" * ev.MAX_ID_BYTES, "stream_id": "s" * ev.MAX_ID_BYTES,
              "uri": "s3://b/" + "k" * (ev.MAX_URI_BYTES - 7), "attrs": {"a": nested(ev.MAX_ATTRS_DEPTH - 1)}}
    assert ev.decode_image_event(msgpack.packb(record)).event_id == record["event_id"]


def test_many_unknown_fields_make_a_short_detail():
    record = {"v": 1, "event_id": "e", "stream_id": "s", "uri": "x", **{f"f{i:05d}": i for i in range(10_000)}}
    with pytest.raises(ev.InvalidEvent) as err:
        ev.decode_image_event(msgpack.packb(record))
    assert err.value.detail == "unknown fields: f00000, f00001, f00002, f00003, f00004 and 9995 more"


def test_a_dead_letter_is_bounded_and_says_what_it_cut():
    letter = ev.dead_letter(ev.NOT_AN_IMAGE, "d" * 5000, b"p" * 1_000_000, "e" * 300, "cam")
    assert letter.truncated and letter.payload_size == 1_000_000
    assert letter.payload == b"p" * ev.MAX_DEAD_PAYLOAD_BYTES and len(letter.detail) == ev.MAX_DETAIL_CHARS
    assert letter.event_id is None and letter.stream_id == "cam"
    assert ev.decode_dead_letter(ev.encode_dead_letter(letter)) == letter
    small = ev.dead_letter(ev.NOT_AN_IMAGE, "bad", b"abc", "e1", "cam")
    assert not small.truncated and small.payload == b"abc" and small.payload_size == 3
    assert "truncated" not in msgpack.unpackb(ev.encode_dead_letter(small))
