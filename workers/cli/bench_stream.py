"""`cased bench stream`: what one worker costs per image and how many images a second it answers.

Each run: the embedded broker; camera-sized JPEG frames published to a topic of the run's own
(inline, or as s3:// references to a local S3 endpoint), all of them before the worker starts, so the
publisher never competes with it; then one worker process answers them. The measurement window opens
once a tenth of the events are answered (start-up and first-call costs are outside it) and closes on
the last answer. In the window:

- the ceiling: events answered per second (wall time: the worker has the machine to itself, but the
  machine is shared, so each figure is repeated and reported as min / median / max);
- the worker's CPU per image: its process CPU time (every thread, from /proc) over the events
  answered, and per stage from the worker's own accounting (/status `cpu_s_by_stage`, thread CPU
  time); `other` is the process CPU no stage accounts for (Faust and aiokafka's consumer and producer
  internals, the event loop, torch's intra-op threads);
- beyond the encoder: the process CPU minus the encode stage's, both from the same window of the same
  process, so it cannot come out negative or flatter the pipeline, whatever the neighbours do.

Sizes are interleaved within each repetition (640x480, 1920x1080, 640x480, ...), so a slow hour on the
shared machine hits every size alike.

Scenarios: `busy`, every frame of a stream different (the worker's cost per frame); `fixed`, fixed
cameras at FPS frames/s of event time, each scene held for hundreds of frames with sensor noise,
lighting drift, a small moving object and rare cuts (benchkit.fixed_camera_frames). With
`compare_gate`, each run is made twice in turn, the change gate off (CASED_GATE_FRAMES=1) and on, and
the report adds, per repetition, the gated run's images/s and CPU per image over the ungated one's, and
the fraction of frames the gate answered.
"""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np

from workers.cli.benchkit import Answers, Publisher, camera_frames, fixed_camera_frames, proc_kb, say, spread

SIZES = ("640x480", "1920x1080")
SOURCES = ("inline", "s3")
SCENARIOS = ("busy", "fixed")
PARTITIONS = 4
STREAMS = 8
FPS = 5.0  # a fixed camera's frames per second of event time
GATE_OFF = {"CASED_GATE_FRAMES": "1"}


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) >= 8 and int(height) >= 8):
        raise ValueError(f"frame size {text!r}: expected WIDTHxHEIGHT in pixels, at least 8x8, e.g. 640x480")
    return int(width), int(height)


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of every thread of process `pid` so far."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as response:
        return json.load(response)


def _database(model_name: str, device: str, entries: int, frames: list[bytes], work_dir: Path) -> str:
    """'tiny' for the tiny model; for an open_clip architecture (random init: its cost is the
    architecture's), a synthetic database of `entries` captions centred partly on the frames, built once
    under `work_dir` (workers.cli.bench.synthetic_database)."""
    if model_name == "tiny":
        return "tiny"
    import io

    import torch
    from PIL import Image

    from cased_core.artifacts.model import load_model
    from workers.cli.bench import synthetic_database

    model = load_model(model_name, None, device)
    pixels = torch.stack([model.preprocess(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames[:256]])
    out = work_dir / f"db-{model.identity.replace('/', '_')}-{entries}-stream"
    return str(synthetic_database(model, entries, pixels, out).path)


class _GpuBusy:
    """nvidia-smi's GPU utilisation, sampled every 200 ms from construction to `stop` (the mean, in %)."""

    def __init__(self):
        import subprocess

        self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                         "-lms", "200"], stdout=subprocess.PIPE, text=True)

    def stop(self) -> float | None:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=10)
        samples = [float(line) for line in output.split() if line.strip().replace(".", "", 1).isdigit()]
        return round(float(np.mean(samples)), 1) if samples else None


def _one_run(broker_url: str, tag: str, size: str, frames: list[list[bytes]], events: int, model_name: str,
             batch_size: int, device: str, source: str, worker_env: dict[str, str], timed: bool) -> dict:
    """Publish `events` frames to the run's own topics, start one worker, measure it; stop it. `frames`:
    one list per stream, taken in turn (a stream's frames in order); `timed`: events carry their
    camera's time (FPS frames a second)."""
    from workers.cli.broker import free_port
    from workers.clients import ensure_topics, image_event
    from workers.cli.demo import local_s3, start_worker
    from workers.cli.processes import stop_process
    from workers.settings import Settings

    topics = {"CASED_IMAGES_TOPIC": f"{tag}.images.in", "CASED_LABELS_TOPIC": f"{tag}.labels.out",
              "CASED_DEAD_LETTER_TOPIC": f"{tag}.images.dlq"}
    ensure_topics(broker_url, list(topics.values()), PARTITIONS)
    env = {**topics, "CASED_APP_ID": tag, "CASED_PARTITIONS": str(PARTITIONS), "CASED_BATCH_SIZE": str(batch_size),
           "CASED_DEVICE": device, "CASED_WEB_PORT": str(free_port()), **worker_env}
    server = None
    order = [(i % len(frames), (i // len(frames)) % len(frames[i % len(frames)])) for i in range(events)]
    sources: list = [[frame for frame in stream] for stream in frames]
    if source == "s3":
        server, s3_env, uris = local_s3([frame for stream in frames for frame in stream])
        env.update(s3_env)
        flat = iter(uris)
        sources = [[next(flat) for _ in stream] for stream in frames]
    start = time.time()
    items = [image_event(f"cam-{s}", sources[s][n], event_id=f"{tag}-{i}",
                         ts=start + (i // len(frames)) / FPS if timed else None) for i, (s, n) in enumerate(order)]
    publisher = Publisher(broker_url, topics["CASED_IMAGES_TOPIC"])
    try:
        ids = publisher.publish(items)
    finally:
        publisher.close()
    answers = Answers(broker_url, [topics["CASED_LABELS_TOPIC"], topics["CASED_DEAD_LETTER_TOPIC"]]).start()
    worker = start_worker(Settings(model=model_name), broker_url, env)
    port = int(env["CASED_WEB_PORT"])
    try:
        def wait_until(count: int, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while answers.answered() < count:
                if answers.error is not None:
                    raise RuntimeError(f"reading the outputs failed: {answers.error!r}")
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with {worker.returncode}; see its output above")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{events - answers.answered()} of {events} events unanswered "
                                       f"after {timeout_s:.0f}s")
                time.sleep(0.01)

        def snapshot() -> dict:
            status = _status(port)
            return {"t": time.monotonic(), "answered": answers.answered(), "cpu_s": _process_cpu_s(worker.pid),
                    "stages": status.get("cpu_s_by_stage", {}), "reused": status["counters"].get("reused", 0)}

        wait_until(max(events // 10, 4 * batch_size), 300)
        sampler = _GpuBusy() if device.startswith("cuda") else None
        first = snapshot()
        wait_until(events, 900)
        last = snapshot()
        gpu_busy = sampler.stop() if sampler else None
        peak_rss_mb = (proc_kb(worker.pid, "VmHWM") or 0) / 1024
        dead = dict(answers.dead)
    finally:
        stop_process(worker)
        answers.stop.set()
        answers.thread.join(10)
        if server is not None:
            server.stop()
    missing = answers.missing(ids)
    if missing:
        raise RuntimeError(f"{len(missing)} events were not answered")
    images = last["answered"] - first["answered"]
    stage_ms = {stage: 1000 * (last["stages"][stage] - first["stages"].get(stage, 0.0)) / images
                for stage in last["stages"]}
    cpu_ms = 1000 * (last["cpu_s"] - first["cpu_s"]) / images
    return {"images": images, "images_per_s": images / (last["t"] - first["t"]), "cpu_ms_per_image": cpu_ms,
            "beyond_encoder_ms": cpu_ms - stage_ms.get("encode", 0.0), "stage_ms": stage_ms,
            "other_ms": cpu_ms - sum(stage_ms.values()), "peak_rss_mb": peak_rss_mb, "dead_letters": dead,
            "gpu_busy_percent": gpu_busy, "gated_fraction": (last["reused"] - first["reused"]) / images}


def bench_stream(*, model_name: str, batch_size: int, events: int, repeats: int, sizes: Sequence[str], source: str,
                 device: str, worker_env: dict[str, str] | None, entries: int, work_dir: Path, scenario: str,
                 compare_gate: bool, frame_count: int = 48) -> dict:
    """The ceiling and the worker's CPU per image, by stage, for each frame size; see the module's doc.
    The defaults are the command line's (`cased bench stream --help`).

    Args:
        model_name: the worker's model ('tiny': its 32 px encoder costs almost nothing, so the
            figures are the worker's own cost).
        batch_size: the worker's CASED_BATCH_SIZE.
        events: events per run (a tenth of them warm the worker up before the window opens).
        repeats: runs per size (at least 3 for min / median / max).
        sizes: frame sizes, as WIDTHxHEIGHT.
        source: 'inline' (the frame in the event) or 's3' (a local S3 endpoint serves the frames).
        device: the worker's CASED_DEVICE.
        frame_count: distinct frames per size in the busy scenario (a camera's payloads differ).
        worker_env: added to the worker's environment (e.g. CASED_DECODE_THREADS to compare).
        entries: captions in the synthetic database of a model other than 'tiny'.
        work_dir: where that database is kept between runs.
        scenario: 'busy' (every frame different) or 'fixed' (fixed cameras; see the module's doc).
        compare_gate: each run twice in turn, the change gate off and on (see the module's doc).

    Raises:
        RuntimeError: a worker exited, or events went unanswered (the figures would be wrong).

    Examples:
        >>> figures = bench_stream(model_name="tiny", batch_size=16, events=3000, repeats=3, sizes=SIZES,
        ...                        source="inline", device="cpu", worker_env=None, entries=1_000_000,
        ...                        work_dir=Path("bench-results/work"), scenario="busy",
        ...                        compare_gate=False)  # doctest: +SKIP
        >>> figures["sizes"]["640x480"]["images_per_s"]["median"]  # doctest: +SKIP
    """
    from workers.cli.broker import EmbeddedBroker

    if repeats < 1 or events < 10 * batch_size:
        raise ValueError("bench stream needs repeats >= 1 and events >= 10 x batch_size")
    if scenario not in SCENARIOS or source not in SOURCES:
        raise ValueError(f"scenario {scenario!r}, source {source!r}: choose among {', '.join(SCENARIOS)} and "
                         f"{', '.join(SOURCES)}")
    for size in sizes:
        _size(size)  # a bad size fails before anything starts
    frames: dict[str, list[list[bytes]]] = {}
    for size in sizes:
        if scenario == "fixed":
            say(f"rendering {STREAMS} fixed cameras of {-(-events // STREAMS)} frames at {size}")
            frames[size] = fixed_camera_frames(STREAMS, -(-events // STREAMS), size=_size(size))
        else:
            say(f"rendering {frame_count} camera frames at {size}")
            pool = camera_frames(frame_count, size=_size(size))
            frames[size] = [pool[s::STREAMS] for s in range(STREAMS)]  # stream s: frames s, s + 8, ...
    database = _database(model_name, device, entries, [f for size in sizes for s in frames[size] for f in s[:32]],
                         work_dir)
    env = {"CASED_DATABASE": database, **(worker_env or {})}
    variants = {"ungated": GATE_OFF, "gated": {}} if compare_gate else {"": {}}
    runs: dict[tuple[str, str], list[dict]] = {(size, v): [] for size in sizes for v in variants}
    with EmbeddedBroker() as broker:
        for repeat in range(repeats):
            for size in sizes:
                for variant, extra in variants.items():
                    say(f"run {repeat + 1}/{repeats}, {size}{' ' + variant if variant else ''}: {events} {source} "
                        f"events ({scenario} cameras), then one worker")
                    run = _one_run(broker.url, f"bench-{repeat}-{size}-{variant or 'as-set'}", size, frames[size],
                                   events, model_name, batch_size, device, source, {**env, **extra},
                                   timed=scenario == "fixed")
                    say(f"  {run['images_per_s']:.1f} images/s, worker CPU {run['cpu_ms_per_image']:.2f} ms per "
                        f"image ({run['beyond_encoder_ms']:.2f} ms beyond the encoder), peak RSS "
                        f"{run['peak_rss_mb']:.0f} MB, gated {100 * run['gated_fraction']:.0f}% of frames")
                    runs[size, variant].append(run)
    out = {"model": model_name, "database": database, "device": device, "batch_size": batch_size, "source": source,
           "scenario": scenario, "events_per_run": events, "repeats": repeats, "partitions": PARTITIONS,
           "streams": STREAMS, "worker_env": dict(worker_env or {}), "sizes": {}}
    for (size, variant), done in runs.items():
        figures = _figures(done, frames[size])
        if not compare_gate:
            out["sizes"][size] = figures
            continue
        out["sizes"].setdefault(size, {})[variant] = figures
        if variant == "gated":  # each repetition's gated run over the ungated run just before it
            ungated = runs[size, "ungated"]
            out["sizes"][size]["gated_over_ungated"] = {
                "images_per_s": spread((g["images_per_s"] / u["images_per_s"] for g, u in zip(done, ungated)), 2),
                "cpu_ms_per_image": spread((g["cpu_ms_per_image"] / u["cpu_ms_per_image"]
                                            for g, u in zip(done, ungated)), 3)}
    return out


def _figures(done: list[dict], frames: list[list[bytes]]) -> dict:
    """One size's (and variant's) runs: each figure's min / median / max over the repetitions."""
    stages = sorted({stage for run in done for stage in run["stage_ms"]})
    return {
        "mean_frame_kb": round(float(np.mean([len(f) for stream in frames for f in stream])) / 1024, 1),
        "images_per_s": spread((r["images_per_s"] for r in done), 1),
        "cpu_ms_per_image": spread((r["cpu_ms_per_image"] for r in done), 3),
        "beyond_encoder_ms": spread((r["beyond_encoder_ms"] for r in done), 3),
        "stage_ms_median": {stage: round(float(np.median([r["stage_ms"].get(stage, 0.0) for r in done])), 3)
                            for stage in stages},
        "other_ms": spread((r["other_ms"] for r in done), 3),
        "peak_rss_mb": spread((r["peak_rss_mb"] for r in done), 0),
        "gpu_busy_percent": spread((r["gpu_busy_percent"] for r in done if r["gpu_busy_percent"] is not None), 1),
        "gated_fraction": spread((r["gated_fraction"] for r in done), 3),
        "dead_letters": [r["dead_letters"] for r in done],
    }
