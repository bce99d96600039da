"""A prediction -> its label event, through its stream's history (cased_core.method.history).

The stream's policy comes from its event's `attrs.history` (else the worker's default); the history
keeps one name per concept (same WordNet synset, or text embeddings closer than SAME_CONCEPT) and, for
live streams, a label that follows scenes. The stream's new state is kept only once the record exists.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import numpy as np

from cased_core.method import history
from cased_core.method.classifier import Classifier, Prediction
from cased_core.method.lexicon import Lexicon, concept_id
from topics import events as ev
from workers.histories import BatchHistories
from workers.outcomes import Output

SAME_CONCEPT = 0.9  # cosine of two names' text embeddings from which they name one concept


class Labeller:
    """Args:
        classifier: the model and database (their versions go in every label; names' text embeddings).
        policy: the default history policy, and the settings of every policy.
        lexicon: WordNet's nouns: synonyms, concept ids.
        database_name: the database's version, in every label.
        clock: `ts_out`.
    """

    def __init__(self, classifier: Classifier, policy: history.HistoryPolicy, lexicon: Lexicon, database_name: str,
                 clock: Callable[[], float] = time.time):
        self.classifier, self.policy, self.lexicon = classifier, policy, lexicon
        self.database_name, self.clock = database_name, clock
        self._policies = {mode: history.HistoryPolicy(**{**asdict(policy), "mode": mode}) for mode in history.POLICIES}

    def label(self, event: ev.ImageEvent, prediction: Prediction, histories: BatchHistories,
              reused: str | None = None) -> Output:
        """The label event of `event`, its stream's history applied; `reused`: the event whose result the
        change gate gave this one."""
        policy = self._policies.get(event.attrs.get(ev.HISTORY_ATTR), self.policy)
        before = histories.state(event.stream_id)
        outcome = history.apply(before, prediction.candidates or ((prediction.label, prediction.score),), policy,
                                self.same_concept, prediction.embedding, event.ts, repeated=reused is not None)
        label = ev.LabelEvent(
            event_id=event.event_id, stream_id=event.stream_id, label=outcome.label, raw_label=prediction.label,
            score=round(prediction.score, 6), candidates=[[n, round(p, 6)] for n, p in prediction.candidates],
            history=outcome.history, model=self.classifier.model.identity, database=self.database_name,
            ts_in=event.ts, ts_out=self.clock(), attrs=event.attrs, concept=concept_id(outcome.label, self.lexicon),
            changed=before is None or history.current(before) != outcome.label, reused=reused)
        value = ev.encode_label_event(label)
        histories.set_state(event.stream_id, outcome.state)  # only once the record exists
        return Output(ev.LABELS_OUT, event.stream_id.encode(), value, reused=reused is not None)

    def same_concept(self, a: str, b: str) -> bool:
        if a in self.lexicon and b in self.lexicon and self.lexicon.same_concept(a, b):
            return True
        va, vb = self.classifier.terms.lookup(a), self.classifier.terms.lookup(b)
        return va is not None and vb is not None and float(np.dot(va, vb)) >= SAME_CONCEPT
