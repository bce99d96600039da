"""The batch pipeline without a broker: history reads and writes per batch, replays."""
from __future__ import annotations

import asyncio
import io
from collections import Counter

import numpy as np

from cased_core import tinyworld
from cased_core.classifier import Classifier
from cased_core.history import HistoryPolicy
from topics import events as ev
from workers.fetch import Fetcher, FetchLimits
from workers.pipeline import BatchHistories, Pipeline


class CountingTable(dict):
    """A stream_id -> state mapping that counts reads and writes, like the worker's Faust table."""

    def __init__(self):
        super().__init__()
        self.reads, self.writes = Counter(), Counter()

    def get(self, key, default=None):
        self.reads[key] += 1
        return super().get(key, default)

    def __setitem__(self, key, value):
        self.writes[key] += 1
        super().__setitem__(key, value)


def frame(category: str, seed: int) -> bytes:
    out = io.BytesIO()
    tinyworld.render(np.random.default_rng(seed), category, size=64)[0].save(out, format="PNG")
    return out.getvalue()


def test_batch_histories_read_each_stream_once_and_write_back_only_changes():
    table = CountingTable()
    table["a"] = {"n": 1}
    table.writes.clear()
    batch = BatchHistories(table)
    assert batch.get("a") == {"n": 1} and batch.get("a") == {"n": 1} and batch.get("b", {}) == {}
    batch["a"] = {"n": 2}
    batch["a"] = {"n": 3}
    assert table["a"] == {"n": 1}  # nothing written before write_back
    batch.write_back()
    assert table == {"a": {"n": 3}} and table.writes == Counter({"a": 1})
    assert table.reads == Counter({"a": 1, "b": 1})


def test_a_batch_writes_each_stream_once_and_re_deliveries_replay(tiny_model, tiny_database, lexicon):
    pipeline = Pipeline(Classifier(tiny_model, tiny_database), Fetcher(FetchLimits()), HistoryPolicy(), lexicon,
                        tiny_database.name)
    events = [ev.ImageEvent(event_id=f"f{i}", stream_id="cam" if i < 3 else "other", image=frame("star", i))
              for i in range(4)]
    values = [ev.encode_image_event(e) for e in events]
    table = CountingTable()

    async def go():
        try:
            return await pipeline.process(values, table), await pipeline.process(values, table)
        finally:
            await pipeline.close()

    first, again = asyncio.run(go())
    assert table.writes == Counter({"cam": 1, "other": 1})  # once per stream; the replayed batch writes none
    assert set(table["cam"]["replay"]) == {"f0", "f1", "f2"}
    labels = [ev.decode_label_event(o.value) for o in first]
    assert [l.event_id for l in labels] == ["f0", "f1", "f2", "f3"]
    assert [o.value for o in again] == [o.value for o in first]  # re-delivered: identical records
