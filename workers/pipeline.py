"""One batch of images.in values -> labels.out and images.dlq records, independent of Faust.

Read top to bottom, a batch's way (the worker runs the two halves overlapped: workers/flow.py):

1. `prepare` (workers/prepare.py): read each value as an event, fetch its bytes, decode its image;
2. `finish`:
   a. replays: an event answered before gets the very same record again;
   b. `_infer`: the change gate (workers/gating.py) answers the frames that did not change from their
      stream's last classified one; the others go to the model (workers/inference.py);
   c. each prediction becomes its label through its stream's history (workers/labelling.py);
   d. every record is kept in its stream's history for re-deliveries, and the histories written back.

Every input value yields exactly one record (workers/outcomes.py), whatever fails, and whose fault a
failure is decides what (workers/failures.py): the record's, its dead letter; the system's (the
storage, the model, memory), no record: the step waits the outage out (workers/outages.py) and the
batch stays unanswered until the dependency is back; a lost device raises DeviceLost, which ends the
worker.
"""
from __future__ import annotations

from typing import Sequence

from cased_core.method import gate
from cased_core.method.classifier import Classifier, Prediction
from cased_core.method.lexicon import Lexicon
from workers.batch import Batch, Decoded
from workers.costs import StageCosts
from workers.failures import RecordFault
from workers.fetch import Fetcher
from workers.gating import BatchGate
from workers.histories import MAX_ANSWERS, BatchHistories, HistoryStore
from workers.inference import Inference, ModelInput, usable_cpus
from workers.labelling import Labeller
from workers.outages import Outages
from workers.outcomes import Output
from workers.prepare import Preparer
from workers.settings import Settings
from workers.telemetry import NULL_TRACE, BatchTrace, NullTrace


class Pipeline:
    """`init` builds one from settings; `__init__` only stores the parts."""

    @classmethod
    def init(cls, settings: Settings, classifier: Classifier | None = None, fetcher: Fetcher | None = None,
             costs: StageCosts | None = None, lexicon: Lexicon | None = None, warm_up: bool = True) -> "Pipeline":
        """A pipeline for `settings`: the model and database loaded (the slow part of start-up) unless
        `classifier` is given, warmed up (see Inference.warm_up).

        Args:
            settings: the worker's settings (model, database, batching, history, gate, limits, threads).
            classifier: the model and database, already loaded (tests, benchmarks, evaluation).
            fetcher: the fetcher (default: one with `settings`' limits).
            costs: where the CPU time per stage adds up (default: a new one).
            lexicon: WordNet's nouns (default: the shipped one, loaded).
            warm_up: classify a batch of blank frames before returning (a worker's first events wait less).

        Raises:
            ModelLoadError, DatabaseError: the model or database cannot be loaded.

        Examples:
            >>> pipeline = Pipeline.init(Settings(model="tiny", database="tiny"))  # doctest: +SKIP
        """
        from cased_core.method.lexicon import load_lexicon  # in the loading thread: it reads a 2 MB table

        if classifier is None:
            from cased_core.artifacts.model import load_model
            from workers.databases import load_database, search_budget_mb

            model = load_model(settings.model, settings.pretrained, settings.device)
            database = load_database(settings.database, model.identity, settings.cache_dir)
            database.use_search(settings.search, model.device, search_budget_mb(settings.search_memory_mb, model.device))
            classifier = Classifier(model, database, config=settings.classifier_config())
        costs, outages = costs or StageCosts(), Outages(budget_s=settings.outage_budget_s)
        policy, gate_policy = settings.history(), settings.gate()
        model_input = ModelInput.of(classifier.model, settings.jpeg_decoder)
        preparer = Preparer(fetcher or Fetcher(settings.fetch_limits()), outages, model_input, settings.image_limits(),
                            settings.decode_threads or usable_cpus(), costs, gate_policy, policy.mode, MAX_ANSWERS)
        inference = Inference(classifier, model_input, settings.batch_size, outages, costs,
                              settings.torch_threads or None)
        labeller = Labeller(classifier, policy, lexicon or load_lexicon(), classifier.database.name)
        pipeline = cls(preparer, inference, labeller, gate_policy)
        if warm_up:
            pipeline.warm_up()
        return pipeline

    def __init__(self, preparer: Preparer, inference: Inference, labeller: Labeller,
                 gate_policy: gate.GatePolicy | None):
        self.preparer, self.inference, self.labeller, self.gate_policy = preparer, inference, labeller, gate_policy
        self.classifier, self.costs, self.outages = inference.classifier, inference.costs, inference.outages
        self.batch_limit, self.answers = inference.batch_limit, preparer.answers

    @property
    def database_name(self) -> str:
        return self.labeller.database_name

    def same_concept(self, a: str, b: str) -> bool:
        return self.labeller.same_concept(a, b)

    def warm_up(self) -> None:
        self.inference.warm_up()

    def serving(self) -> dict:
        """How this pipeline runs, for /status and benchmarks."""
        return {**self.inference.serving(),
                "threads": {"decode": self.preparer.decode_threads, "torch": self.inference.torch_threads}}

    async def close(self) -> None:
        await self.preparer.close()
        self.inference.close()

    async def process(self, values: Sequence[bytes | None], histories: HistoryStore,
                      trace: BatchTrace | NullTrace = NULL_TRACE,
                      partitions: Sequence[int | None] | None = None) -> list[Output]:
        """Records for `values` (in order, one each): `prepare` then `finish`.

        Args:
            values: images.in record values, each partition's in offset order.
            histories: the stream histories (a ChangelogStore in the worker), read and written in event
                order, once per stream per batch.
            trace: gets the stages (workers.telemetry).
            partitions: the images.in partition of each value; a stream's history entries are
                written to the changelog partition of the same number.
        """
        return await self.finish(await self.prepare(values, histories, trace, partitions), histories)

    async def prepare(self, values: Sequence[bytes | None], histories: HistoryStore,
                      trace: BatchTrace | NullTrace = NULL_TRACE,
                      partitions: Sequence[int | None] | None = None) -> Batch:
        """Everything before the model (workers/prepare.py); needs no other batch finished."""
        return await self.preparer.prepare(values, histories, trace, partitions)

    async def finish(self, batch: Batch, histories: HistoryStore) -> list[Output]:
        """The model, then each stream's history in event order: the batch's records, in order. The
        previous batch must be finished (its histories written) before this one starts."""
        view = BatchHistories(histories, self.answers)
        with self.costs.measure("history"):
            replayed = self._replay(batch, view)
            todo = [item for item in batch.ready if not batch.outcomes.answered(item.index)]
            for item in todo:
                item.extras = view.names(item.event.stream_id)
        predictions, reused = await self._infer(todo, view, batch.trace)
        with self.costs.measure("history"):
            for item in todo:
                prediction = predictions[item.index]
                try:
                    if isinstance(prediction, RecordFault):
                        raise prediction
                    with batch.trace.stage("history", item.index):
                        batch.outcomes.set(item.index, self.labeller.label(item.event, prediction, view,
                                                                           reused.get(item.index)))
                except Exception as err:
                    batch.outcomes.fail(item.index, item.event, err)
            self._remember(batch, view, replayed)
        return batch.outcomes.records()

    def _replay(self, batch: Batch, view: BatchHistories) -> set[int]:
        """Events answered before get the very same record; an unreadable history entry fails its event
        only. Returns the indexes whose record is not to be remembered again."""
        skipped = set()
        for i, event in batch.events.items():
            try:
                stored = view.answered(event.stream_id, event.event_id)
            except Exception as err:
                batch.outcomes.fail(i, event, err)
                skipped.add(i)
                continue
            if stored is not None:
                batch.outcomes.replay(i, event, *stored)
                skipped.add(i)
        return skipped

    async def _infer(self, items: list[Decoded], view: BatchHistories,
                     trace: BatchTrace | NullTrace) -> tuple[dict[int, Prediction | RecordFault], dict[int, str]]:
        """Each item's prediction by index, and for the frames the change gate answered from an earlier
        frame, that frame's event id."""
        if self.gate_policy is None:
            return dict(zip((item.index for item in items), await self.inference.classify(items, trace))), {}
        with self.costs.measure("gate"):
            gating = BatchGate(self.gate_policy, view)
            to_model = gating.sort(items)
        predictions = dict(zip((item.index for item in to_model), await self.inference.classify(to_model, trace)))
        with self.costs.measure("gate"):
            unreferenced = []  # gated frames whose reference failed in the model: classified after all
            for item in items:
                if item.index in gating.reuses:
                    found = gating.resolve(item.index, predictions)
                    if found is None:
                        unreferenced.append(item)
                    else:
                        predictions[item.index] = found
            gating.write(predictions, {item.index: item.event for item in items})
        if unreferenced:
            predictions.update(zip((item.index for item in unreferenced),
                                   await self.inference.classify(unreferenced, trace)))
        reused = {index: reuse.event_id for index, reuse in gating.reuses.items()
                  if index not in {item.index for item in unreferenced}}
        return predictions, reused

    @staticmethod
    def _remember(batch: Batch, view: BatchHistories, replayed: set[int]) -> None:
        """Every record answered now kept for re-deliveries, labels and dead letters alike; then each
        stream's history written back once."""
        for i, event in batch.events.items():
            if i not in replayed:
                record = batch.outcomes.get(i)
                view.answer(batch.partitions[i], event.stream_id, event.event_id, record.topic, record.value)
        view.write_back()
