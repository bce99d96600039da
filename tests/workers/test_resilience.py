"""A real worker against hostile producers, injected faults, crashes and failing commits: every event
still ends as exactly one record, and the worker neither crashes nor grows."""
from __future__ import annotations

import signal
import time

import msgpack
import pytest
from PIL import Image

from tests.workers.helpers import (
    PARTITIONS, TOPICS, by_event, collect, http_get, png, read_outputs, send, shape, wait_ready,
)
from tests.workers.faults import CYAN, MAGENTA
from tests.workers.images import hostile_images
from topics import events as ev
from workers.clients import ensure_topics, image_event, producer

# Over its idle footprint (about 1 GB here, mostly torch), what the hostile corpus may cost the worker
# at its peak (docs/streaming.md: "What a worker promises"; measured: about +165 MB).
PEAK_GROWTH_BOUND_MB = 400


def raw_event(record: dict) -> bytes:
    return msgpack.packb({"v": 1, **record}, use_bin_type=True)


def nested(depth: int):
    value: object = "deep"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_hostile_producers_never_crash_or_bloat_a_worker(broker, workers, tmp_path):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    root = tmp_path / "files"
    root.mkdir()
    worker = workers(broker.url, {"CASED_FILE_ROOT": str(root), "CASED_S3_BUCKETS": "frames",
                                  "CASED_FETCH_RETRIES": "0", "CASED_FETCH_TIMEOUT_S": "2"})
    wait_ready(worker)
    idle_mb = worker.peak_rss_mb()
    hostile = {  # event_id -> (value, expected dead-letter reason)
        "nul-file": (raw_event({"event_id": "nul-file", "stream_id": "h", "uri": f"file://{root}/a%00b.png"}), None),
        "long-name": (raw_event({"event_id": "long-name", "stream_id": "h", "uri": f"file://{root}/{'n' * 300}.png"}),
                      ev.NOT_FOUND),
        "bad-ipv6-http": (raw_event({"event_id": "bad-ipv6-http", "stream_id": "h", "uri": "http://[::1/x.png"}),
                          ev.UNSUPPORTED_SOURCE),
        "bad-ipv6-s3": (raw_event({"event_id": "bad-ipv6-s3", "stream_id": "h", "uri": "s3://[frames/x.png"}),
                        ev.UNSUPPORTED_SOURCE),
        "deep-attrs": (raw_event({"event_id": "deep-attrs", "stream_id": "h", "image": shape("star", 1),
                                  "attrs": nested(300)}), ev.INVALID_EVENT),
        "huge-attrs": (raw_event({"event_id": "huge-attrs", "stream_id": "h", "image": shape("star", 2),
                                  "attrs": {"x": "y" * 500_000}}), ev.INVALID_EVENT),
        "huge-stream": (raw_event({"event_id": "huge-stream", "stream_id": "s" * 900_000, "image": b"x"}),
                        ev.INVALID_EVENT),
        "huge-non-image": (raw_event({"event_id": "huge-non-image", "stream_id": "h", "image": b"\x07" * 900_000}),
                           ev.NOT_AN_IMAGE),
    }
    for name, (data, reason) in hostile_images().items():
        if len(data) > 512 * 1024:  # too big for an inline event: through a file, as a producer would
            (root / name).write_bytes(data)
            event = ev.ImageEvent(f"img-{name}", "imgs", uri=f"file://{root / name}")
        else:
            event = ev.ImageEvent(f"img-{name}", "imgs", image=data)
        hostile[event.event_id] = (ev.encode_image_event(event), reason)
    # A stream whose events all carry attrs near the bound: its history must not outgrow a record.
    attrs = {"note": "z" * (ev.MAX_ATTRS_BYTES - 64)}
    chatty = [ev.ImageEvent(f"chatty-{i}", "chatty", image=shape("heart", 10 + i), attrs=attrs) for i in range(80)]
    good = [ev.ImageEvent(f"good-{i}", "cam", image=shape("moon", 100 + i)) for i in range(4)]
    client = producer(broker.url, max_request_size=4 * 1024 * 1024)
    for future in [client.send("images.in", key=b"hostile", value=v) for v, _ in hostile.values()]:
        future.get(30)  # the broker took it
    client.close()
    send(broker.url, chatty + good)
    expected = len(hostile) + len(chatty) + len(good)
    records = collect(broker.url, expected, timeout_s=240, quiet_s=5)
    answers = by_event(records)
    assert worker.process.poll() is None, worker.log.read_text()[-3000:]
    missing = (set(hostile) | {e.event_id for e in chatty + good}) - set(answers)
    assert not missing, sorted(missing)
    assert len(records) == expected, "exactly one record per event"
    for event_id, (_, reason) in hostile.items():
        [(topic, value)] = answers[event_id]
        if reason is None and event_id == "nul-file":
            assert topic == ev.DEAD_LETTER  # refused or not found: never a crash
        elif reason is None:
            assert topic == ev.LABELS_OUT, (event_id, ev.decode_dead_letter(value))
        else:
            assert topic == ev.DEAD_LETTER and ev.decode_dead_letter(value).reason == reason, event_id
    huge = ev.decode_dead_letter(answers["huge-stream"][0][1])
    assert huge.stream_id is None and huge.truncated and huge.payload_size > 900_000  # bounded, and says so
    assert all(topic == ev.LABELS_OUT for e in chatty + good for topic, _ in answers[e.event_id])
    growth = worker.peak_rss_mb() - idle_mb
    print(f"worker peak RSS: {idle_mb:.0f} MB when ready, +{growth:.0f} MB over the hostile corpus")
    assert growth < PEAK_GROWTH_BOUND_MB, growth


def test_a_failing_preprocess_or_encoder_dead_letters_only_the_culprits(broker, workers):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url, {"CASED_BATCH_SIZE": "16", "CASED_MAX_WAIT_S": "1.0"},
                     faults={"preprocess": True, "encoder": True})
    wait_ready(worker)
    flat = {"cyan": png(Image.new("RGB", (64, 64), CYAN)), "magenta": png(Image.new("RGB", (64, 64), MAGENTA))}
    events = [image_event("cam", shape("star", i), event_id=f"ok-{i}") for i in range(6)]
    events[2:2] = [image_event("cam", flat["cyan"], event_id="cyan")]
    events[5:5] = [image_event("cam", flat["magenta"], event_id="magenta")]
    send(broker.url, events)
    records = collect(broker.url, len(events))
    answers = by_event(records)
    assert len(records) == len(events) and set(answers) == {e.event_id for e in events}
    for name, detail in (("cyan", "ValueError: injected preprocess fault"),
                         ("magenta", "RuntimeError: injected encoder fault")):
        [(topic, value)] = answers[name]
        letter = ev.decode_dead_letter(value)
        assert topic == ev.DEAD_LETTER and letter.reason == ev.INTERNAL_ERROR and letter.detail == detail
    assert all(answers[f"ok-{i}"][0][0] == ev.LABELS_OUT for i in range(6))
    assert worker.process.poll() is None


def test_a_dead_letter_is_replayed_after_a_crash_even_once_the_image_exists(broker, s3_endpoint, workers):
    """not_found, then the object appears, then the event is re-delivered: still the dead letter."""
    url, s3 = s3_endpoint
    s3.create_bucket(Bucket="frames")
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "CASED_S3_BUCKETS": "frames", "CASED_FETCH_RETRIES": "0"}
    first = workers(broker.url, env, faults={"commit_fails_after": 0})  # nothing committed: all re-delivered
    send(broker.url, [image_event("cam", "s3://frames/late.png", event_id="late"),
                      image_event("cam", shape("star", 1), event_id="labelled")])
    records = collect(broker.url, 2)
    assert {ev.decode_dead_letter(v).reason for t, v in records if t == ev.DEAD_LETTER} == {ev.NOT_FOUND}
    s3.put_object(Bucket="frames", Key="late.png", Body=shape("moon", 2))
    first.stop(signal.SIGKILL)
    second = workers(broker.url, env)
    deadline = time.monotonic() + 60
    while len(read_outputs(broker.url)) < 4:  # both events answered again
        assert time.monotonic() < deadline, second.log.read_text()[-3000:]
        time.sleep(0.5)
    answers = by_event(collect(broker.url, 2, quiet_s=5))
    assert len(answers["late"]) == 2 and answers["late"][0] == answers["late"][1]  # re-delivered, identical
    assert all(topic == ev.DEAD_LETTER for topic, _ in answers["late"])
    assert len(answers["labelled"]) == 2 and answers["labelled"][0] == answers["labelled"][1]


def test_commits_that_keep_failing_make_the_worker_stop_and_say_why(broker, workers):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url, faults={"commit_fails_after": 1})
    wait_ready(worker)
    sent = 0
    deadline = time.monotonic() + 120
    while http_get(worker.web_port, "/live")[0] == 200:
        assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
        send(broker.url, [image_event("cam", shape("star", sent), event_id=f"c{sent}")])
        sent += 1
        collect(broker.url, sent, timeout_s=30, quiet_s=0)
    code, status = http_get(worker.web_port, "/status")
    assert code == 200 and status["halted"] and "injected commit failure" in status["halted"]
    assert status["live"] is False and status["commit_failures_in_a_row"] >= 3
    assert "taking no more events" in worker.log.read_text()
    answered_before = len(read_outputs(broker.url))
    send(broker.url, [image_event("cam", shape("heart", 99), event_id="after-halt")])
    records = collect(broker.url, sent + 1, timeout_s=8, quiet_s=0)  # a quiet period: it never comes
    assert len(records) == answered_before, "a halted worker took a new event"
    assert worker.process.poll() is None


# --- a fault of the system is not a fault of the record ---------------------------------------------

def wait_for(condition, timeout_s: float, worker, what: str):
    """Polls `condition()` until it is true; fails with the worker's log tail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not seen after {timeout_s}s: {worker.log.read_text()[-3000:]}"
        time.sleep(0.2)


def status(worker) -> dict:
    return http_get(worker.web_port, "/status")[1]


def published_in_order(records, events) -> None:
    """One label per event, none dead-lettered, each stream's labels in its events' order."""
    answers = by_event(records)
    assert set(answers) == {e.event_id for e in events}
    assert all(len(answers[e.event_id]) == 1 for e in events), "exactly one record per event"
    assert all(topic == ev.LABELS_OUT for e in events for topic, _ in answers[e.event_id]), \
        [ev.decode_dead_letter(v) for t, v in records if t == ev.DEAD_LETTER][:3]
    labels = [ev.decode_label_event(value) for topic, value in records if topic == ev.LABELS_OUT]
    for stream in {e.stream_id for e in events}:
        assert [l.event_id for l in labels if l.stream_id == stream] == \
            [e.event_id for e in events if e.stream_id == stream]


@pytest.mark.parametrize("mode, outage_s", [("refuse", 30.0), ("slow_down", 15.0)])
def test_storage_failing_for_everyone_pauses_the_worker_and_loses_nothing(broker, s3_endpoint, workers, mode,
                                                                          outage_s):
    """A steady stream of 4 events/s from S3; the S3 endpoint refuses every connection (or answers 503
    SlowDown) for a while in the middle: every event labelled once it is back, none dead-lettered, each
    stream in order, the worker not ready during the outage and ready after."""
    from tests.workers.proxy import PASS, SwitchableProxy

    url, s3 = s3_endpoint
    s3.create_bucket(Bucket="frames")
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    rate, before_s, after_s = 4.0, 10.0, 5.0
    count = int(rate * (before_s + outage_s + after_s))
    for i in range(count):
        s3.put_object(Bucket="frames", Key=f"{i}.png", Body=shape(("star", "moon")[i % 2], i))
    events = [image_event(f"cam-{i % 2}", f"s3://frames/{i}.png", event_id=f"f{i}") for i in range(count)]
    with SwitchableProxy(int(url.rsplit(":", 1)[1])) as proxy:
        worker = workers(broker.url, {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "CASED_S3_BUCKETS": "frames",
            "CASED_FETCH_TIMEOUT_S": "2", "CASED_MAX_WAIT_S": "0.2"})
        wait_ready(worker)
        client = producer(broker.url)
        started, switched, not_ready = time.monotonic(), {}, False
        for i, event in enumerate(events):  # paced: a steady stream, not a condition to wait for
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            elapsed = time.monotonic() - started
            if "down" not in switched and elapsed >= before_s:
                proxy.switch(mode)
                switched["down"] = time.monotonic()
            if "back" not in switched and elapsed >= before_s + outage_s:
                proxy.switch(PASS)
                switched["back"], back_at = time.monotonic(), time.time()
            if "down" in switched and "back" not in switched and not not_ready:
                code, body = http_get(worker.web_port, "/ready")
                if code == 503:
                    not_ready = True
                    paused = status(worker)["paused"]
                    assert set(paused) == {"storage"} and paused["storage"]["since"] > 0, paused
            client.send("images.in", key=event.stream_id.encode(), value=ev.encode_image_event(event))
        client.flush()
        client.close()
        records = collect(broker.url, count, timeout_s=120, quiet_s=3)
    assert not_ready, "the worker never said it was paused"
    published_in_order(records, events)
    # Caught up: the storage back, until the last event published during the outage had its label.
    held = {e.event_id for i, e in enumerate(events) if i / rate < before_s + outage_s}
    caught_up = max(ev.decode_label_event(v).ts_out for t, v in records if t == ev.LABELS_OUT
                    and ev.decode_label_event(v).event_id in held) - back_at
    wait_for(lambda: http_get(worker.web_port, "/ready")[0] == 200, 30, worker, "ready again")
    final = status(worker)
    assert final["outages"] == {"storage": 1} and final["paused"] == {} and final["dead_letters"] == {}
    assert final["paused_s"]["storage"] > 0.5 * outage_s
    print(f"{mode}: {count} events, outage {outage_s:.0f} s, dead letters {sum(final['dead_letters'].values())}, "
          f"paused {final['paused_s']['storage']:.1f} s, every held event labelled {caught_up:.1f} s after the "
          "storage came back")


def model_going_down(broker, workers, switch, error: str):
    """A ready worker whose encoder raises `error` for everything once `switch` exists, 8 events
    labelled before: (worker, those events)."""
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url, {"CASED_MAX_WAIT_S": "0.2"},
                     faults={"encoder_fails_while": {"path": str(switch), "error": error}})
    wait_ready(worker)
    first = [image_event("cam", shape("star", i), event_id=f"a{i}") for i in range(8)]
    send(broker.url, first)
    collect(broker.url, len(first), quiet_s=0)
    switch.touch()
    return worker, first


def test_a_model_failing_for_every_image_pauses_and_resumes(broker, workers, tmp_path):
    switch = tmp_path / "model-down"
    worker, first = model_going_down(broker, workers, switch, "CUDA error: unknown error")
    during = [image_event("cam", shape("moon", i), event_id=f"b{i}") for i in range(16)]
    send(broker.url, during)
    wait_for(lambda: http_get(worker.web_port, "/ready")[0] == 503, 60, worker, "not ready")
    paused = status(worker)["paused"]
    assert set(paused) == {"model"} and "known-good" in paused["model"]["detail"]
    assert http_get(worker.web_port, "/live")[0] == 200  # within the outage budget
    time.sleep(10)  # the outage's length: the model stays down for this long
    assert len(read_outputs(broker.url)) == len(first), "an event was answered while the model was down"
    switch.unlink()
    records = collect(broker.url, len(first) + len(during), timeout_s=60)
    published_in_order(records, first + during)
    final = status(worker)
    assert final["outages"] == {"model": 1} and final["dead_letters"] == {} and final["ready"]


def test_a_lost_device_ends_the_worker_and_a_restart_labels_every_event(broker, workers, tmp_path):
    lost, first = model_going_down(broker, workers, tmp_path / "device-lost",
                                   "CUDA error: an illegal memory access was encountered")
    later = [image_event("cam", shape("heart", i), event_id=f"b{i}") for i in range(12)]
    send(broker.url, later)
    assert lost.process.wait(60) == 3, lost.log.read_text()[-3000:]  # EXIT_DEVICE_LOST: restart it clean
    assert "the device failed for good" in lost.log.read_text()
    assert len(read_outputs(broker.url)) == len(first)  # nothing answered, nothing dead-lettered
    restarted = workers(broker.url, {"CASED_MAX_WAIT_S": "0.2"})
    records = collect(broker.url, len(first) + len(later), timeout_s=90)
    published_in_order(records, first + later)
    assert restarted.process.poll() is None


def test_out_of_memory_on_large_batches_settles_on_a_smaller_batch_and_grows_back(broker, workers, tmp_path):
    switch = tmp_path / "memory-pressure"
    switch.touch()
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url, {"CASED_BATCH_SIZE": "8", "CASED_MAX_WAIT_S": "0.5"},
                     faults={"oom_above_while": {"path": str(switch), "images": 2}})
    wait_ready(worker)
    sent: list = []

    def burst(n: int) -> None:
        events = [image_event(f"s{i % 3}", shape("star", len(sent) + i), event_id=f"e{len(sent) + i}")
                  for i in range(n)]
        send(broker.url, events)
        sent.extend(events)
        collect(broker.url, len(sent), quiet_s=0)

    for _ in range(6):
        burst(8)
    pressured = status(worker)
    assert pressured["model_batch_size"] == 2 and pressured["dead_letters"] == {}
    switch.unlink()
    wait_for(lambda: burst(8) or status(worker)["model_batch_size"] == 8, 120, worker, "the batch size back at 8")
    records = collect(broker.url, len(sent))
    published_in_order(records, sent)
    final = status(worker)
    # Two calls to settle (8 -> 4 -> 2), then a failed growth per doubling wait: a handful, not one per batch.
    assert final["out_of_memory"] <= 5 and final["outages"] == {}
    print(f"out of memory: {len(sent)} events, {final['counters']['batches']} batches, "
          f"{final['out_of_memory']} failing model calls")
