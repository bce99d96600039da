"""One batch's change-gate decisions (cased_core.method.gate) over its streams' gate states.

Before the model: each gate-eligible frame, in event order per stream, is either sent to the model
(and becomes its stream's reference at once) or answered from its reference: a frame of this batch
sent to the model, or the result stored with the stream from an earlier batch. After the model: each
gated frame gets its reference's prediction (a reference that failed sends its frames to the model
after all), and each stream's gate state, tuned by what the model saw, goes back to its history.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cased_core.method import gate
from cased_core.method.classifier import Prediction
from workers.failures import RecordFault
from workers.histories import BatchHistories


@dataclass
class Reuse:
    """Where a gated frame's result comes from: a frame of this batch (`index`), or the result stored
    with its stream (`stored`, with the id of the event it belongs to)."""
    event_id: str
    index: int | None = None
    stored: dict | None = None


class BatchGate:
    """Args:
        policy: when a classification is due whatever the thumbnails say.
        histories: the batch's view of the stream histories (gate states are read and written there).
    """

    def __init__(self, policy: gate.GatePolicy, histories: BatchHistories):
        self.policy, self.histories = policy, histories
        self._states: dict[str, dict | None] = {}  # each stream's state as the decisions go
        self._before: dict[str, dict | None] = {}  # ... as the batch found it
        self._sent: dict[str, list[tuple[int, str]]] = {}  # per stream: (index, why) of frames sent to the model
        self.reuses: dict[int, Reuse] = {}  # index of a gated frame -> where its result comes from

    def sort(self, items: Sequence) -> list:
        """The items the model must see, in order; the others are gated (`reuses`). An item is gate-
        eligible when it has a thumbnail (`item.thumb`)."""
        to_model = []
        for item in items:
            stream, thumb = item.event.stream_id, item.thumb
            if thumb is None:
                to_model.append(item)
                continue
            if stream not in self._states:
                self._states[stream] = self._before[stream] = self.histories.gate(stream)
            why, self._states[stream] = gate.decide(self._states[stream], thumb, item.event.ts, self.policy)
            sent = self._sent.setdefault(stream, [])
            if why is not None:
                sent.append((item.index, why))
                to_model.append(item)
            elif sent:
                self.reuses[item.index] = Reuse(self._event_of(items, sent[-1][0]), index=sent[-1][0])
            else:
                stored = self._states[stream]
                self.reuses[item.index] = Reuse(stored["event"], stored=stored["result"])
        return to_model

    def resolve(self, index: int, predictions: dict[int, Prediction | RecordFault]) -> Prediction | None:
        """A gated frame's prediction: its reference's; None when the reference failed (classify it)."""
        reuse = self.reuses[index]
        if reuse.stored is not None:
            stored = reuse.stored
            embedding = None if stored["embedding"] is None else gate.unpack_embedding(stored["embedding"])
            return Prediction(stored["label"], stored["score"], tuple((n, p) for n, p in stored["candidates"]),
                              embedding=embedding)
        found = predictions.get(reuse.index)
        return found if isinstance(found, Prediction) else None

    def write(self, predictions: dict[int, Prediction | RecordFault], events: dict) -> None:
        """Each stream's gate state after the batch: its references' results, in order. A reference that
        failed leaves the stream with no reference (its next frame is classified)."""
        for stream, sent in self._sent.items():
            state, before = self._states[stream], self._before[stream]
            previous = None if before is None else before.get("result")
            for index, why in sent:
                prediction = predictions.get(index)
                if not isinstance(prediction, Prediction):
                    state = None
                    break
                result = {"label": prediction.label, "score": prediction.score,
                          "candidates": [list(c) for c in prediction.candidates], "embedding": _quantise(prediction)}
                state = gate.classified(state, events[index].event_id, result, why, previous)
                previous = result
            self.histories.set_gate(stream, state)
        for stream in self._states.keys() - self._sent.keys():
            self.histories.set_gate(stream, self._states[stream])

    @staticmethod
    def _event_of(items: Sequence, index: int) -> str:
        return next(item.event.event_id for item in items if item.index == index)


def _quantise(prediction: Prediction) -> bytes | None:
    return None if prediction.embedding is None else gate.pack_embedding(prediction.embedding)
