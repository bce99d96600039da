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
