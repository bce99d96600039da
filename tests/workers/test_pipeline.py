"""The batch pipeline without a broker: history entries per batch, total replays, per-record isolation."""
from __future__ import annotations

import asyncio
import dataclasses

import msgpack
import pytest
from PIL import Image

from cased_core.classifier import Classifier
from cased_core.history import HistoryPolicy
from tests.workers.conftest import png, shape
from tests.workers.faults import CYAN, MAGENTA, flat, poisoned
from topics import events as ev
from workers.fetch import Fetcher, FetchLimits
from workers.histories import BatchHistories, MemoryStore, answer_key, state_key
from workers.pipeline import Pipeline


def make_pipeline(model, database, lexicon, tmp_path=None, answers: int = 64) -> Pipeline:
    return Pipeline(Classifier(model, database), Fetcher(FetchLimits(file_root=tmp_path)), HistoryPolicy(), lexicon,
                    database.name, answers=answers)


def run(pipeline: Pipeline, *batches, store=None, partitions=None) -> list[list]:
    """Each batch of events through the pipeline, in turn, over one history store."""
    store = store if store is not None else MemoryStore()

    async def go():
        try:
            return [await pipeline.process([ev.encode_image_event(e) if isinstance(e, ev.ImageEvent) else e
                                            for e in batch], store, partitions=partitions) for batch in batches]
        finally:
            await pipeline.close()

    return asyncio.run(go())


def flat_image(colour) -> bytes:
    return png(Image.new("RGB", (64, 64), colour))


def test_batch_histories_read_each_stream_once_and_write_one_entry_per_answer():
    store = MemoryStore()
    batch = BatchHistories(store, answers=2)
    assert batch.state("a") is None and batch.answered("a", "e0") is None
    for i in range(3):
        batch.answer(5, "a", f"e{i}", ev.LABELS_OUT, b"label %d" % i)
    batch.set_state("a", {"n": 1})
    assert store == {}  # nothing written before write_back
    batch.write_back()
    # answers past the bound are deleted, not kept: e0 was written and removed in the same batch
    assert set(store) == {state_key("a"), answer_key("a", "e1"), answer_key("a", "e2")}
    assert set(store.partitions.values()) == {5}  # the images.in partition the events came from
    assert msgpack.unpackb(store[state_key("a")]) == {"history": {"n": 1}, "answered": ["e1", "e2"]}
    again = BatchHistories(store, answers=2)
    assert again.answered("a", "e2") == (ev.LABELS_OUT, b"label 2") and again.answered("a", "e0") is None
    assert again.state("a") == {"n": 1}


def test_a_batch_writes_each_stream_once_and_re_deliveries_replay(tiny_model, tiny_database, lexicon):
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon)
    events = [ev.ImageEvent(event_id=f"f{i}", stream_id="cam" if i < 3 else "other", image=shape("star", i))
              for i in range(4)]
    store = MemoryStore()
    first, again = run(pipeline, events, events, store=store, partitions=[2, 2, 2, 3])
    assert store.writes[state_key("cam")] == 1 and store.writes[state_key("other")] == 1  # replays write nothing
    assert all(store.writes[answer_key(e.stream_id, e.event_id)] == 1 for e in events)
    assert store.partitions[state_key("other")] == 3
    labels = [ev.decode_label_event(o.value) for o in first]
    assert [l.event_id for l in labels] == ["f0", "f1", "f2", "f3"]
    assert [o.value for o in again] == [o.value for o in first]  # re-delivered: identical records


def test_a_dead_lettered_event_replays_its_dead_letter_even_once_its_image_exists(tiny_model, tiny_database,
                                                                                lexicon, tmp_path):
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon, tmp_path)
    late = ev.ImageEvent("late", "cam", uri=f"file://{tmp_path / 'late.png'}")
    store = MemoryStore()

    async def go():
        try:
            before = await pipeline.process([ev.encode_image_event(late)], store)
            (tmp_path / "late.png").write_bytes(shape("moon", 1))
            return before, await pipeline.process([ev.encode_image_event(late)], store)
        finally:
            await pipeline.close()

    before, after = asyncio.run(go())
    assert before[0].topic == ev.DEAD_LETTER and before[0].reason == ev.NOT_FOUND
    assert after == before  # the same dead letter, never a label


def test_an_event_published_twice_in_one_batch_gets_one_identical_record(tiny_model, tiny_database, lexicon):
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon)
    event = ev.ImageEvent("twice", "cam", image=shape("star", 3))
    [outputs] = run(pipeline, [event, ev.ImageEvent("other", "cam", image=shape("heart", 4)), event])
    assert outputs[0] == outputs[2] and outputs[0].topic == ev.LABELS_OUT
    assert ev.decode_label_event(outputs[1].value).history[-2:] == \
        [ev.decode_label_event(outputs[0].value).label, ev.decode_label_event(outputs[1].value).label]


def test_a_preprocess_failure_dead_letters_that_image_only(tiny_model, tiny_database, lexicon):
    def preprocess(image):
        if flat(image, CYAN):
            raise ValueError("broken preprocess")
        return tiny_model.preprocess(image)

    pipeline = make_pipeline(dataclasses.replace(tiny_model, preprocess=preprocess), tiny_database, lexicon)
    events = [ev.ImageEvent("a", "cam", image=shape("star", 1)), ev.ImageEvent("bad", "cam", image=flat_image(CYAN)),
              ev.ImageEvent("b", "cam", image=shape("heart", 2))]
    [outputs] = run(pipeline, events)
    assert [o.topic for o in outputs] == [ev.LABELS_OUT, ev.DEAD_LETTER, ev.LABELS_OUT]
    letter = ev.decode_dead_letter(outputs[1].value)
    assert letter.reason == ev.INTERNAL_ERROR and letter.detail == "ValueError: broken preprocess"
    assert letter.event_id == "bad" and letter.payload == ev.encode_image_event(events[1])


@pytest.mark.parametrize("poisoned_at", [[0], [5], [2, 6]])
def test_an_encoder_failure_is_isolated_by_splitting_the_batch(tiny_model, tiny_database, lexicon, poisoned_at):
    model = dataclasses.replace(tiny_model)
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        if poisoned(pixels):
            raise RuntimeError("encoder fault")
        return tiny_model.encode_pixels(pixels)

    model.encode_pixels = encode
    pipeline = make_pipeline(model, tiny_database, lexicon)
    events = [ev.ImageEvent(f"e{i}", f"s{i % 3}", image=flat_image(MAGENTA) if i in poisoned_at else shape("star", i))
              for i in range(8)]
    [outputs] = run(pipeline, events)
    reasons = [ev.decode_dead_letter(o.value).reason if o.topic == ev.DEAD_LETTER else None for o in outputs]
    assert reasons == [ev.INTERNAL_ERROR if i in poisoned_at else None for i in range(8)]
    assert calls[0] == 8 and len(calls) <= 1 + 4 * len(poisoned_at) * 3  # halves, not one image at a time


def test_a_corrupt_history_entry_fails_its_stream_only(tiny_model, tiny_database, lexicon):
    store = MemoryStore()
    store[state_key("broken")] = b"\xc1 not msgpack"
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon)
    [outputs] = run(pipeline, [ev.ImageEvent("x", "broken", image=shape("star", 1)),
                               ev.ImageEvent("y", "fine", image=shape("star", 2))], store=store)
    assert outputs[0].topic == ev.DEAD_LETTER and ev.decode_dead_letter(outputs[0].value).reason == ev.INTERNAL_ERROR
    assert outputs[1].topic == ev.LABELS_OUT


def test_every_output_fits_a_kafka_record_whatever_the_producer_sends(tiny_model, tiny_database, lexicon):
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon)
    big_attrs = {"note": "x" * (ev.MAX_ATTRS_BYTES - 100)}
    values = [
        ev.encode_image_event(ev.ImageEvent("big-image", "cam", image=b"\x00" * 1_000_000)),
        ev.encode_image_event(ev.ImageEvent("s" * 2_000_000, "cam", image=b"x")),
        ev.encode_image_event(ev.ImageEvent("e", "c" * 1_000_000, image=b"x")),
        *[ev.encode_image_event(ev.ImageEvent(f"a{i}", "attrs", image=shape("star", i), attrs=big_attrs))
          for i in range(3)],
    ]
    store = MemoryStore()
    [outputs] = run(pipeline, values, store=store)
    assert [o.reason for o in outputs] == [ev.NOT_AN_IMAGE, ev.INVALID_EVENT, ev.INVALID_EVENT, None, None, None]
    assert all(len(o.value) < 100_000 and (o.key is None or len(o.key) <= ev.MAX_ID_BYTES) for o in outputs)
    assert all(len(value) < 100_000 for value in store.values())
    letter = ev.decode_dead_letter(outputs[0].value)
    assert letter.truncated and letter.payload_size == len(values[0]) and letter.payload == values[0][:len(letter.payload)]
    assert ev.decode_dead_letter(outputs[2].value).stream_id is None  # too long to echo


def test_warm_up_gives_a_cheap_encoder_one_thread_and_a_cpu_bound_one_every_cpu(tiny_model, tiny_database, lexicon,
                                                                                tmp_path):
    import numpy as np

    from cased_core.database import Database
    from cased_core.database_build import build_from_embeddings
    from cased_core.model import load_model
    from workers.pipeline import ENCODER_PARALLEL_MS, usable_cpus

    cheap = make_pipeline(tiny_model, tiny_database, lexicon)
    cheap.warm_up(4)
    assert 0 < cheap.encoder_ms < ENCODER_PARALLEL_MS and cheap.torch_threads == 1
    vit = load_model("ViT-B-32", device="cpu")  # random init: the architecture's cost at 224 px
    embeddings = np.random.default_rng(0).standard_normal((20, vit.dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    database = Database(build_from_embeddings([f"a star sticker {i}" for i in range(20)], embeddings, tmp_path / "db",
                                              vit.identity, vit.encode_texts, lexicon, show_progress=False))
    costly = make_pipeline(vit, database, lexicon)
    costly.warm_up(2)
    assert costly.encoder_ms >= ENCODER_PARALLEL_MS and costly.torch_threads == usable_cpus()
    given = Pipeline(Classifier(tiny_model, tiny_database), Fetcher(FetchLimits()), HistoryPolicy(), lexicon,
                     tiny_database.name, torch_threads=3)
    given.warm_up(2)
    assert given.torch_threads == 3
    for pipeline in (cheap, costly, given):
        asyncio.run(pipeline.close())


def test_the_batched_jpeg_decoder_labels_jpegs_and_dead_letters_the_broken_one(tiny_model, tiny_database, lexicon):
    """jpeg_decoder='torchvision' (what a GPU worker uses, nvJPEG there), on the CPU: plain JPEGs are
    decoded a batch at a time in the inference thread, a truncated one becomes its own not_an_image dead
    letter, and what it cannot take (CMYK, PNG) goes through the decode threads as before."""
    import io

    import numpy as np
    from PIL import Image

    from cased_core import tinyworld

    def jpeg(image: Image.Image, mode: str = "RGB") -> bytes:
        out = io.BytesIO()
        image.convert(mode).save(out, "JPEG", quality=90)
        return out.getvalue()

    star = tinyworld.render(np.random.default_rng(3), "star", size=64)[0]
    good = jpeg(star)
    images = {"jpeg": good, "truncated": good[:len(good) // 2], "cmyk": jpeg(star, "CMYK"), "png": shape("star", 3)}
    pipeline = Pipeline(Classifier(tiny_model, tiny_database), Fetcher(FetchLimits()), HistoryPolicy(), lexicon,
                        tiny_database.name, jpeg_decoder="torchvision")
    assert pipeline.batched_jpeg and pipeline.serving()["jpeg_decoder"] == "torchvision on cpu"
    [outputs] = run(pipeline, [ev.ImageEvent(event_id=name, stream_id=name, image=data)
                               for name, data in images.items()])
    assert [o.topic for o in outputs] == [ev.LABELS_OUT, ev.DEAD_LETTER, ev.LABELS_OUT, ev.LABELS_OUT]
    letter = ev.decode_dead_letter(outputs[1].value)
    assert letter.reason == ev.NOT_AN_IMAGE and letter.event_id == "truncated" and "decode" in letter.detail
    with pytest.raises(ValueError, match="choose one of"):
        Pipeline(Classifier(tiny_model, tiny_database), Fetcher(FetchLimits()), HistoryPolicy(), lexicon,
                 tiny_database.name, jpeg_decoder="nvjpeg")


def test_labels_say_their_concept_and_when_the_stream_changed(tiny_model, tiny_database, lexicon):
    from cased_core.lexicon import concept_id

    pipeline = make_pipeline(tiny_model, tiny_database, lexicon)
    frames = [shape("star", 200 + i) for i in range(5)] + [shape("heart", 300 + i) for i in range(6)]
    events = [ev.ImageEvent(event_id=f"e{i}", stream_id="cam", image=data) for i, data in enumerate(frames)]
    outputs = [o for batch in run(pipeline, events[:4], events[4:]) for o in batch]
    labels = [ev.decode_label_event(o.value) for o in outputs]
    consistent = [label.label for label in labels]
    expected = [True] + [a != b for a, b in zip(consistent, consistent[1:])]
    assert [label.changed for label in labels] == expected  # across the two batches too
    assert sum(expected) >= 2  # the first label, and the change to what the heart frames show
    assert all(label.concept == concept_id(label.label, lexicon) for label in labels)
