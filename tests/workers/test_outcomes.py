"""A batch's outcomes: one record per value, set once, dead letters made in one place."""
from __future__ import annotations

import pytest

from topics import events as ev
from workers.failures import STORAGE, RecordFault, SystemFault
from workers.outcomes import Output, Outcomes, dead_letter


def test_every_record_gets_exactly_one_outcome_and_a_copy_gets_its_first_s():
    event = ev.ImageEvent("e", "cam", image=b"x")
    values = [b"\xc1", ev.encode_image_event(event), ev.encode_image_event(event), b"label"]
    outcomes = Outcomes(values)
    outcomes.invalid(0, ev.InvalidEvent("not a msgpack map", None, None))
    outcomes.fail(1, event, ValueError("bad pixels"))
    outcomes.copy(2, 1)
    with pytest.raises(ValueError, match=r"records \[3\]"):
        outcomes.records()  # one is missing: never a batch with a record short
    outcomes.set(3, Output(ev.LABELS_OUT, b"cam", b"label"))
    with pytest.raises(ValueError, match="answered twice"):
        outcomes.set(3, Output(ev.LABELS_OUT, b"cam", b"again"))
    records = outcomes.records()
    assert [r.reason for r in records] == [ev.INVALID_EVENT, ev.INTERNAL_ERROR, ev.INTERNAL_ERROR, None]
    assert records[2] is records[1] and ev.decode_dead_letter(records[1].value).detail == "ValueError: bad pixels"
    assert ev.decode_dead_letter(records[1].value).payload == values[1]


def test_a_system_fault_never_becomes_a_dead_letter():
    with pytest.raises(SystemFault):
        dead_letter(SystemFault(STORAGE, "connection refused"), b"value", "e", "cam")
    letter = dead_letter(RecordFault(ev.NOT_FOUND, "s3://b/k does not exist"), b"value", "e", "cam")
    assert letter.topic == ev.DEAD_LETTER and letter.key == b"cam" and letter.reason == ev.NOT_FOUND
