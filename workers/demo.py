"""`cased demo`: everything local, one command.

Starts the embedded broker, a local S3 endpoint (moto, real HTTP), one worker with the tiny model and
database, publishes a simulated camera (tiny-world frames with scene changes and near-ties, stored
in S3 and published as s3:// references) and an upload stream of real photos shipped in packages
(inline frames), prints labels as they arrive (raw vs consistent) and shuts everything down.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from typing import Iterator

import numpy as np
from PIL import Image

from cased_core import tinyworld
from topics import events as ev
from workers.broker import EmbeddedBroker, free_port
from workers.clients import ensure_topics, image_event, producer, publish, read_records
from workers.settings import Settings

CAMERA_SCENES = ("star", "moon", "heart")


def camera_frames(frames_per_scene: int, seed: int = 11) -> Iterator[Image.Image]:
    """Each scene's shape re-rendered frame after frame; every third frame is a near-tie, blended
    with another shape, the kind of frame on which a per-image label flips."""
    rng = np.random.default_rng(seed)
    for scene in CAMERA_SCENES:
        for i in range(frames_per_scene):
            frame, _ = tinyworld.render(rng, scene, size=96)
            if i % 3 == 2:
                other = tinyworld.CATEGORIES[int(rng.integers(len(tinyworld.CATEGORIES)))]
                distractor, _ = tinyworld.render(rng, other, size=96)
                frame = Image.blend(frame, distractor, float(rng.uniform(0.35, 0.5)))
            yield frame


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


def start_worker(settings: Settings, broker_url: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "CASED_BROKER": broker_url, "CASED_MODEL": settings.model,
           "CASED_DATABASE": settings.database, "CASED_WEB_PORT": str(free_port()), **(extra_env or {})}
    # The worker's own output goes to stderr: stdout carries the demo's labels or a benchmark's JSON.
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--loglevel", "warning"], env=env,
                            stdout=sys.stderr, stderr=sys.stderr)


def stop_worker(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def local_s3(frames: list[bytes]):
    """A moto S3 server on a free loopback port holding the camera frames; returns (server, env, uris)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
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


def run_demo(frames: int = 12, timeout_s: float = 120.0) -> None:
    settings = Settings.from_env()
    with EmbeddedBroker() as broker:
        print(f"embedded broker on {broker.address}")
        s3, s3_env, uris = local_s3([jpeg(f) for f in camera_frames(frames)])
        print(f"local S3 endpoint on {s3_env['AWS_ENDPOINT_URL']} holding {len(uris)} camera frames")
        ensure_topics(broker.url, [settings.images_topic, settings.labels_topic, settings.dead_letter_topic],
                      settings.partitions)
        worker = start_worker(settings, broker.url, s3_env)
        try:
            camera = [image_event("camera-1", uri, {"history": "live"}) for uri in uris]
            uploads = [image_event("uploads", jpeg(photo), {"history": "upload", "name": name})
                       for name, photo in package_photos()]
            client = producer(broker.url)
            publish(client, settings.images_topic, camera + uploads)
            client.close()
            expected = len(camera) + len(uploads)
            print(f"published {len(camera)} camera frames ({', '.join(CAMERA_SCENES)}, near-ties every third "
                  f"frame) and {len(uploads)} uploaded photos; waiting for the worker")
            seen = 0
            deadline = time.monotonic() + timeout_s
            for topic, _, value in read_records(broker.url, [settings.labels_topic, settings.dead_letter_topic],
                                                idle_timeout_s=timeout_s):
                seen += 1
                if topic == settings.dead_letter_topic:
                    letter = ev.decode_dead_letter(value)
                    print(f"  DEAD {letter.event_id}: {letter.reason} {letter.detail}")
                else:
                    label = ev.decode_label_event(value)
                    name = label.attrs.get("name", label.event_id[:8])
                    marker = "" if label.label == label.raw_label else "   <- history kept the label"
                    print(f"  {label.stream_id:<9} {name:<9} raw {label.raw_label:<10} consistent "
                          f"{label.label:<10}{marker}")
                if seen == expected or time.monotonic() > deadline:
                    break
            print(f"{seen} of {expected} records received")
            if seen != expected:
                raise RuntimeError(f"the worker answered {seen} of {expected} events in {timeout_s}s")
        finally:
            stop_worker(worker)
            s3.stop()
