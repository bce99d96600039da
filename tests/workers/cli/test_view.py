"""`cased view`: the state (pure logic, figures computed by hand), the server against a real broker and
worker, and the page in a real browser (Debian's Chromium, headless, driven over its DevTools protocol)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from cased_core.tinyworld.cameras import names_of, scripted
from tests.workers.helpers import PARTITIONS, REPO, TOPICS, png, send, wait_ready
from topics import events as ev
from workers.clients import ensure_topics, image_event
from workers.decode import ImageLimits
from workers.fetch import Fetcher, FetchLimits
from workers.settings import Settings
from workers.cli.view import Page, ViewServer, make_thumbnail
from workers.cli.view_state import OTHER_REASON, RateCounter, ViewState, partition_lag

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `.ci/run` installs it
ARTIFACTS = REPO / "test-artifacts"  # ignored by git; CI keeps what the browser test saves there


def label(stream: str, name: str, n: int, changed: bool | None = None, raw: str | None = None,
          **fields) -> ev.LabelEvent:
    return ev.LabelEvent(**{"event_id": f"{stream}-{n}", "stream_id": stream, "label": name, "raw_label": raw or name,
                            "score": 0.8, "candidates": [[name, 0.8], ["other", 0.2]], "history": [], "model": "m",
                            "database": "d", "ts_in": 100.0 + n, "ts_out": 100.5 + n, "concept": f"wn:{name}",
                            "changed": changed, **fields})


# -- the state ---------------------------------------------------------------------------------------


def test_a_stream_card_keeps_the_latest_label_and_a_bounded_timeline_with_its_changes():
    state = ViewState(timeline=3)
    names = ["star", "star", "moon", "moon", "star"]
    for n, name in enumerate(names):
        state.add_label(label("cam", name, n, changed=n in (0, 2, 4), raw="moon" if n == 1 else None), now=200.0)
    [card] = state.snapshot(now=200.0)["streams"]
    assert card["stream_id"] == "cam" and card["label"] == "star" and card["event_id"] == "cam-4"
    assert card["raw_label"] == "star" and card["score"] == 0.8 and card["concept"] == "wn:star"
    assert card["labels"] == 5 and card["changes"] == 3  # every label counted, the timeline holds the last 3
    assert [(t["event_id"], t["label"], t["changed"]) for t in card["timeline"]] == [
        ("cam-2", "moon", True), ("cam-3", "moon", False), ("cam-4", "star", True)]
    assert card["candidates"] == [["star", 0.8], ["other", 0.2]] and card["thumbnail"] is None


def test_records_without_changed_count_a_change_where_the_label_differs_from_the_one_before():
    state = ViewState()
    for n, name in enumerate(["star", "star", "moon", "star"]):
        state.add_label(label("old", name, n, changed=None), now=200.0)
    [card] = state.snapshot(now=200.0)["streams"]
    assert [t["changed"] for t in card["timeline"]] == [True, False, True, True] and card["changes"] == 3


def test_a_repeated_record_is_shown_once():
    """Re-delivered events are answered with the very same record, and the view reads a stretch again
    after reconnecting: a label or dead letter whose event_id is already shown is counted as a repeat."""
    state = ViewState()
    for n in (0, 1, 1, 0, 2):
        state.add_label(label("cam", "star", n), now=1.0)
    letter = ev.dead_letter("not_found", "gone", b"", "e9", "cam")
    state.add_dead_letter(letter, now=1.0)
    state.add_dead_letter(letter, now=1.0)
    snapshot = state.snapshot(now=1.0)
    assert [t["event_id"] for t in snapshot["streams"][0]["timeline"]] == ["cam-0", "cam-1", "cam-2"]
    assert snapshot["streams"][0]["labels"] == 3 and snapshot["dead_letters"][0]["count"] == 1
    assert snapshot["totals"]["repeats"] == 3 and snapshot["totals"]["labels"] == 3


def test_streams_are_bounded_dropping_the_least_recently_updated():
    state = ViewState(max_streams=2)
    state.add_label(label("a", "star", 0), now=1.0)
    state.add_label(label("b", "star", 0), now=1.0)
    state.add_label(label("a", "moon", 1), now=1.0)  # a is now the more recent
    state.add_label(label("c", "heart", 0), now=1.0)  # b goes
    snapshot = state.snapshot(now=1.0)
    assert [s["stream_id"] for s in snapshot["streams"]] == ["a", "c"] and snapshot["streams_dropped"] == 1
    for n in range(5):  # thumbnails too: no more than max_streams, the oldest go
        state.set_thumbnail(f"s{n}", f"e{n}", b"jpeg%d" % n)
    assert list(state.thumbnails) == ["s3", "s4"]
    assert state.thumbnail("s4") == b"jpeg4" and state.thumbnail("s0") is None


def test_dead_letters_are_kept_by_reason_newest_first_bounded():
    state = ViewState(letters_per_reason=2, max_reasons=2)
    for n in range(3):
        state.add_dead_letter(ev.dead_letter("not_found", f"s3://b/{n}.jpg does not exist", b"x" * 10, f"e{n}", "cam"),
                              ts=50.0 + n, now=60.0)
    # a detail cut by the contract, no ids
    state.add_dead_letter(ev.dead_letter("too_large", "d" * 5000, b"y", None, None), now=60.0)
    state.add_dead_letter(ev.DeadLetter("made_up", "by someone else", b""), now=60.0)  # a third reason: folded
    letters = state.snapshot(now=60.0)["dead_letters"]
    assert [(r["reason"], r["count"]) for r in letters] == [(OTHER_REASON, 1), ("not_found", 3), ("too_large", 1)]
    not_found = letters[1]["recent"]
    assert [d["event_id"] for d in not_found] == ["e2", "e1"] and not_found[0]["ts"] == 52.0
    assert not_found[0] == {"event_id": "e2", "stream_id": "cam", "detail": "s3://b/2.jpg does not exist",
                            "payload_size": 10, "truncated": False, "ts": 52.0}
    assert len(letters[2]["recent"][0]["detail"]) == 1000 and letters[2]["recent"][0]["stream_id"] is None


def test_rates_are_whole_seconds_of_the_records_own_timestamps():
    rate = RateCounter(window_s=5)
    now = 100.5
    for ts in (94.9, 95.2, 99.1, 99.9, 100.2, 130.0):  # too old, 3 in 95..99, this second, a clock ahead
        rate.add(ts, now)
    assert rate.rate(now) == 3 / 5  # seconds 95 to 99; 100.2 and the clock ahead count as second 100
    assert rate.rate(101.0) == 4 / 5  # 96..100: the two of second 100 in, 95.2 out
    assert rate.rate(200.0) == 0.0
    state = ViewState(rate_window_s=5)
    for ts in (96.0, 97.0, 98.5, 98.7):
        state.add_label(label("cam", "star", int(ts * 10)), ts=ts, now=now)
    state.count_image(ts=99.0, now=now)
    state.add_dead_letter(ev.dead_letter("timeout", "slow", b""), ts=10.0, now=now)  # read back, long ago
    rates = state.snapshot(now=now)["rates"]
    assert rates == {"images_in": 0.2, "labels": 0.8, "dead_letters": 0.0}


def test_lag_per_partition_is_the_end_minus_the_committed_offset():
    assert partition_lag(120, 100, 0) == 20
    assert partition_lag(120, -1, 30) == 90  # no commit: all that is retained waits (KEDA's count)
    assert partition_lag(120, None, None) is None and partition_lag(None, 5, 0) is None
    assert partition_lag(100, 130, 0) == 0  # a commit ahead of a stale end: never negative
    state = ViewState()
    state.lag.update(group="cased-workers", topic="images.in")
    state.set_lag([(1, 50, -1, None), (0, 120, 100, 0)])
    lag = state.snapshot(now=1.0)["lag"]
    assert lag == {"group": "cased-workers", "topic": "images.in", "total": 20, "error": None, "partitions": [
        {"partition": 0, "end": 120, "committed": 100, "lag": 20},
        {"partition": 1, "end": 50, "committed": None, "lag": None}]}
    state.set_lag([], error="GroupCoordinatorNotAvailableError")  # the rows read before stay, with why
    assert state.lag["error"] == "GroupCoordinatorNotAvailableError" and state.lag["total"] == 20


def test_workers_are_shown_ready_paused_or_unreachable_bounded():
    state = ViewState()
    state.set_worker("http://w1:6066", {"ready": False, "live": True, "halted": None, "model_batch_size": 4,
                                        "paused": {"storage": {"since": 1.7e9, "seconds": 12.5, "detail": "x" * 5000}},
                                        "counters": {"events_in": 3}})
    state.set_worker("http://w0:6066", error="ClientConnectorError: refused")
    [down, paused] = state.snapshot()["workers"]
    assert down == {"url": "http://w0:6066", "error": "ClientConnectorError: refused"}
    assert paused["ready"] is False and paused["model_batch_size"] == 4 and "counters" not in paused
    [storage] = paused["paused"]
    assert (storage["dependency"], storage["since"], storage["seconds"]) == ("storage", 1.7e9, 12.5)
    assert len(storage["detail"]) <= ev.MAX_DETAIL_CHARS
    state.set_worker("http://w1:6066", {"ready": True, "live": True, "paused": {}})
    assert state.snapshot()["workers"][1]["paused"] == [] and state.snapshot()["workers"][1]["ready"]
    for n in range(100):
        state.set_worker(f"http://x{n}:6066", error="refused")
    assert len(state.snapshot()["workers"]) == 32  # bounded
    json.dumps(state.snapshot(), allow_nan=False)


def test_foreign_records_are_shown_as_bounded_text_and_the_snapshot_is_strict_json():
    state = ViewState()
    odd = label("x" * 300, "<img src=x onerror=alert(1)>", 0, raw=None, changed=None)
    odd = replace(odd, raw_label=42, score=math.nan, candidates="not a list", concept={"a": 1}, ts_out="yesterday")
    state.add_label(odd, now=5.0)
    [card] = state.snapshot(now=5.0)["streams"]
    assert len(card["stream_id"]) == 200 and card["stream_id"].endswith("\u2026")
    assert card["label"] == "<img src=x onerror=alert(1)>"  # kept as text: the page sets textContent
    assert card["raw_label"] == "42" and card["score"] is None and card["ts_out"] is None
    assert card["candidates"] == [] and card["concept"] == "{'a': 1}"
    json.loads(json.dumps(state.snapshot()), parse_constant=lambda name: pytest.fail(f"{name} in the snapshot"))


def test_unreadable_records_are_counted_and_only_frames_that_can_be_had_safely_wait_for_a_thumbnail():
    server = ViewServer(Settings(), port=0)
    server.handle_record("labels.out", b"\xc1 not msgpack", 1_000)
    server.handle_record("labels.out", ev._pack({"stream_id": "cam"}), 1_000)  # fields missing
    server.handle_record("images.dlq", None)
    server.handle_record("images.in", b"junk")
    server.handle_record("labels.out", ev.encode_label_event(label("cam", "star", 0)), 1_000)
    server.handle_record("images.in", ev.encode_image_event(image_event("cam", "s3://b/k.jpg")), 1_000)
    server.handle_record("images.in", ev.encode_image_event(image_event("cam", b"frame-1", event_id="f1")), 1_000)
    server.handle_record("images.in", ev.encode_image_event(image_event("cam", b"frame-2", event_id="f2")), 1_000)
    assert server.state.totals == {"images_in": 4, "labels": 1, "dead_letters": 0, "repeats": 0, "unreadable": 4,
                                   "thumbnail_failures": 0}
    assert [(s, e.event_id) for s, e in server._pending.items()] == [("cam", "f2")]  # the latest inline frame only
    fetching = ViewServer(Settings(), port=0, fetch_thumbnails=True)
    fetching.handle_record("images.in", ev.encode_image_event(image_event("cam", "s3://b/k.jpg", event_id="u")))
    assert [e.event_id for e in fetching._pending.values()] == ["u"]


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format="JPEG")
    return out.getvalue()


def test_thumbnails_are_small_jpegs_made_with_the_workers_limits_and_fetcher(tmp_path):
    thumb = Image.open(io.BytesIO(make_thumbnail(jpeg_bytes((640, 480)), ImageLimits())))
    assert thumb.format == "JPEG" and thumb.size == (160, 120)
    strip = png(Image.new("RGB", (1, 4000)))  # 102 bytes that decode to a sliver: refused from the header
    tall = png(Image.new("RGB", (3000, 3000)))
    root = tmp_path / "frames"
    root.mkdir()
    (root / "ok.jpg").write_bytes(jpeg_bytes((320, 240)))
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes((320, 240)))

    async def run():
        inline_only = ViewServer(Settings(max_pixels=4_000_000), port=0)
        assert await inline_only.thumbnail_of(image_event("cam", strip)) is None
        assert await inline_only.thumbnail_of(image_event("cam", tall)) is None  # 9 M pixels > 4 M
        assert await inline_only.thumbnail_of(image_event("cam", b"not an image")) is None
        assert await inline_only.thumbnail_of(image_event("cam", f"file://{root}/ok.jpg")) is None  # not allowed
        assert inline_only.state.totals["thumbnail_failures"] == 3
        fetcher = Fetcher(FetchLimits(file_root=root))
        fetching = ViewServer(Settings(), port=0, fetch_thumbnails=True, fetcher=fetcher)
        try:
            fetched = await fetching.thumbnail_of(image_event("cam", f"file://{root}/ok.jpg"))
            assert Image.open(io.BytesIO(fetched)).size == (160, 120)
            assert await fetching.thumbnail_of(image_event("cam", f"file://{tmp_path}/outside.jpg")) is None
            assert await fetching.thumbnail_of(image_event("cam", "http://127.0.0.1:9/x.jpg")) is None  # loopback
        finally:
            await fetcher.close()

    asyncio.run(run())


def test_the_page_is_one_file_that_loads_nothing_from_elsewhere_and_never_parses_stream_text():
    page = Page.load()
    html = page.html.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) and "@import" not in html
    assert not re.search(r"\.(inner|outer)HTML\s*[+]?=|insertAdjacentHTML|document\.write|eval\(", html)
    [script] = re.findall(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page.csp and "default-src 'none'" in page.csp
    assert "connect-src 'self'" in page.csp and "img-src 'self'" in page.csp


# -- the server against a real broker and worker -------------------------------------------------------


async def snapshots(response):
    """The JSON snapshots of a server-sent event stream (events of `data:` lines ended by a blank line)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield json.loads(b"\n".join(data))


async def until(stream, predicate, timeout_s: float = 120.0):
    """The first snapshot of `stream` for which `predicate` holds; fails with the last one seen."""
    last = None

    async def wait():
        nonlocal last
        async for snapshot in stream:
            last = snapshot
            if predicate(snapshot):
                return snapshot
        raise AssertionError("the event stream ended")

    try:
        return await asyncio.wait_for(wait(), timeout_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"not within {timeout_s}s; last snapshot: {json.dumps(last)[:3000]}") from None


def camera(name: str, plan: list[tuple[str, int]], seed: int) -> list[ev.ImageEvent]:
    """A live camera's frames (jittered renderings of each scene: cased_core.tinyworld.cameras.scripted), inline."""
    frames = scripted(name, plan, seed=seed).frames
    return [image_event(name, png(f.image), {"history": "live"}, event_id=f"{name}-{i:02d}", ts=1.7e9 + f.t)
            for i, f in enumerate(frames)]


def stream_of(snapshot, name):
    return next((s for s in snapshot["streams"] if s["stream_id"] == name), None)


def test_the_server_pushes_labels_dead_letters_thumbnails_and_lag_of_a_real_worker(broker, workers):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url)
    wait_ready(worker)
    frames = camera("cam", [("star", 4)], seed=9)

    async def run():
        server = ViewServer(Settings(broker=broker.url), port=0)
        url = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url) as page:
                    assert page.status == 200 and page.content_type == "text/html"
                    assert page.headers["Content-Security-Policy"] == Page.load().csp
                    assert "EventSource" in await page.text()
                async with session.get(url + "events") as response:
                    assert response.status == 200 and response.content_type == "text/event-stream"
                    stream = snapshots(response)
                    first = await until(stream, lambda s: len(s["lag"]["partitions"]) == PARTITIONS, 30)
                    assert first["streams"] == [] and first["dead_letters"] == [] and first["kafka_error"] is None
                    # the bad one first: a stream's thumbnail is of its latest frame, when that is an image
                    bad = image_event("cam", b"no image", event_id="bad")
                    await asyncio.to_thread(send, broker.url, [bad] + frames)

                    def done(s):
                        # The lag is polled every second apart from the records: a poll from before the
                        # events were published also reads a total of 0 (every end offset still 0).
                        cam = stream_of(s, "cam")
                        return (cam is not None and cam["labels"] == 4 and cam["thumbnail"] is not None
                                and s["dead_letters"] and s["lag"]["total"] == 0 and s["rates"]["labels"] > 0
                                and sum(p["end"] for p in s["lag"]["partitions"]) == 5)

                    snapshot = await until(stream, done)
                async with session.get(url + "thumb/cam") as thumb:
                    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
                    assert max(Image.open(io.BytesIO(await thumb.read())).size) <= 160
                async with session.get(url + "thumb", params={"stream": "cam"}) as thumb:  # as the page asks
                    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
                async with session.get(url + "thumb/nobody") as missing:
                    assert missing.status == 404
                # listening on loopback, it answers no other host name (DNS rebinding)
                async with session.get(url + "snapshot", headers={"Host": "attacker.example"}) as foreign:
                    assert foreign.status == 403
                async with session.get(url.replace("127.0.0.1", "localhost") + "snapshot") as local:
                    assert local.status == 200
                async with session.get(url + "healthz") as health:
                    assert health.status == 200 and (await health.json())["reading"] is True
        finally:
            await server.stop()
        return snapshot

    snapshot = asyncio.run(run())
    cam = stream_of(snapshot, "cam")
    assert cam["label"] in names_of("star") and [t["event_id"] for t in cam["timeline"]] == [e.event_id for e in frames]
    assert cam["timeline"][0]["changed"] is True and cam["changes"] == 1
    [letters] = snapshot["dead_letters"]
    assert letters["reason"] == "not_an_image" and letters["count"] == 1
    assert letters["recent"][0]["event_id"] == "bad" and letters["recent"][0]["stream_id"] == "cam"
    assert snapshot["totals"]["images_in"] == 5 and snapshot["totals"]["unreadable"] == 0
    assert sum(p["end"] for p in snapshot["lag"]["partitions"]) == 5  # every event published, all committed


# -- the page in a real browser --------------------------------------------------------------------------


class DevTools:
    """One Chromium page driven over the DevTools protocol (JSON over a websocket): just what the test needs."""

    def __init__(self, socket):
        self.socket, self.events, self._id = socket, [], 0

    async def call(self, method: str, **params):
        self._id += 1
        sent = self._id
        await self.socket.send_json({"id": sent, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.socket.receive_json(), 60)
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)  # events (console, exceptions) arrive between the answers

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 120.0):
        """Polls `expression` in the page until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                page = await self.evaluate("document.body.innerText")
                raise AssertionError(f"{expression!r} not true within {timeout_s}s; the page says:\n{page[:3000]}")
            await asyncio.sleep(0.2)  # a polling interval, not a wait for something to happen


def test_the_view_shows_a_worker_paused_by_an_outage_and_back(broker, workers, tmp_path):
    """A real worker whose model fails for every image while a file exists: the view's snapshot says it is
    paused on the model, then ready again once the model is back."""
    switch = tmp_path / "model-down"
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url, faults={"encoder_fails_while": {"path": str(switch), "error": "CUDA error: unknown"}})
    wait_ready(worker)
    address = f"http://127.0.0.1:{worker.web_port}"

    async def run():
        server = ViewServer(Settings(broker=broker.url), port=0, workers=[address])
        url = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url + "events") as response:
                    stream = snapshots(response)
                    await until(stream, lambda s: s["workers"] and s["workers"][0].get("ready"), 60)
                    switch.touch()
                    await asyncio.to_thread(send, broker.url, camera("cam", [("star", 2)], seed=3))
                    paused = await until(stream, lambda s: s["workers"][0].get("paused"), 60)
                    switch.unlink()
                    back = await until(stream, lambda s: s["workers"][0].get("ready")
                                       and not s["workers"][0]["paused"] and stream_of(s, "cam"), 60)
        finally:
            await server.stop()
        return paused["workers"][0], back["workers"][0]

    paused, back = asyncio.run(run())
    assert paused["url"] == address and paused["ready"] is False
    assert [p["dependency"] for p in paused["paused"]] == ["model"] and "known-good" in paused["paused"][0]["detail"]
    assert back["error"] is None and back["live"]


def start_chromium(profile: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Headless Chromium with a fresh profile and DevTools on a free loopback port; (process, port)."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=out, stderr=subprocess.STDOUT)
    active = profile / "DevToolsActivePort"  # Chromium writes the port it picked here
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chromium exited with {process.returncode}: {log.read_text()[-3000:]}")
        lines = active.read_text().split("\n") if active.exists() else []
        if len(lines) >= 2 and lines[0].strip().isdigit():
            return process, int(lines[0])
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"chromium opened no DevTools port in 60s: {log.read_text()[-3000:]}")


HOSTILE = "<img src=x onerror=alert(1)><b>cam</b>"
CARDS = """JSON.stringify([...document.querySelectorAll('.card')].map(c => ({
    stream: c.dataset.stream, label: c.querySelector('.label').textContent,
    changes: Number(c.dataset.changes), ticks: c.querySelectorAll('.tick').length,
    changed_ticks: c.querySelectorAll('.tick.changed').length,
    thumbnail: c.querySelector('img.thumb').complete && c.querySelector('img.thumb').naturalWidth > 0})))"""


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                    reason=f"no browser: Debian's chromium is not installed at {CHROMIUM} (`.ci/run` installs it "
                           "with apt-get; it could not here)")
def test_the_page_in_chromium_follows_a_live_run(broker, workers, tmp_path):
    """Headless Chromium loads the page during a live run: two stream cards appear with their labels and
    thumbnails, the camera cuts from a star to a moon and its card's label changes, without a reload;
    the page raises no error (a Content-Security-Policy violation would be one). Saves a screenshot."""
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url)
    wait_ready(worker)
    cam = camera("cam-a", [("star", 6), ("moon", 6)], seed=9)
    hearts = camera("cam-b", [("heart", 4)], seed=5)
    hostile = image_event(HOSTILE, b"not an image", event_id="bad")  # its dead letter names the stream

    async def run():
        server = ViewServer(Settings(broker=broker.url), port=0, workers=[f"http://127.0.0.1:{worker.web_port}"])
        url = await server.start()
        browser = None
        try:
            browser, port = await asyncio.to_thread(start_chromium, tmp_path / "profile", tmp_path / "chromium.log")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as targets:
                    [page] = [t for t in await targets.json() if t["type"] == "page"]
                async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                    tab = DevTools(socket)
                    for domain in ("Page", "Runtime", "Log"):
                        await tab.call(f"{domain}.enable")
                    await tab.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                                   mobile=False)
                    await tab.call("Page.navigate", url=url)
                    # the event stream is open
                    await tab.wait_for("document.querySelector('#status.live') !== null", 30)
                    await asyncio.to_thread(send, broker.url, cam[:6] + hearts + [hostile])
                    first = json.loads(await tab.wait_for(
                        f"(() => {{ const c = {CARDS}; return JSON.parse(c).length === 2 && "
                        "JSON.parse(c).every(x => x.label !== '' && x.label !== '-' && x.thumbnail) && c; })()"))
                    # the cut, published while the page is open: the camera's card must change in place
                    await asyncio.to_thread(send, broker.url, cam[6:])
                    cards = json.loads(await tab.wait_for(
                        f"(() => {{ const c = {CARDS}; const a = JSON.parse(c).find(x => x.stream === 'cam-a'); "
                        "return a && a.changes >= 2 && a.ticks === 12 && "
                        f"a.label !== {json.dumps(first[0]['label'])} && c; }})()"))
                    # every event answered and committed: the group's lag on the page comes down to 0
                    await tab.wait_for("document.getElementById('lag-total').textContent === '0'", 30)
                    await tab.wait_for("document.querySelectorAll('#letters .reason').length === 1", 30)
                    injected = await tab.evaluate("document.querySelectorAll('#letters img, #letters b').length")
                    shot = base64.b64decode((await tab.call("Page.captureScreenshot", format="png"))["data"])
                    text = await tab.evaluate("document.body.innerText")
                    errors = [e for e in tab.events if e["method"] == "Runtime.exceptionThrown"
                              or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
                    reloads = sum(e["method"] == "Page.loadEventFired" for e in tab.events)
        finally:
            if browser is not None:
                browser.terminate()
                try:
                    browser.wait(20)
                except subprocess.TimeoutExpired:
                    browser.kill()
                    browser.wait()
            await server.stop()
        return first, cards, shot, text, errors, reloads, injected

    first, cards, shot, text, errors, reloads, injected = asyncio.run(run())
    (tmp_path / "view.png").write_bytes(shot)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "view.png").write_bytes(shot)
    assert Image.open(io.BytesIO(shot)).size == (1400, 1000)
    assert [c["stream"] for c in first] == ["cam-a", "cam-b"]
    assert first[0]["label"] in names_of("star") and first[1]["label"] in names_of("heart"), first
    by_stream = {c["stream"]: c for c in cards}
    assert by_stream["cam-a"]["label"] in names_of("moon") and by_stream["cam-a"]["changed_ticks"] == 2, cards
    assert by_stream["cam-b"]["ticks"] == 4 and by_stream["cam-b"]["changes"] == 1
    assert "Streams" in text and "Lag" in text and "cam-a" in text
    assert f"Worker http://127.0.0.1:{worker.web_port} ready" in text
    assert "not_an_image" in text and HOSTILE in text and injected == 0  # shown as text, never parsed as markup
    assert errors == [] and reloads == 1, (errors, reloads)  # one load: every update came over the event stream
