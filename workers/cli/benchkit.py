"""What the stream benchmarks share: camera frames, a publisher, a reader of every answer, /proc figures."""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

from cased_core.tinyworld import world as tinyworld


def say(message: str) -> None:
    """Progress, on stderr: stdout carries a benchmark's JSON."""
    print(message, file=sys.stderr, flush=True)


def camera_frames(count: int, seed: int = 3, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Camera-sized JPEG frames: scikit-image's sample photos and tiny-world renders, cropped, flipped
    and resized to `size`, so that every frame differs (a camera's payloads do)."""
    from PIL import Image, ImageOps
    from skimage import data

    from workers.cli.demo import jpeg

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


def fixed_camera_frames(streams: int, per_stream: int, seed: int = 5, size: tuple[int, int] = (640, 480),
                        hold: int = 250) -> list[list[bytes]]:
    """Fixed cameras: for each stream, JPEG frames of one scene held for `hold` frames, then a cut to
    another, with what makes consecutive frames differ on a real one: sensor noise, a slow drift of the
    light, and a small object moving across.

    Returns:
        `streams` lists of `per_stream` frames, in order.
    """
    from PIL import Image

    from workers.cli.demo import jpeg

    rng = np.random.default_rng(seed)
    width, height = size
    scenes = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB"), np.float32)
              for f in camera_frames(max(4, 2 * streams), seed=seed, size=size)]
    side = max(4, width // 32)  # the moving object: a dark square a few percent of the frame wide
    out = []
    for stream in range(streams):
        frames = []
        for n in range(per_stream):
            base = scenes[(stream + 7 * (n // hold)) % len(scenes)]
            gain = 1.0 + 0.08 * np.sin(2 * np.pi * n / 600.0)  # light drifting over minutes
            frame = base * gain + rng.normal(0, 3.0, base.shape).astype(np.float32)
            x = (n * 4) % max(1, width - side)
            y = height // 2 + int(height / 6 * np.sin(n / 20.0))
            frame[y:y + side, x:x + side] *= 0.3
            frames.append(jpeg(Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)), max_side=max(size)))
        out.append(frames)
    return out


def proc_kb(pid: int, field: str) -> int | None:
    """A field of /proc/PID/status in kB (VmRSS: resident now, VmHWM: the peak so far); None once gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def spread(values, digits: int = 1) -> dict:
    values = np.asarray(list(values), dtype=float)
    if not len(values):
        return {"min": None, "median": None, "max": None}
    return {"min": round(float(values.min()), digits), "median": round(float(np.median(values)), digits),
            "max": round(float(values.max()), digits)}


class Answers:
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

    def start(self) -> "Answers":
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

        from kafka import KafkaConsumer

        from topics import events as ev
        from workers.clients import connect, topic_partitions

        try:
            consumer = connect(KafkaConsumer, self.broker_url, {}, enable_auto_commit=False, fetch_max_wait_ms=20,
                               check_crcs=False)  # kafka-python checks CRCs in pure Python: slow
            try:
                partitions = topic_partitions(consumer, self.broker_url, list(self.topics), wait_s=20)
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


class Publisher:
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
