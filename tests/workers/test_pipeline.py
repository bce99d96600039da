"""The batch pipeline without a broker: history entries per batch, total replays, per-record isolation."""
from __future__ import annotations

import asyncio
import dataclasses

import msgpack
import pytest
from PIL import Image

from cased_core.method.classifier import Classifier
from tests.workers.helpers import jpeg, png, run, shape
from tests.workers.faults import CYAN, MAGENTA, flat, poisoned
from topics import events as ev
from workers.fetch import Fetcher, FetchLimits
from workers.histories import BatchHistories, MemoryStore, answer_key, state_key
from workers.pipeline import Pipeline
from workers.settings import Settings


def make_pipeline(model, database, lexicon, tmp_path=None, fetcher=None, **settings) -> Pipeline:
    """A pipeline around a loaded model and database, not warmed up; the change gate off unless
    `settings` say otherwise (the tests that count model calls must see every frame reach the model)."""
    return Pipeline.init(Settings(**{"gate_frames": 1, **settings}), classifier=Classifier(model, database),
                         fetcher=fetcher or Fetcher(FetchLimits(file_root=tmp_path)), lexicon=lexicon, warm_up=False)


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


# Model calls (their sizes, in order) for a batch of 8 with magenta images at these positions: each
# failing call is followed by the known-good check (1), then its halves; an image failing alone is its
# own dead letter.
ISOLATION_CALLS = {
    (0,): [8, 1, 4, 1, 2, 1, 1, 1, 1, 2, 4],
    (5,): [8, 1, 4, 4, 1, 2, 1, 1, 1, 1, 2],
    (2, 6): [8, 1, 4, 1, 2, 2, 1, 1, 1, 1, 4, 1, 2, 2, 1, 1, 1, 1],
}


@pytest.mark.parametrize("poisoned_at", ISOLATION_CALLS)
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
    assert calls == ISOLATION_CALLS[poisoned_at]  # halves, not one image at a time
    assert not pipeline.outages.count  # the model answered for a known-good image: never paused


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


def test_intra_op_threads_follow_the_encoder_s_measured_cost():
    from workers.inference import ENCODER_PARALLEL_MS, intra_op_threads

    assert intra_op_threads("cpu", ENCODER_PARALLEL_MS / 2, cpus=6) == 1  # cheaper than the worker's own work
    assert intra_op_threads("cpu", ENCODER_PARALLEL_MS, cpus=6) == 6  # the encoder is the bound
    assert intra_op_threads("cuda", 100 * ENCODER_PARALLEL_MS, cpus=6) == 1  # the host only launches kernels


def test_warm_up_measures_the_encoder_and_applies_the_thread_decision(tiny_model, tiny_database, lexicon, monkeypatch):
    from workers import inference as inference_module

    asked = []

    def decide(device, encoder_ms, cpus):
        asked.append((device, encoder_ms, cpus))
        return 3

    monkeypatch.setattr(inference_module, "intra_op_threads", decide)
    measured = make_pipeline(tiny_model, tiny_database, lexicon)
    measured.warm_up()
    encoder_ms = measured.inference.encoder_ms
    assert asked == [("cpu", encoder_ms, inference_module.usable_cpus())] and encoder_ms > 0
    assert measured.serving()["threads"]["torch"] == 3
    given = make_pipeline(tiny_model, tiny_database, lexicon, torch_threads=2)
    given.warm_up()
    assert given.serving()["threads"]["torch"] == 2 and len(asked) == 1  # a given count is not decided again
    for pipeline in (measured, given):
        asyncio.run(pipeline.close())


def test_the_batched_jpeg_decoder_labels_jpegs_and_dead_letters_the_broken_one(tiny_model, tiny_database, lexicon):
    """jpeg_decoder='torchvision' (what a GPU worker uses, nvJPEG there), on the CPU: plain JPEGs are
    decoded a batch at a time in the inference thread, a truncated one becomes its own not_an_image dead
    letter, and what it cannot take (CMYK, PNG) goes through the decode threads as before."""
    import numpy as np

    from cased_core.tinyworld import world as tinyworld

    star = tinyworld.render(np.random.default_rng(3), "star", size=64)[0]
    good = jpeg(star)
    images = {"jpeg": good, "truncated": good[:len(good) // 2], "cmyk": jpeg(star, "CMYK"), "png": shape("star", 3)}
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon, jpeg_decoder="torchvision")
    assert pipeline.serving()["jpeg_decoder"] == "torchvision on cpu"
    [outputs] = run(pipeline, [ev.ImageEvent(event_id=name, stream_id=name, image=data)
                               for name, data in images.items()])
    assert [o.topic for o in outputs] == [ev.LABELS_OUT, ev.DEAD_LETTER, ev.LABELS_OUT, ev.LABELS_OUT]
    letter = ev.decode_dead_letter(outputs[1].value)
    assert letter.reason == ev.NOT_AN_IMAGE and letter.event_id == "truncated" and "decode" in letter.detail
    from workers.inference import ModelInput

    with pytest.raises(ValueError, match="choose one of"):
        ModelInput.of(tiny_model, "nvjpeg")


def test_labels_say_their_concept_and_when_the_stream_changed(tiny_model, tiny_database, lexicon):
    from cased_core.method.lexicon import concept_id
    from cased_core.tinyworld.cameras import names_of, scripted

    pipeline = make_pipeline(tiny_model, tiny_database, lexicon)
    frames = scripted("cam", [("star", 5), ("heart", 6)], seed=2).frames  # one camera: a star, a cut, a heart
    events = [ev.ImageEvent(event_id=f"e{i}", stream_id="cam", image=png(frame.image), ts=frame.t)
              for i, frame in enumerate(frames)]
    outputs = [o for batch in run(pipeline, events[:4], events[4:]) for o in batch]
    labels = [ev.decode_label_event(o.value) for o in outputs]
    changes = [i for i, label in enumerate(labels) if label.changed]
    # the first label, then the cut to the heart, followed at once or confirmed by the next frame (steady)
    assert changes in ([0, 5], [0, 6]), [label.label for label in labels]  # across the two batches too
    assert labels[0].label in names_of("star") and labels[-1].label in names_of("heart")
    assert all(label.concept == concept_id(label.label, lexicon) for label in labels)


# --- a fault of the system is not a fault of the record ---------------------------------------------

@pytest.fixture
def quick_retries(monkeypatch):
    from workers import outages

    monkeypatch.setattr(outages, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(outages, "RETRY_MAX_S", 0.02)


def during(pipeline: Pipeline, values: list, fixed, store=None):
    """Runs `values` through the pipeline; once it is paused, calls `fixed()` (the dependency comes
    back) and returns the outputs, and what /status would have said while it was paused."""
    async def go():
        try:
            task = asyncio.ensure_future(pipeline.process(values, store if store is not None else MemoryStore()))
            while not pipeline.outages.paused():
                assert not task.done(), task.result()  # answered without pausing: the test is wrong
                await asyncio.sleep(0.01)
            paused = pipeline.outages.status()
            fixed()
            return await task, paused
        finally:
            await pipeline.close()

    return asyncio.run(go())


def test_a_model_failing_for_every_image_pauses_and_labels_every_event_once_it_is_back(
        tiny_model, tiny_database, lexicon, quick_retries):
    model, broken, calls = dataclasses.replace(tiny_model), [True], []

    def encode(pixels):
        calls.append(len(pixels))
        if broken[0]:
            raise RuntimeError("CUDA error: out of resources for this kernel")  # fails for every input
        return tiny_model.encode_pixels(pixels)

    model.encode_pixels = encode
    pipeline = make_pipeline(model, tiny_database, lexicon)
    events = [ev.ImageEvent(f"e{i}", "cam", image=shape("star", i)) for i in range(8)]
    outputs, paused = during(pipeline, [ev.encode_image_event(e) for e in events], lambda: broken.__setitem__(0, False))
    assert [o.topic for o in outputs] == [ev.LABELS_OUT] * 8  # nothing dead-lettered
    assert [ev.decode_label_event(o.value).event_id for o in outputs] == [e.event_id for e in events]
    assert set(paused["paused"]) == {"model"} and "known-good" in paused["paused"]["model"]["detail"]
    assert calls[:2] == [8, 1]  # the batch, then the check: no bisection of a model that is down
    assert pipeline.outages.count == {"model": 1} and not pipeline.outages.paused()


def test_storage_failing_for_everyone_pauses_and_every_event_is_labelled_once_it_is_back(
        tiny_model, tiny_database, lexicon, tmp_path, quick_retries):
    from workers.failures import STORAGE, SystemFault

    down = [True]

    class Storage(Fetcher):
        async def fetch(self, event):
            if down[0]:
                raise SystemFault(STORAGE, "S3 endpoint: Could not connect")
            return await super().fetch(event)

    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(shape("moon", i))
    pipeline = make_pipeline(tiny_model, tiny_database, lexicon, fetcher=Storage(FetchLimits(file_root=tmp_path)))
    events = [ev.ImageEvent(f"f{i}", "cam", uri=f"file://{tmp_path / f'{i}.png'}") for i in range(4)]
    events.insert(2, ev.ImageEvent("inline", "cam", image=shape("moon", 9)))
    outputs, paused = during(pipeline, [ev.encode_image_event(e) for e in events], lambda: down.__setitem__(0, False))
    assert [o.topic for o in outputs] == [ev.LABELS_OUT] * 5
    labels = [ev.decode_label_event(o.value) for o in outputs]
    assert [label.event_id for label in labels] == [e.event_id for e in events]  # in stream order
    assert [label.history[-1] for label in labels] == [label.label for label in labels]
    assert set(paused["paused"]) == {STORAGE} and pipeline.outages.count == {STORAGE: 1}


def test_out_of_memory_settles_on_a_smaller_batch_and_grows_back(tiny_model, tiny_database, lexicon):
    import torch

    model, pressure, calls = dataclasses.replace(tiny_model), [True], []

    def encode(pixels):
        calls.append(len(pixels))
        if pressure[0] and len(pixels) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tiny_model.encode_pixels(pixels)

    model.encode_pixels = encode
    pipeline = make_pipeline(model, tiny_database, lexicon, batch_size=8)
    now = [0.0]
    pipeline.batch_limit.clock = lambda: now[0]
    store = MemoryStore()

    def batch(n: int) -> list[bytes]:
        return [ev.encode_image_event(ev.ImageEvent(f"b{n}-{i}", f"s{i}", image=shape("star", i))) for i in range(8)]

    async def go():
        outputs = []
        try:
            outputs += await pipeline.process(batch(0), store)
            assert (calls, pipeline.batch_limit.size) == ([8, 4, 2, 2, 2, 2], 2)  # two failing calls, then fits
            pressure[0] = False
            for n in (1, 2, 3):
                calls.clear()
                now[0] += pipeline.batch_limit.regrow_s
                outputs += await pipeline.process(batch(n), store)
                sizes.append(list(calls))
        finally:
            await pipeline.close()
        return outputs

    sizes: list[list[int]] = []
    outputs = asyncio.run(go())
    assert all(o.topic == ev.LABELS_OUT for o in outputs) and len(outputs) == 32
    assert sizes == [[2, 4, 2], [4, 4], [8]]  # doubles after regrow_s at a size, each growth proven first
    assert pipeline.batch_limit.out_of_memory == 2 and not pipeline.outages.count


def test_an_image_out_of_memory_alone_is_its_own_dead_letter(tiny_model, tiny_database, lexicon):
    import torch

    model = dataclasses.replace(tiny_model)

    def encode(pixels):
        if poisoned(pixels):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return tiny_model.encode_pixels(pixels)

    model.encode_pixels = encode
    pipeline = make_pipeline(model, tiny_database, lexicon)
    events = [ev.ImageEvent(f"e{i}", "cam", image=flat_image(MAGENTA) if i == 1 else shape("heart", i))
              for i in range(4)]
    [outputs] = run(pipeline, events)
    assert [o.reason for o in outputs] == [None, ev.INTERNAL_ERROR, None, None]
    assert "OutOfMemoryError" in ev.decode_dead_letter(outputs[1].value).detail
    assert pipeline.batch_limit.size == 1 and not pipeline.outages.count


def test_a_lost_device_ends_the_batch_without_a_record(tiny_model, tiny_database, lexicon):
    from workers.failures import DeviceLost

    model, calls = dataclasses.replace(tiny_model), []

    def encode(pixels):
        calls.append(len(pixels))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    model.encode_pixels = encode
    pipeline = make_pipeline(model, tiny_database, lexicon)
    with pytest.raises(DeviceLost) as caught:
        run(pipeline, [ev.ImageEvent(f"e{i}", "cam", image=shape("star", i)) for i in range(4)])
    assert calls == [4] and "illegal memory access" in caught.value.detail  # no bisection, no dead letters


def test_a_paused_batch_is_abandoned_when_told(tiny_model, tiny_database, lexicon, quick_retries):
    from workers.outages import Abandoned

    model = dataclasses.replace(tiny_model)

    def encode(pixels):
        raise RuntimeError("the model server is gone")

    model.encode_pixels = encode
    pipeline = make_pipeline(model, tiny_database, lexicon)
    with pytest.raises(Abandoned):
        during(pipeline, [ev.encode_image_event(ev.ImageEvent("e", "cam", image=shape("star", 1)))],
               pipeline.outages.abandon)


# --- the change gate -----------------------------------------------------------------------------------

def still_frames(category: str, seed: int, n: int, noise_seed: int = 0) -> list[bytes]:
    """One rendered scene held for n frames with sensor noise: PNG bytes."""
    import numpy as np

    from cased_core.tinyworld import world as tinyworld

    base = np.asarray(tinyworld.render(np.random.default_rng(seed), category, size=64)[0], np.float32)
    rng = np.random.default_rng(noise_seed)
    return [png(Image.fromarray(np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype("uint8")))
            for _ in range(n)]


def gated_pipeline(tiny_model, tiny_database, lexicon, calls: list, gate_frames: int = 30) -> Pipeline:
    model = dataclasses.replace(tiny_model)

    def encode(pixels):
        calls.append(len(pixels))
        return tiny_model.encode_pixels(pixels)

    model.encode_pixels = encode
    return make_pipeline(model, tiny_database, lexicon, gate_frames=gate_frames, gate_seconds=60)


def test_the_gate_answers_unchanged_frames_from_the_stream_s_last_classified_one(tiny_model, tiny_database, lexicon):
    calls: list[int] = []
    pipeline = gated_pipeline(tiny_model, tiny_database, lexicon, calls)
    frames = still_frames("star", 1, 12) + still_frames("heart", 2, 6, noise_seed=1)
    camera = [ev.ImageEvent(f"c{i}", "cam", image=data, ts=100.0 + i) for i, data in enumerate(frames)]
    uploads = [ev.ImageEvent(f"u{i}", "up", image=data, attrs={"history": "upload"}) for i, data in enumerate(frames[:4])]
    opted = [ev.ImageEvent(f"o{i}", "opt", image=data, attrs={"gate": "off"}) for i, data in enumerate(frames[:4])]
    store = MemoryStore()
    first, again = run(pipeline, camera[:8] + uploads + opted, camera[8:], store=store)
    labels = {l.event_id: l for l in (ev.decode_label_event(o.value) for o in first + again)}
    assert len(labels) == 26 and all(o.topic == ev.LABELS_OUT for o in first + again)
    reused = {i: labels[f"c{i}"].reused for i in range(18)}
    # a new stream's first five frames; then the fifth's result, across the two batches too
    assert all(reused[i] is None for i in range(5)) and all(reused[i] == "c4" for i in range(5, 12))
    assert reused[12] is None and reused[13] is None and all(reused[i] == "c13" for i in range(14, 18))  # the cut
    assert [labels[f"c{i}"].raw_label for i in range(5, 12)] == [labels["c4"].raw_label] * 7
    assert all(labels[f"{s}{i}"].reused is None for s in "uo" for i in range(4))  # never gated
    assert sum(calls) == 7 + 4 + 4  # the cold start, the cut and a second look, every upload and opted-out frame
    # the history saw every frame: one change, confirmed (steady) by the gated frame after the cut
    assert [labels[f"c{i}"].changed for i in range(18)] == [True] + [False] * 12 + [True] + [False] * 4


def test_a_gated_stream_replays_identically_and_refreshes_every_max_frames(tiny_model, tiny_database, lexicon):
    calls: list[int] = []
    pipeline = gated_pipeline(tiny_model, tiny_database, lexicon, calls, gate_frames=4)
    camera = [ev.ImageEvent(f"c{i}", "cam", image=data) for i, data in enumerate(still_frames("moon", 3, 10))]
    store = MemoryStore()
    first, replayed = run(pipeline, camera, camera, store=store)
    assert [o.value for o in replayed] == [o.value for o in first]  # re-delivered: the very same records
    reused = [ev.decode_label_event(o.value).reused for o in first]
    assert reused == [None] * 5 + ["c4", "c4", "c4", None, "c8"] and sum(calls) == 6
