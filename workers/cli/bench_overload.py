"""`cased bench overload`: one worker published to faster than it sustains, for minutes."""
from __future__ import annotations

import time

import numpy as np

from workers.cli.benchkit import Answers, Publisher, camera_frames, proc_kb, say, spread


def bench_overload(*, model_name: str, batch_size: int, duration_s: float, factor: float,
                   worker_env: dict[str, str] | None, calibration_events: int | None = None,
                   frame_count: int = 48, drain_timeout_s: float | None = None) -> dict:
    """Embedded broker + one worker, published to at `factor` times the rate it sustains for `duration_s`:
    the worker's memory (sampled every second), the lag, and once the burst ends, how long the backlog
    takes to drain; then every published event must have its record, and repeated records be identical.

    `worker_env` is added to the worker's environment: e.g. Faust's own variables (STREAM_BUFFER_MAXSIZE,
    CONSUMER_MAX_FETCH_SIZE, BROKER_MAX_POLL_RECORDS override the app's keyword arguments) to compare
    buffer settings. The defaults are the command line's (`cased bench overload --help`)."""
    import threading

    from workers.cli.broker import EmbeddedBroker
    from workers.clients import ensure_topics, image_event
    from workers.cli.demo import start_worker
    from workers.cli.processes import stop_process
    from workers.settings import Settings

    settings = Settings(model=model_name)
    say(f"rendering {frame_count} camera frames (640x480 JPEG)")
    frames = camera_frames(frame_count)
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
        answers = Answers(broker.url, [settings.labels_topic, settings.dead_letter_topic]).start()
        publisher = Publisher(broker.url, settings.images_topic)
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
            rss = proc_kb(worker.pid, "VmRSS")
            s = {"phase": phase, "t": round(time.monotonic() - t0, 1), "published": len(published),
                 "answered": answers.answered(), "rss_mb": rss / 1024 if rss else None,
                 "committed_lag": publisher.committed_lag(settings.app_id, settings.partitions)}
            s["lag"] = s["published"] - s["answered"]
            samples.append(s)
            return s

        try:
            say("waiting for the worker's first label")
            wait_for(publisher.publish(events(1, "warm")), 180)
            warm = publisher.publish(events(4 * batch_size, "warm"))
            rough = len(warm) / max(wait_for(warm, 120), 1e-3)
            time.sleep(2.0)
            rss_idle = proc_kb(worker.pid, "VmRSS") / 1024  # loaded and warm, nothing buffered
            count = calibration_events or int(min(6000, max(8 * batch_size, rough * 15)))
            say(f"saturated run: {count} events published at once (warm-up rate {rough:.1f}/s)")
            started = time.time()
            saturated = publisher.publish(events(count, "sat"))
            wait_for(saturated, 900)
            with answers.lock:  # from the first send to the last event's first record
                sustained = count / (max(answers.first[i] for i in saturated) - started)
            offered = factor * sustained
            say(f"sustained {sustained:.1f} events/s; burst at {offered:.1f}/s for {duration_s:.0f}s")

            # The burst: the publisher's thread on its schedule; this one samples once a second.
            outcome: dict = {}

            def produce() -> None:
                try:
                    outcome["sent"] = publisher.paced(lambda n: events(n, "burst"), offered, duration_s)
                except BaseException as err:
                    outcome["error"] = err

            answered_at_begin = answers.answered()
            burst_begin = time.monotonic()
            rss_start = proc_kb(worker.pid, "VmRSS") / 1024
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
                    say(f"  burst {s['t']:5.0f}s: published {s['published']}, answered {s['answered']}, "
                         f"lag {s['lag']}, worker rss {s['rss_mb']:.0f} MB")
            if "error" in outcome:
                raise RuntimeError(f"publishing failed: {outcome['error']!r}")
            burst_s = time.monotonic() - burst_begin
            drain_begin, burst_end_wall = time.monotonic(), time.time()
            end = sample("burst", burst_begin)
            answered_in_burst = end["answered"] - answered_at_begin
            say(f"burst over after {burst_s:.0f}s: {outcome['sent']} events published, lag {end['lag']}; draining")

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
                        say(f"  drain {s['t']:5.0f}s: lag {s['lag']}, worker rss {s['rss_mb']:.0f} MB")
            with answers.lock:  # from the burst's end to the last event's first record
                drain_s = max(0.0, max(answers.first[i] for i in published) - burst_end_wall)
            time.sleep(3.0)  # records still on their way (repeats, if any) are read too, the last commit lands
            final = sample("drained", drain_begin)
            peak_rss = (proc_kb(worker.pid, "VmHWM") or 0) / 1024
        finally:
            publisher.close()
            stop_process(worker)
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
        "rss_burst_mb": spread(s["rss_mb"] for s in burst),
        "rss_burst_quarter_max_mb": [round(float(q.max()), 1) for q in quarters if len(q)],
        "lag_max": max(s["lag"] for s in samples), "lag_at_burst_end": end["lag"],
        "committed_lag_max": max(committed) if committed else None,
        "committed_lag_at_burst_end": end["committed_lag"],
        "lag_after_drain": final["lag"], "committed_lag_after_drain": final["committed_lag"],
        "drain_s": round(drain_s, 1), "samples": len(samples),
    }
