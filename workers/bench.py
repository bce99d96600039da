"""`cased bench core`: what a classification costs beyond the image forward, and against the reference.

The database has a million entries (so the index is the IVF-PQ one the builder picks at that size).
Text-encoding a million captions with ViT-B-32 takes hours on two cores, so its caption embeddings are
synthetic: captions are drawn from topics (40 lexicon words each), and a caption's embedding lies near
its topic's centre. The first topics are centred on the benchmark images, so every image retrieves
captions that share words, as a real database gives, and the candidate sets are realistic in size.
Candidate-term embeddings are real: the builder encodes them with the model's text encoder.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from cased_core import tinyworld
from cased_core.classifier import Classifier
from cased_core.database import Database, build_from_embeddings, plan_index
from cased_core.lexicon import load_lexicon
from cased_core.model import ClipModel, load_model

TOPIC_SIZE = 50  # captions per topic
TOPIC_WORDS = 40
CAPTION_WORDS = 12  # with 10 retrieved captions, ~35 candidates per image as the paper reports
VOCABULARY = 600


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_images(model: ClipModel, count: int, seed: int = 7) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([model.preprocess(tinyworld.render(rng, size=128)[0]) for _ in range(count)])


def _synthetic_database(model: ClipModel, entries: int, centres: np.ndarray, out: Path) -> Database:
    rng = np.random.default_rng(0)
    singles = sorted(t for t in load_lexicon().terms if " " not in t and t.isalpha())
    vocabulary = np.array(rng.choice(singles, VOCABULARY, replace=False))
    topics = entries // TOPIC_SIZE
    all_centres = rng.standard_normal((topics, model.dim)).astype(np.float32)
    all_centres[:len(centres)] = centres
    all_centres /= np.linalg.norm(all_centres, axis=1, keepdims=True)
    topic_words = np.stack([rng.choice(VOCABULARY, TOPIC_WORDS, replace=False) for _ in range(topics)])
    captions, embeddings = [], np.empty((entries, model.dim), np.float16)
    _say(f"generating {entries} synthetic captions in {topics} topics")
    for i in range(entries):
        topic = min(i // TOPIC_SIZE, topics - 1)
        words = vocabulary[rng.choice(topic_words[topic], CAPTION_WORDS, replace=False)]
        captions.append(f"a photo of {' '.join(words)} #{i}")
    for start in range(0, entries, 65_536):
        stop = min(entries, start + 65_536)
        topic_ids = np.minimum(np.arange(start, stop) // TOPIC_SIZE, topics - 1)
        noisy = all_centres[topic_ids] + rng.standard_normal((stop - start, model.dim)).astype(np.float32) * 0.03
        embeddings[start:stop] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    path = build_from_embeddings(captions, embeddings, out, model.identity, model.encode_texts, load_lexicon())
    return Database(path)


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def bench_core(model_name: str = "ViT-B-32", entries: int = 1_000_000, batch_size: int = 32, images: int = 256,
               reference_images: int = 8, work_dir: Path = Path("bench-results/work"),
               device: str | None = None) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(model_name, None, device)
    _say(f"model {model.identity} on {model.device}; rendering {images} images")
    pixels = bench_images(model, images)
    db_dir = work_dir / f"db-{model.identity.replace('/', '_')}-{entries}-{images}"
    if (db_dir / "manifest.json").is_file():
        database = Database(db_dir)
    else:
        centres = np.concatenate([model.encode_pixels(pixels[i:i + batch_size]) for i in range(0, images, batch_size)])
        database = _synthetic_database(model, entries, centres, db_dir)
    classifier = Classifier(model, database)
    reference = Classifier(model, database, mode="cased-reference")
    batches = [pixels[i:i + batch_size] for i in range(0, images, batch_size)]
    classifier.classify_pixels(batches[0])  # warm-up: caches, lazy allocations, first-call kernels
    encode_s = classify_s = search_s = after_encode_s = 0.0
    candidates = 0
    # Interleaved per batch, alternating which goes first, so that noise from a shared machine and
    # order effects hit both measurements alike.
    for n, batch in enumerate(batches):
        if n % 2:
            predictions, classify_time = _timed(classifier.classify_pixels, batch)
            embeddings, encode_time = _timed(model.encode_pixels, batch)
        else:
            embeddings, encode_time = _timed(model.encode_pixels, batch)
            predictions, classify_time = _timed(classifier.classify_pixels, batch)
        encode_s += encode_time
        classify_s += classify_time
        search_s += _timed(database.search, embeddings, classifier.config.k)[1]
        after_encode_s += _timed(classifier.classify_embeddings, embeddings)[1]
        candidates += sum(p.considered for p in predictions)
    _say(f"timing {reference_images} images the reference's way (text-encoding captions and candidates)")
    _, reference_s = _timed(reference.classify_pixels, pixels[:reference_images])
    encode_rate, classify_rate = images / encode_s, images / classify_s
    reference_rate = reference_images / reference_s
    return {
        "model": model.identity, "device": str(model.device), "batch_size": batch_size,
        "database_entries": database.count, "index": database.manifest["index"]["factory"],
        "index_plan": plan_index(database.count, database.dim).factory, "images": images,
        "encode_images_per_s": round(encode_rate, 2),
        "classify_images_per_s": round(classify_rate, 2),
        "classify_to_encode": round(classify_rate / encode_rate, 3),
        "reference_style_images_per_s": round(reference_rate, 3),
        "speedup_vs_reference": round(classify_rate / reference_rate, 1),
        "stage_ms_per_image": {
            "encode": round(1000 * encode_s / images, 2),
            "search": round(1000 * search_s / images, 2),
            "candidates_and_scoring": round(1000 * (after_encode_s - search_s) / images, 2),
        },
        "mean_candidates_per_image": round(candidates / images, 1),
        "term_encodes_in_steady_state": classifier.terms.encoded,
    }



def _stream_database(model: ClipModel, work_dir: Path, entries: int) -> Path:
    """A database for the random-init model (the core benchmark's when it exists)."""
    existing = sorted(work_dir.glob(f"db-{model.identity.replace('/', '_')}-*"))
    if existing and (existing[-1] / "manifest.json").is_file():
        return existing[-1]
    centres = np.zeros((0, model.dim), np.float32)
    return _synthetic_database(model, entries, centres, work_dir / f"db-{model.identity.replace('/', '_')}-{entries}-0").path


def bench_stream(model_name: str = "ViT-B-32", batch_size: int = 32, images: int = 384, latency_events: int = 150,
                 work_dir: Path = Path("bench-results/work"), entries: int = 20_000) -> dict:
    """Embedded broker + one worker process: saturated throughput and latency at half that rate,
    against the image encoder alone with the same batch size, in one run."""
    import threading

    from topics import events as ev
    from workers.broker import EmbeddedBroker
    from workers.clients import ensure_topics, image_event, producer, publish, read_records
    from workers.demo import jpeg, start_worker, stop_worker
    from workers.settings import Settings

    model = load_model(model_name, None, "cpu")
    db_path = _stream_database(model, work_dir, entries)
    rng = np.random.default_rng(5)
    frames = [jpeg(tinyworld.render(rng, size=128)[0]) for _ in range(64)]
    pixels = torch.stack([model.preprocess(tinyworld.render(rng, size=128)[0]) for _ in range(batch_size * 4)])
    settings = Settings(model=model_name, database=str(db_path))
    with EmbeddedBroker() as broker:
        ensure_topics(broker.url, ["images.in", "labels.out", "images.dlq"], 4)
        worker = start_worker(settings, broker.url, {"CASED_BATCH_SIZE": str(batch_size), "CASED_MAX_WAIT_S": "0.05"})
        received: dict[str, float] = {}
        ts_in: dict[str, float] = {}
        stop = threading.Event()

        def consume() -> None:
            for _, _, value in read_records(broker.url, ["labels.out", "images.dlq"], idle_timeout_s=1.0):
                label = ev.decode_label_event(value)
                received.setdefault(label.event_id, time.time())
                ts_in[label.event_id] = label.ts_in or 0.0
                if stop.is_set():
                    return

        def wait_for(ids: list[str], timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not all(i in received for i in ids):
                time.sleep(0.05)
            missing = [i for i in ids if i not in received]
            if missing:
                raise RuntimeError(f"{len(missing)} events unanswered after {timeout_s}s; see the worker's output")

        def consumer_loop() -> None:
            while not stop.is_set():
                consume()

        reader = threading.Thread(target=consumer_loop, daemon=True)
        reader.start()
        client = producer(broker.url)
        try:
            _say("waiting for the worker's first label")
            wait_for(publish(client, "images.in", [image_event("warm", frames[0])]), 120)
            _say(f"saturated run: {images} events published at once")
            events = [image_event(f"cam-{i % 8}", frames[i % len(frames)]) for i in range(images)]
            started = time.time()
            ids = publish(client, "images.in", events)
            wait_for(ids, 600)
            stream_rate = images / (max(received[i] for i in ids) - started)
            rate = stream_rate / 2
            _say(f"latency run: {latency_events} events at {rate:.1f}/s")
            latency_ids = []
            begin = time.monotonic()
            for i in range(latency_events):
                time.sleep(max(0.0, begin + i / rate - time.monotonic()))
                latency_ids += publish(client, "images.in", [image_event(f"cam-{i % 8}", frames[i % len(frames)])])
            wait_for(latency_ids, 300)
            latencies = np.array([received[i] - ts_in[i] for i in latency_ids]) * 1000
        finally:
            client.close()
            stop.set()
            stop_worker(worker)
    # The encoder alone, same batch size, same process state, with the worker stopped.
    encode_s = 0.0
    model.encode_pixels(pixels[:batch_size])
    for start in range(0, len(pixels), batch_size):
        encode_s += _timed(model.encode_pixels, pixels[start:start + batch_size])[1]
    encode_rate = len(pixels) / encode_s
    return {
        "model": model.identity, "batch_size": batch_size, "database_entries": Database(db_path).count,
        "events": images, "encode_images_per_s": round(encode_rate, 2),
        "stream_images_per_s": round(stream_rate, 2), "stream_to_encode": round(stream_rate / encode_rate, 3),
        "latency_rate_per_s": round(rate, 2), "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
    }


def _camera_frames(count: int, seed: int = 3, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Camera-sized JPEG frames: scikit-image's sample photos and tiny-world renders, cropped, flipped
    and resized to `size`, so that every frame differs (a camera's payloads do)."""
    from PIL import Image, ImageOps
    from skimage import data

    from workers.demo import jpeg

    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB")
               for name in ("astronaut", "chelsea", "coffee", "rocket")]
    frames = []
    for i in range(count):
        if i % 3 == 2:
            image = tinyworld.render(rng, size=128)[0].convert("RGB")
        else:
            image = sources[i % len(sources)]
            w, h = image.size
            left, top = int(rng.integers(0, w // 8 + 1)), int(rng.integers(0, h // 8 + 1))
            image = image.crop((left, top, left + w * 7 // 8, top + h * 7 // 8))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        frames.append(jpeg(image.resize(size, Image.BILINEAR), max_side=max(size)))
    return frames


def _proc_kb(pid: int, field: str) -> int | None:
    """A field of /proc/PID/status in kB (VmRSS: resident now, VmHWM: the peak so far); None once gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _spread(values, digits: int = 1) -> dict:
    values = np.asarray(list(values), dtype=float)
    if not len(values):
        return {"min": None, "median": None, "max": None}
    return {"min": round(float(values.min()), digits), "median": round(float(np.median(values)), digits),
            "max": round(float(values.max()), digits)}


class _Answers:
    """Every labels.out and images.dlq record, read from the start in a thread: per event id, how many
    records and which distinct values (a digest of each)."""

    def __init__(self, broker_url: str, topics: list[str]):
        import threading

        self.broker_url, self.topics = broker_url, topics
        self.lock = threading.Lock()
        self.first: dict[str, float] = {}  # event id -> when its first record was read
        self.digests: dict[str, set[bytes]] = {}
        self.records = 0
        self.dead: dict[str, int] = {}
        self.unreadable = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="answers", daemon=True)

    def start(self) -> "_Answers":
        self.thread.start()
        return self

    def answered(self) -> int:
        with self.lock:
            return len(self.first)

    def missing(self, ids) -> list[str]:
        with self.lock:
            return [i for i in ids if i not in self.first]

    def _run(self) -> None:
        import hashlib

        from kafka import KafkaConsumer, TopicPartition

        from topics import events as ev
        from workers.clients import connect

        try:
            consumer = connect(KafkaConsumer, self.broker_url, {}, enable_auto_commit=False, fetch_max_wait_ms=20,
                               check_crcs=False)  # kafka-python checks CRCs in pure Python: slow
            try:
                partitions = []
                for topic in self.topics:
                    deadline = time.monotonic() + 20
                    ids = consumer.partitions_for_topic(topic)
                    while not ids and time.monotonic() < deadline:
                        time.sleep(0.2)
                        ids = consumer.partitions_for_topic(topic)
                    partitions += [TopicPartition(topic, p) for p in sorted(ids or ())]
                consumer.assign(partitions)
                consumer.seek_to_beginning(*partitions)
                while not self.stop.is_set():
                    for tp, messages in consumer.poll(timeout_ms=200).items():
                        for message in messages:
                            self._add(tp.topic, message.value, ev, hashlib)
            finally:
                consumer.close()
        except BaseException as err:  # reported by the benchmark, which fails rather than report figures
            self.error = err

    def _add(self, topic: str, value: bytes, ev, hashlib) -> None:
        now = time.time()
        if topic == self.topics[0]:
            event_id = ev.decode_label_event(value).event_id
        else:
            letter = ev.decode_dead_letter(value)
            event_id = letter.event_id
            self.dead[letter.reason] = self.dead.get(letter.reason, 0) + 1
        with self.lock:
            self.records += 1
            if event_id is None:
                self.unreadable += 1
                return
            self.first.setdefault(event_id, now)
            self.digests.setdefault(event_id, set()).add(hashlib.blake2b(value, digest_size=16).digest())


class _Publisher:
    """aiokafka's producer (and an admin client, for the consumer group's lag) on an event loop in its
    own thread. kafka-python computes its record CRCs in pure Python (without the optional crc32c
    package: ~4 MB/s), too slow to publish camera frames faster than a worker answers them; aiokafka's
    are compiled. Each acknowledged event's id is appended to `acked`, in acknowledgement order."""

    def __init__(self, broker_url: str, topic: str):
        import asyncio
        import threading

        from aiokafka import AIOKafkaProducer

        from workers.clients import bootstrap

        self.topic, self.acked = topic, []
        self.ends: dict[int, int] = {}  # per partition, one past the last acknowledged offset
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="publisher", daemon=True)
        self.thread.start()

        async def start():
            from aiokafka.admin import AIOKafkaAdminClient

            servers = bootstrap(broker_url)
            clients = (AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5,
                                        max_batch_size=1024 * 1024, request_timeout_ms=60_000),
                       AIOKafkaAdminClient(bootstrap_servers=servers))
            for client in clients:
                await client.start()
            return clients

        self.client, self.admin = self._run(start())

    def _run(self, coroutine, timeout_s: float | None = None):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def _acknowledged(self, future, event_id: str) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the sender sees the failure
        metadata = future.result()
        self.ends[metadata.partition] = max(self.ends.get(metadata.partition, 0), metadata.offset + 1)
        self.acked.append(event_id)

    async def _send(self, events) -> list:
        from topics import events as ev

        futures = []
        for event in events:
            future = await self.client.send(self.topic, ev.encode_image_event(event), key=event.stream_id.encode())
            future.add_done_callback(lambda f, i=event.event_id: self._acknowledged(f, i))
            futures.append(future)
        return futures

    def publish(self, events) -> list[str]:
        """Send `events` and wait until the broker acknowledged all of them; their ids."""
        import asyncio

        async def send_all():
            await asyncio.gather(*await self._send(events))

        self._run(send_all(), 120)
        return [e.event_id for e in events]

    def paced(self, make_events, rate: float, duration_s: float) -> int:
        """Publish `make_events(n)` on a schedule of `rate` events a second for `duration_s`; returns how
        many were sent, once all are acknowledged (an unacknowledged one raises)."""
        import asyncio

        async def run() -> int:
            loop = asyncio.get_running_loop()
            begin, total, sent, futures = loop.time(), int(rate * duration_s), 0, []
            while sent < total:
                due = min(total, int((loop.time() - begin) * rate) + 1)
                if due > sent:
                    futures += await self._send(make_events(due - sent))
                    sent = due
                    for future in futures:
                        if future.done():
                            future.result()  # a failed send raises here
                    futures = [f for f in futures if not f.done()]
                else:
                    await asyncio.sleep(max(0.0, begin + sent / rate - loop.time()))
            await asyncio.gather(*futures)
            return sent

        return self._run(run())

    def committed_lag(self, group: str, partitions: int) -> int | None:
        """Records published (acknowledged) past `group`'s committed offsets; None when the broker did not
        answer (a coordinator moving): no sample. The ends are the acknowledged offsets, not ListOffsets':
        the embedded broker answers that with one past the last record *batch* (workers/offsets.py)."""
        from aiokafka import TopicPartition

        async def lag() -> int:
            tps = [TopicPartition(self.topic, p) for p in range(partitions)]
            committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
            ends = dict(self.ends)
            return sum(ends.get(tp.partition, 0) - max(0, committed[tp].offset if tp in committed else 0)
                       for tp in tps)

        try:
            return self._run(lag(), 10)
        except Exception:
            return None

    def close(self) -> None:
        try:
            self._run(self.client.stop(), 30)
            self._run(self.admin.close(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def bench_overload(model_name: str = "tiny", batch_size: int = 16, duration_s: float = 180.0, factor: float = 3.0,
                   calibration_events: int | None = None,
                   frame_count: int = 48, drain_timeout_s: float | None = None,
                   worker_env: dict[str, str] | None = None) -> dict:
    """Embedded broker + one worker, published to at `factor` times the rate it sustains for `duration_s`:
    the worker's memory (sampled every second), the lag, and once the burst ends, how long the backlog
    takes to drain; then every published event must have its record, and repeated records be identical.

    `worker_env` is added to the worker's environment: e.g. Faust's own variables (STREAM_BUFFER_MAXSIZE,
    CONSUMER_MAX_FETCH_SIZE, BROKER_MAX_POLL_RECORDS override the app's keyword arguments) to compare
    buffer settings."""
    import threading

    from workers.broker import EmbeddedBroker
    from workers.clients import ensure_topics, image_event
    from workers.demo import start_worker, stop_worker
    from workers.settings import Settings

    settings = Settings(model=model_name)
    _say(f"rendering {frame_count} camera frames (640x480 JPEG)")
    frames = _camera_frames(frame_count)
    frame_bytes = float(np.mean([len(f) for f in frames]))
    topics = [settings.images_topic, settings.labels_topic, settings.dead_letter_topic]
    serial = iter(range(10**9))

    def events(count: int, prefix: str = "ev") -> list:
        out = []
        for _ in range(count):
            n = next(serial)
            out.append(image_event(f"cam-{n % 8}", frames[n % len(frames)], event_id=f"{prefix}-{n:08d}"))
        return out

    with EmbeddedBroker() as broker:
        ensure_topics(broker.url, topics, settings.partitions)
        worker = start_worker(settings, broker.url, {"CASED_BATCH_SIZE": str(batch_size), "CASED_MAX_WAIT_S": "0.05",
                                                     "CASED_PARTITIONS": str(settings.partitions),
                                                     **(worker_env or {})})
        answers = _Answers(broker.url, [settings.labels_topic, settings.dead_letter_topic]).start()
        publisher = _Publisher(broker.url, settings.images_topic)
        published = publisher.acked  # ids, once acknowledged

        def check_alive() -> None:
            if answers.error is not None:
                raise RuntimeError(f"reading the outputs failed: {answers.error!r}")
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}; see its output above")

        def wait_for(ids: list[str], timeout_s: float) -> float:
            started = time.monotonic()
            while time.monotonic() - started < timeout_s:
                check_alive()
                if not answers.missing(ids):
                    return time.monotonic() - started
                time.sleep(0.05)
            raise RuntimeError(f"{len(answers.missing(ids))} of {len(ids)} events unanswered after {timeout_s}s")

        samples: list[dict] = []

        def sample(phase: str, t0: float) -> dict:
            rss = _proc_kb(worker.pid, "VmRSS")
            s = {"phase": phase, "t": round(time.monotonic() - t0, 1), "published": len(published),
                 "answered": answers.answered(), "rss_mb": rss / 1024 if rss else None,
                 "committed_lag": publisher.committed_lag(settings.app_id, settings.partitions)}
            s["lag"] = s["published"] - s["answered"]
            samples.append(s)
            return s

        try:
            _say("waiting for the worker's first label")
            wait_for(publisher.publish(events(1, "warm")), 180)
            warm = publisher.publish(events(4 * batch_size, "warm"))
            rough = len(warm) / max(wait_for(warm, 120), 1e-3)
            time.sleep(2.0)
            rss_idle = _proc_kb(worker.pid, "VmRSS") / 1024  # loaded and warm, nothing buffered
            count = calibration_events or int(min(6000, max(8 * batch_size, rough * 15)))
            _say(f"saturated run: {count} events published at once (warm-up rate {rough:.1f}/s)")
            started = time.time()
            saturated = publisher.publish(events(count, "sat"))
            wait_for(saturated, 900)
            with answers.lock:  # from the first send to the last event's first record
                sustained = count / (max(answers.first[i] for i in saturated) - started)
            offered = factor * sustained
            _say(f"sustained {sustained:.1f} events/s; burst at {offered:.1f}/s for {duration_s:.0f}s")

            # The burst: the publisher's thread on its schedule; this one samples once a second.
            outcome: dict = {}

            def produce() -> None:
                try:
                    outcome["sent"] = publisher.paced(lambda n: events(n, "burst"), offered, duration_s)
                except BaseException as err:
                    outcome["error"] = err

            answered_at_begin = answers.answered()
            burst_begin = time.monotonic()
            rss_start = _proc_kb(worker.pid, "VmRSS") / 1024
            producer_thread = threading.Thread(target=produce, name="burst", daemon=True)
            producer_thread.start()
            tick = 0
            while producer_thread.is_alive():
                producer_thread.join(max(0.0, burst_begin + tick + 1 - time.monotonic()))
                if not producer_thread.is_alive():
                    break
                tick += 1
                s = sample("burst", burst_begin)
                check_alive()
                if tick % 10 == 0:
                    _say(f"  burst {s['t']:5.0f}s: published {s['published']}, answered {s['answered']}, "
                         f"lag {s['lag']}, worker rss {s['rss_mb']:.0f} MB")
            if "error" in outcome:
                raise RuntimeError(f"publishing failed: {outcome['error']!r}")
            burst_s = time.monotonic() - burst_begin
            drain_begin, burst_end_wall = time.monotonic(), time.time()
            end = sample("burst", burst_begin)
            answered_in_burst = end["answered"] - answered_at_begin
            _say(f"burst over after {burst_s:.0f}s: {outcome['sent']} events published, lag {end['lag']}; draining")

            # The drain: until every published event has its record.
            limit = drain_timeout_s or max(300.0, 4 * end["lag"] / sustained)
            tick = 0
            while answers.missing(published):
                check_alive()
                if time.monotonic() - drain_begin > limit:
                    raise RuntimeError(f"the lag did not drain in {limit:.0f}s: "
                                       f"{len(answers.missing(published))} events unanswered")
                time.sleep(0.2)
                if time.monotonic() - drain_begin >= tick + 1:
                    tick += 1
                    s = sample("drain", drain_begin)
                    if tick % 10 == 0:
                        _say(f"  drain {s['t']:5.0f}s: lag {s['lag']}, worker rss {s['rss_mb']:.0f} MB")
            with answers.lock:  # from the burst's end to the last event's first record
                drain_s = max(0.0, max(answers.first[i] for i in published) - burst_end_wall)
            time.sleep(3.0)  # records still on their way (repeats, if any) are read too, the last commit lands
            final = sample("drained", drain_begin)
            peak_rss = (_proc_kb(worker.pid, "VmHWM") or 0) / 1024
        finally:
            publisher.close()
            stop_worker(worker)
            answers.stop.set()
            answers.thread.join(10)

    ids = set(published)
    with answers.lock:
        lost = [i for i in published if i not in answers.first]
        unknown = [i for i in answers.first if i not in ids]
        differing = [i for i, d in answers.digests.items() if len(d) > 1]
        repeated_records = answers.records - len(answers.first) - answers.unreadable
    burst = [s for s in samples if s["phase"] == "burst" and s["rss_mb"] is not None]
    quarters = np.array_split(np.array([s["rss_mb"] for s in burst]), 4)
    committed = [s["committed_lag"] for s in samples if s["committed_lag"] is not None]
    return {
        "model": model_name, "batch_size": batch_size, "partitions": settings.partitions,
        "worker_env": dict(worker_env or {}),
        "frame": "640x480 JPEG", "mean_event_kb": round(frame_bytes / 1024, 1),
        "sustained_rate": round(sustained, 2), "offered_rate": round(offered, 2), "factor": factor,
        "achieved_offered_rate": round(outcome["sent"] / burst_s, 2),
        "answered_rate_in_burst": round(answered_in_burst / burst_s, 2),
        "duration_s": round(burst_s, 1), "burst_events": outcome["sent"], "events_published": len(published),
        "events_answered": len(answers.first), "records_read": answers.records, "dead_letters": dict(answers.dead),
        "lost": len(lost), "unexpected_events": len(unknown), "repeated_records": repeated_records,
        "repeats_differing": len(differing), "duplicates_identical": not differing,
        "peak_rss_mb": round(peak_rss, 1), "rss_idle_mb": round(rss_idle, 1), "rss_burst_start_mb": round(rss_start, 1),
        "rss_burst_end_mb": round(end["rss_mb"], 1), "rss_after_drain_mb": round(final["rss_mb"], 1),
        "rss_burst_mb": _spread(s["rss_mb"] for s in burst),
        "rss_burst_quarter_max_mb": [round(float(q.max()), 1) for q in quarters if len(q)],
        "lag_max": max(s["lag"] for s in samples), "lag_at_burst_end": end["lag"],
        "committed_lag_max": max(committed) if committed else None,
        "committed_lag_at_burst_end": end["committed_lag"],
        "lag_after_drain": final["lag"], "committed_lag_after_drain": final["committed_lag"],
        "drain_s": round(drain_s, 1), "samples": len(samples),
    }
