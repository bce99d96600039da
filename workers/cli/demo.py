"""`cased demo`: everything local, one command.

Starts the embedded broker, a local S3 endpoint (moto, real HTTP), one worker with the tiny model and
database, and the live view (`cased view`, its URL printed first), publishes a simulated camera
(a fixed camera holding a star, then a moon, then a heart, two frames a second, a near-tie frame
every third frame; tiny-world frames stored in S3 and published as s3:// references, with the
`steady` history policy) and an upload stream of real photos shipped in packages (inline frames),
prints labels as they arrive (raw vs consistent), then the camera's consistent label changes as the
terminal saw them and as the live view shows them, and shuts everything down (at a terminal, once
Enter is pressed, so that the view can be looked at). The worker's output and the servers' and
clients' logs go to files in a work folder, named at the start, so that the terminal shows only the
demo.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO
from urllib.request import urlopen

from PIL import Image

from cased_core.method.history import STEADY, UPLOAD
from cased_core.tinyworld.cameras import Stream, scripted
from topics import events as ev
from workers.cli.broker import EmbeddedBroker, free_port
from workers.cli.processes import stop_process
from workers import logs
from workers.clients import ensure_topics, image_event, producer, publish, read_records
from workers.settings import Settings

CAMERA_SCENES = ("star", "moon", "heart")
CAMERA = "camera-1"


def camera(frames_per_scene: int, seed: int = 11) -> Stream:
    """A fixed camera holding each scene in turn (two frames a second, each the scene's rendering with
    sensor noise and a pixel of shake); every third frame is a near-tie, blended with a ring, the kind
    of frame on which a per-image label flips."""
    return scripted(CAMERA, [(scene, frames_per_scene) for scene in CAMERA_SCENES], seed=seed, near_tie_every=3,
                    distractor="ring")


def label_changes(labels: list[str]) -> list[str]:
    """The labels a stream showed, each once per run: ["star", "star", "moon"] -> ["star", "moon"]."""
    return [label for i, label in enumerate(labels) if i == 0 or label != labels[i - 1]]


def view_card(url: str, stream_id: str, labels: int, timeout_s: float = 30.0) -> dict | None:
    """The live view's card of a stream once it holds `labels` labels (None if it does not in time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urlopen(url + "snapshot", timeout=timeout_s) as response:
            card = next((c for c in json.load(response)["streams"] if c["stream_id"] == stream_id), None)
        if (card is not None and card["labels"] >= labels) or time.monotonic() > deadline:
            return card
        time.sleep(0.2)


def package_photos() -> list[tuple[str, Image.Image]]:
    """Real photos that ship inside scikit-image and scikit-learn."""
    from skimage import data

    photos = [(name, Image.fromarray(getattr(data, name)())) for name in
              ("astronaut", "chelsea", "coffee", "rocket")]
    from sklearn.datasets import load_sample_images

    for name, array in zip(("china", "flower"), load_sample_images().images):
        photos.append((name, Image.fromarray(array)))
    return photos


def jpeg(image: Image.Image, max_side: int = 384) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def start_worker(settings: Settings, broker_url: str, extra_env: dict[str, str] | None = None,
                 output: IO | None = None, log_level: str = "warning") -> subprocess.Popen:
    """`cased worker` in its own process, logging at `log_level`; its output goes to `output` (default:
    stderr, since stdout carries the demo's labels or a benchmark's JSON)."""
    env = {**os.environ, "CASED_BROKER": broker_url, "CASED_MODEL": settings.model,
           "CASED_DATABASE": settings.database, "CASED_WEB_PORT": str(free_port()), **(extra_env or {})}
    output = output or sys.stderr
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--log-level", log_level], env=env,
                            stdout=output, stderr=output)


def local_s3(frames: list[bytes]):
    """A moto S3 server on a free loopback port holding the camera frames; returns (server, env, uris)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "demo",
           "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1", "CASED_S3_BUCKETS": "camera-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="demo", aws_secret_access_key="demo")
    client.create_bucket(Bucket="camera-1")
    uris = []
    for i, frame in enumerate(frames):
        client.put_object(Bucket="camera-1", Key=f"frames/{i:04d}.jpg", Body=frame)
        uris.append(f"s3://camera-1/frames/{i:04d}.jpg")
    return server, env, uris


@contextmanager
def logs_to(path: Path, settings: Settings):
    """Sends every log record of this process (the live view, moto's S3 server, the Kafka clients,
    asyncio) to the file `path` rather than the terminal, for the duration; the logging set-up before
    it is restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("cased").level
    with open(path, "a") as file:
        logs.configure(settings.log_level, settings.log_format, stream=file)
        try:
            yield
        finally:
            root.handlers, root.level = saved[0], saved[1]
            logging.getLogger("cased").setLevel(saved[2])


def start_view(settings: Settings, broker_url: str, s3_env: dict[str, str], worker_url: str):
    """The live view of the demo's topics on a free loopback port, started; the camera's s3:// frames
    are fetched for thumbnails through the worker's guarded fetcher, with the worker's limits and the
    demo's S3 endpoint; the worker at `worker_url` is shown ready or paused."""
    import boto3

    from workers.fetch import Fetcher
    from workers.cli.view import ViewThread

    view_settings = replace(settings, broker=broker_url, s3_buckets=s3_env["CASED_S3_BUCKETS"])
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name=s3_env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    view = ViewThread(view_settings, port=0, fetch_thumbnails=True,
                      fetcher=Fetcher(view_settings.fetch_limits(), s3_client=s3), workers=[worker_url])
    view.start()
    return view


def run_demo(frames: int, timeout_s: float = 120.0, keep_view: bool | None = None) -> None:
    """Runs the demo (see the module's docstring).

    Args:
        frames: camera frames per scene.
        timeout_s: how long the worker may take to answer every event.
        keep_view: once every record arrived, keep everything up until Enter is pressed, so that the
            live view can be looked at; default: when stdin is a terminal.

    Raises:
        RuntimeError: the worker did not answer every event in time (its log is named).
    """
    settings = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="cased-demo-"))
    print(f"logs in {work}: worker.log, broker.log, demo.log (the live view, S3 endpoint and Kafka clients)")
    with logs_to(work / "demo.log", settings), EmbeddedBroker(log_path=work / "broker.log") as broker, \
            open(work / "worker.log", "w") as worker_log:
        print(f"embedded broker on {broker.address}")
        frames_of = camera(frames).frames
        s3, s3_env, uris = local_s3([jpeg(f.image) for f in frames_of])
        print(f"local S3 endpoint on {s3_env['AWS_ENDPOINT_URL']} holding {len(uris)} camera frames")
        ensure_topics(broker.url, [settings.images_topic, settings.labels_topic, settings.dead_letter_topic],
                      settings.partitions)
        worker = view = None
        try:
            web_port = free_port()
            view = start_view(settings, broker.url, s3_env, f"http://127.0.0.1:{web_port}")
            print(f"live view: {view.server.url}", flush=True)
            worker = start_worker(settings, broker.url, {**s3_env, "CASED_WEB_PORT": str(web_port)}, output=worker_log,
                                  log_level=settings.log_level)
            started = time.time()
            cam = [image_event(CAMERA, uri, {ev.HISTORY_ATTR: STEADY}, ts=started + f.t)
                   for uri, f in zip(uris, frames_of)]
            uploads = [image_event("uploads", jpeg(photo), {ev.HISTORY_ATTR: UPLOAD, "name": name})
                       for name, photo in package_photos()]
            client = producer(broker.url)
            publish(client, settings.images_topic, cam + uploads)
            client.close()
            expected = len(cam) + len(uploads)
            print(f"published {len(cam)} camera frames ({', '.join(CAMERA_SCENES)}, near-ties every third "
                  f"frame) and {len(uploads)} uploaded photos; waiting for the worker")
            seen, consistent, raw = 0, [], []
            deadline = time.monotonic() + timeout_s
            for topic, _, value in read_records(broker.url, [settings.labels_topic, settings.dead_letter_topic],
                                                idle_timeout_s=timeout_s):
                seen += 1
                if topic == settings.dead_letter_topic:
                    letter = ev.decode_dead_letter(value)
                    print(f"  DEAD {letter.event_id}: {letter.reason} {letter.detail}")
                else:
                    label = ev.decode_label_event(value)
                    if label.stream_id == CAMERA:
                        consistent.append(label.label)
                        raw.append(label.raw_label)
                    name = label.attrs.get("name", label.event_id[:8])
                    marker = "" if label.label == label.raw_label else "   <- history kept the label"
                    print(f"  {label.stream_id:<9} {name:<9} raw {label.raw_label:<10} consistent "
                          f"{label.label:<10}{marker}")
                if seen == expected or time.monotonic() > deadline:
                    break
            print(f"{seen} of {expected} records received")
            if seen != expected:
                raise RuntimeError(f"the worker answered {seen} of {expected} events in {timeout_s}s; "
                                   f"see its log, {work / 'worker.log'}")
            shown = label_changes(consistent)
            print(f"{CAMERA}: consistent label {' -> '.join(shown)} ({len(shown) - 1} changes in {len(consistent)} "
                  f"frames; the raw label changed {len(label_changes(raw)) - 1} times)")
            card = view_card(view.server.url, CAMERA, len(cam))
            print(f"live view: {CAMERA} " + ("not shown in time" if card is None else
                                             f"shows {card['label']} after {card['changes'] - 1} changes of its "
                                             f"consistent label"))
            if keep_view if keep_view is not None else sys.stdin.isatty():
                try:
                    input(f"the live view stays up at {view.server.url}: press Enter to stop ")
                except EOFError:  # stdin closed: nobody is there to press it
                    pass
        finally:
            if worker is not None:
                stop_process(worker)
            if view is not None:
                view.stop()  # before the broker goes: its Kafka clients would log every retry
            s3.stop()
