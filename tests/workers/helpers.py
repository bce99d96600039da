"""What worker tests share: worker processes against the real broker, images, reading the outputs, running
batches through a pipeline in process. Fixtures are in conftest.py."""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import msgpack
import numpy as np
from PIL import Image

from cased_core.tinyworld import world as tinyworld
from topics import events as ev
from workers.cli.broker import free_port
from workers.cli.processes import stop_process
from workers.clients import producer, publish, read_records

TOPICS = ("images.in", "labels.out", "images.dlq")
PARTITIONS = 4
REPO = Path(__file__).resolve().parents[2]


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def shape(category: str, seed: int) -> bytes:
    """A tiny-world frame showing `category`, as PNG bytes."""
    return png(tinyworld.render(np.random.default_rng(seed), category, size=64)[0])


class WorkerProcess:
    """`cased worker` in its own process, its log kept in a file. `faults` (see tests/workers/faults.py)
    makes the process patch itself before it starts, to inject failures into a real worker."""

    def __init__(self, broker_url: str, log_dir: Path, env: dict[str, str] | None = None, name: str = "w",
                 faults: dict | None = None):
        self.log = log_dir / f"{name}.log"
        self.web_port = free_port()
        full_env = {**os.environ, "CASED_BROKER": broker_url, "CASED_PARTITIONS": str(PARTITIONS),
                    "CASED_WEB_PORT": str(self.web_port), "CASED_BATCH_SIZE": "8", **(env or {})}
        command = [sys.executable, "-m", "workers.cli", "worker", "--loglevel", "info"]
        if faults:
            full_env["CASED_TEST_FAULTS"] = json.dumps(faults)
            full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
            command = [sys.executable, "-m", "tests.workers.faults", "worker", "--loglevel", "info"]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    def assignment(self) -> list[int] | None:
        found = re.findall(r"assigned images\.in partitions: \[([\d, ]*)\]", self.log.read_text())
        return [int(p) for p in found[-1].split(",") if p.strip()] if found else None

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, timeout_s=30, sig=sig)


def answered(records: list[tuple[str, bytes]]) -> int:
    """Distinct events answered: re-delivered events may have several (identical) records."""
    keys = set()
    for topic, value in records:
        record = msgpack.unpackb(value)
        keys.add(record.get("event_id") or record["payload"])
    return len(keys)


def read_outputs(broker_url: str) -> list[tuple[str, bytes]]:
    return [(topic, value) for topic, _, value in read_records(broker_url, ["labels.out", "images.dlq"],
                                                               idle_timeout_s=1.0)]


def collect(broker_url: str, expected: int, timeout_s: float = 90.0, quiet_s: float = 3.0) -> list[tuple[str, bytes]]:
    """Records from labels.out and images.dlq once `expected` distinct events were answered and then
    nothing more arrived for `quiet_s` (so that a late duplicate is seen), or when the time is up."""
    deadline = time.monotonic() + timeout_s
    records: list[tuple[str, bytes]] = []
    while time.monotonic() < deadline:
        records = read_outputs(broker_url)
        if answered(records) >= expected:
            break
        time.sleep(0.5)
    else:
        return records
    settled = time.monotonic()
    while time.monotonic() - settled < quiet_s and time.monotonic() < deadline:
        time.sleep(0.5)
        latest = read_outputs(broker_url)
        if len(latest) != len(records):
            records, settled = latest, time.monotonic()
    return records


def send(broker_url: str, events: list[ev.ImageEvent]) -> list[str]:
    client = producer(broker_url)
    try:
        return publish(client, "images.in", events)
    finally:
        client.close()


def labels_by_event(records) -> dict[str, list[ev.LabelEvent]]:
    out = defaultdict(list)
    for topic, value in records:
        if topic == "labels.out":
            label = ev.decode_label_event(value)
            out[label.event_id].append(label)
    return out


def by_event(records) -> dict[str, list[tuple[str, bytes]]]:
    """Every record (topic, value) per event_id (records without an event id under None)."""
    out = defaultdict(list)
    for topic, value in records:
        out[msgpack.unpackb(value).get("event_id")].append((topic, value))
    return out


def http_get(port: int, path: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_ready(worker: WorkerProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http_get(worker.web_port, "/ready")[0] == 200:
                return
        except OSError:
            pass  # the web server is not up yet
        assert worker.process.poll() is None, worker.log.read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"worker not ready after {timeout_s}s: {worker.log.read_text()[-3000:]}")


def jpeg(image: Image.Image, mode: str = "RGB", quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert(mode).save(out, "JPEG", quality=quality)
    return out.getvalue()


def run(pipeline, *batches, store=None, partitions=None, trace=None) -> list[list]:
    """Each batch (events or raw values) through the pipeline in process, in turn, over one history
    store; the pipeline is closed afterwards."""
    from workers.histories import MemoryStore
    from workers.telemetry import NULL_TRACE

    store = store if store is not None else MemoryStore()

    async def go():
        try:
            return [await pipeline.process([ev.encode_image_event(e) if isinstance(e, ev.ImageEvent) else e
                                            for e in batch], store, trace or NULL_TRACE, partitions)
                    for batch in batches]
        finally:
            await pipeline.close()

    return asyncio.run(go())
