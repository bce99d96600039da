"""What each images.in record of a batch ends as: exactly one Output, a label or a dead letter.

A batch's `Outcomes` holds one slot per record, filled once, whatever stage decides: an invalid event,
a record's fault (`fail`: the one place a failure becomes a record, a dead letter), a replay of the
record answered before, a copy of an event published twice in the batch, or its label.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from topics import events as ev
from workers.failures import RecordFault, SystemFault, fault_of

log = logging.getLogger("cased.worker")


@dataclass(frozen=True)
class Output:
    topic: str  # LABELS_OUT or DEAD_LETTER (the configured names are mapped by the app)
    key: bytes | None
    value: bytes
    reason: str | None = None  # a dead letter's reason, for the worker's counters
    reused: bool = False  # a label the change gate answered from an earlier frame, for the counters


def dead_letter(fault: RecordFault | SystemFault, payload: bytes | None, event_id: str | None,
                stream_id: str | None) -> Output:
    """The record a record's fault becomes. A system fault is never charged to a record: it is raised.

    Raises:
        SystemFault: `fault` is one (waited out where it happened, it should never get here).
    """
    if not isinstance(fault, RecordFault):
        raise fault
    if fault.reason == ev.INTERNAL_ERROR:
        log.warning("event %r of stream %r failed (%s): dead-lettered as %s", (event_id or "")[:80],
                    (stream_id or "")[:80], fault.detail, ev.INTERNAL_ERROR,
                    extra={"event_id": event_id, "stream_id": stream_id})
    letter = ev.dead_letter(fault.reason, fault.detail, payload, event_id, stream_id)
    return Output(ev.DEAD_LETTER, letter.stream_id.encode() if letter.stream_id else None,
                  ev.encode_dead_letter(letter), fault.reason)


class Outcomes:
    """One batch's records, in input order: each slot set once.

    Args:
        values: the batch's images.in values (a dead letter carries its record's value).
    """

    def __init__(self, values: Sequence[bytes | None]):
        self.values = values
        self._records: list[Output | None] = [None] * len(values)
        self._copies: dict[int, int] = {}

    def invalid(self, i: int, err: ev.InvalidEvent) -> None:
        """Record i is not an event of the contract: deterministic, so a re-delivery gets the same."""
        self.set(i, dead_letter(RecordFault(ev.INVALID_EVENT, err.detail), self.values[i], err.event_id,
                                err.stream_id))

    def fail(self, i: int, event: ev.ImageEvent, err: BaseException) -> None:
        """Event i failed on its own: its dead letter is its record."""
        self.set(i, dead_letter(fault_of(err), self.values[i], event.event_id, event.stream_id))

    def replay(self, i: int, event: ev.ImageEvent, topic: str, value: bytes) -> None:
        """Event i was answered before: the very same record again."""
        self.set(i, Output(topic, event.stream_id.encode(), value,
                           ev.decode_dead_letter(value).reason if topic == ev.DEAD_LETTER else None))

    def copy(self, i: int, first: int) -> None:
        """Event i is event `first` published again in this batch: its record, once `first` has one."""
        self._copies[i] = first

    def set(self, i: int, output: Output) -> None:
        if self._records[i] is not None:
            raise ValueError(f"record {i} of the batch was answered twice")
        self._records[i] = output

    def answered(self, i: int) -> bool:
        return self._records[i] is not None

    def get(self, i: int) -> Output | None:
        return self._records[i]

    def records(self) -> list[Output]:
        """Every record, in input order.

        Raises:
            ValueError: a record was left without an outcome (a bug: every record must get one).
        """
        for i, first in self._copies.items():
            self._records[i] = self._records[first]
        missing = [i for i, r in enumerate(self._records) if r is None]
        if missing:
            raise ValueError(f"records {missing} of the batch have no outcome")
        return list(self._records)  # type: ignore[arg-type]
