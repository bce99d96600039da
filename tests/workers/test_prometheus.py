"""/metrics: the Prometheus exposition built from a worker snapshot (WorkerHealth.status() plus lag)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from workers.costs import StageCosts
from workers.health import WorkerHealth
from workers.prometheus import exposition, families, registry

# What WorkerHealth.status() reports, with the keys that pausing on outages adds (issue 17).
SNAPSHOT = {
    "model": "tiny@abc", "database": "tiny-db@def", "ready": True, "live": True, "halted": None,
    "serving": {"device": "cpu", "search": "faiss Flat", "jpeg_decoder": "pil",
                "threads": {"decode": 2, "torch": 1}, "encoder_ms_per_image": 0.4},
    "partitions": [0, 2, 3],
    "counters": {"events_in": 40, "batches": 6, "labels_out": 35, "read_back": 2, "commit_failures": 1},
    "dead_letters": {"not_an_image": 3, "forbidden_source": 2},
    "cpu_s_by_stage": {"decode": 0.25, "encode": 1.5},
    "in_flight": 2,
    "batch_sizes": {"1": 1, "4": 2, "16": 3},  # as JSON has it (string keys); ints work too
    "paused": {"storage": {"since": 1_796_000_000.0, "seconds": 12.5, "detail": "S3 unreachable"}},
    "outages": {"storage": 3, "broker": 1},
    "paused_s": {"storage": 40.0, "broker": 2.5},
    "model_batch_size": 8,
    "out_of_memory": 2,
    "lag": {0: 5, 2: 0, 3: 17},
}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition, parsed by Prometheus' own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(snapshot: dict, accept: str | None = None) -> tuple[str, str]:
    body, content_type = exposition(registry(lambda: snapshot), accept)
    return body.decode(), content_type


def test_every_figure_of_the_snapshot_is_a_metric():
    text, content_type = scrape(SNAPSHOT)
    assert content_type.startswith("text/plain")
    found = samples(text)
    assert found[("cased_events_in_total", ())] == 40
    assert found[("cased_labels_out_total", ())] == 35
    assert found[("cased_batches_total", ())] == 6
    assert found[("cased_read_back_total", ())] == 2
    assert found[("cased_commit_failures_total", ())] == 1
    assert found[("cased_dead_letters_total", (("reason", "not_an_image"),))] == 3
    assert found[("cased_dead_letters_total", (("reason", "forbidden_source"),))] == 2
    assert found[("cased_stage_cpu_seconds_total", (("stage", "encode"),))] == 1.5
    assert found[("cased_batches_in_flight", ())] == 2
    assert found[("cased_assigned_partitions", ())] == 3
    assert {k[1]: v for k, v in found.items() if k[0] == "cased_consumer_lag"} == {
        (("partition", "0"),): 5, (("partition", "2"),): 0, (("partition", "3"),): 17}
    assert (found[("cased_ready", ())], found[("cased_live", ())], found[("cased_halted", ())]) == (1, 1, 0)
    info = [k[1] for k in found if k[0] == "cased_worker_info"]
    assert info == [(("database", "tiny-db@def"), ("device", "cpu"), ("jpeg_decoder", "pil"), ("model", "tiny@abc"),
                     ("search", "faiss Flat"))]
    # Process figures come with it (operators watch the memory).
    assert found[("process_resident_memory_bytes", ())] > 0


def test_batch_sizes_are_a_cumulative_histogram():
    found = samples(scrape(SNAPSHOT)[0])
    buckets = {dict(labels)["le"]: v for (name, labels), v in found.items() if name == "cased_batch_size_bucket"}
    assert (buckets["1.0"], buckets["2.0"], buckets["4.0"], buckets["8.0"], buckets["16.0"], buckets["+Inf"]) == \
        (1, 1, 3, 3, 6, 6)
    assert found[("cased_batch_size_count", ())] == 6
    assert found[("cased_batch_size_sum", ())] == 1 + 2 * 4 + 3 * 16


def test_pauses_are_per_dependency_and_a_dependency_back_reads_zero():
    found = samples(scrape(SNAPSHOT)[0])
    assert found[("cased_paused", (("dependency", "storage"),))] == 1
    assert found[("cased_paused", (("dependency", "broker"),))] == 0  # had outages, not paused now
    assert found[("cased_outages_total", (("dependency", "storage"),))] == 3
    assert found[("cased_paused_seconds_total", (("dependency", "broker"),))] == 2.5
    assert found[("cased_model_batch_size", ())] == 8 and found[("cased_out_of_memory_total", ())] == 2


def test_a_worker_without_pause_figures_has_no_pause_metrics_and_no_stream_label():
    plain = {k: v for k, v in SNAPSHOT.items()
             if k not in ("paused", "outages", "paused_s", "model_batch_size", "out_of_memory")}
    names = {f.name for f in families(plain)}
    assert not {"cased_paused", "cased_outages", "cased_paused_seconds", "cased_model_batch_size",
                "cased_out_of_memory"} & names
    labels = {label for f in families(SNAPSHOT) for s in f.samples for label in s.labels}
    assert labels == {"reason", "stage", "le", "partition", "dependency", "model", "database", "device", "search",
                      "jpeg_decoder"}


def test_openmetrics_when_the_scraper_asks_for_it():
    text, content_type = scrape(SNAPSHOT, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n") and "cased_events_in_total 40.0" in text


def test_what_a_worker_counts_reaches_the_metrics():
    """The contract with WorkerHealth: its own counting, through status(), into the exposition."""
    health = WorkerHealth(costs=StageCosts(clock=iter([0.0, 0.5]).__next__))
    health.loaded("tiny@x", "tiny-db@y", {"device": "cpu"})
    health.assigned([1])
    health.batch_started(8)
    health.batch_started(3)
    with health.costs.measure("decode"):
        pass
    health.batch_done(6, ["not_an_image", "too_large"])
    found = samples(scrape({**health.status(), "lag": {1: 4}})[0])
    assert found[("cased_events_in_total", ())] == 11
    assert found[("cased_labels_out_total", ())] == 6
    assert found[("cased_dead_letters_total", (("reason", "too_large"),))] == 1
    assert found[("cased_batches_in_flight", ())] == 1
    assert found[("cased_batch_size_count", ())] == 2 and found[("cased_batch_size_sum", ())] == 11
    assert found[("cased_stage_cpu_seconds_total", (("stage", "decode"),))] == 0.5
    assert found[("cased_consumer_lag", (("partition", "1"),))] == 4
