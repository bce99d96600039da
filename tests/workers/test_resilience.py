"""A real worker against hostile producers, injected faults, crashes and failing commits: every event
still ends as exactly one record, and the worker neither crashes nor grows."""
from __future__ import annotations

import signal
import time

import msgpack
from PIL import Image

from tests.workers.conftest import (
    PARTITIONS, TOPICS, by_event, collect, http_get, png, read_outputs, send, shape, wait_ready,
)
from tests.workers.faults import CYAN, MAGENTA
from tests.workers.images import hostile_images
from topics import events as ev
from workers.clients import ensure_topics, image_event, producer

# Over its idle footprint (about 1 GB here, mostly torch), what the hostile corpus may cost the worker
# at its peak (README: "What a worker promises"; measured: about +165 MB).
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
