"""A real Prometheus (Debian's package) scrapes a real worker's /metrics: what it stored, read back through
its own query API, matches the records the worker wrote; every query of the shipped Grafana dashboard
runs there."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.workers.helpers import TOPICS, PARTITIONS, collect, send, shape, wait_ready
from topics import events as ev
from workers.clients import ensure_topics, image_event
from workers.cli.broker import free_port
from workers.cli.processes import stop_process

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "cased-stream" / "dashboards" / "cased-stream.json"

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs Debian's prometheus (apt-get install prometheus; .ci/run installs it)")


class Prometheus:
    """`prometheus` on a free loopback port scraping `target` every second, its data in `folder`."""

    def __init__(self, target: str, folder: Path):
        self.port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                          f"  - job_name: cased\n    static_configs:\n      - targets: ['{target}']\n")
        self.log = folder / "prometheus.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout_s}s: {self.log.read_text()[-3000:]}")

    def query(self, expr: str) -> list[dict]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def values(self, expr: str) -> dict[tuple, float]:
        """{sorted labels without __name__, job, instance: value} of an instant query."""
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance"))):
                float(r["value"][1]) for r in self.query(expr)}

    def wait_until(self, condition: str, timeout_s: float = 60.0) -> None:
        """Until the PromQL `condition` (a filter, e.g. `x == 3`) has a result; scraped every second."""
        deadline = time.monotonic() + timeout_s
        while not self.query(condition):
            assert time.monotonic() < deadline, f"{condition}: not true after {timeout_s}s"
            time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.process, timeout_s=30)


@pytest.fixture
def prometheus_for(tmp_path):
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        folder = tmp_path / f"prometheus{len(started)}"
        folder.mkdir()
        server = Prometheus(target, folder)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def test_prometheus_scrapes_the_counts_of_the_records_the_worker_wrote(broker, workers, prometheus_for):
    ensure_topics(broker.url, TOPICS, PARTITIONS)
    worker = workers(broker.url, {"CASED_FETCH_RETRIES": "0"})
    wait_ready(worker)
    prometheus = prometheus_for(f"127.0.0.1:{worker.web_port}")
    events = [image_event(f"cam-{i % 3}", shape(name, i)) for i, name in
              enumerate(["star", "moon", "heart", "ring", "cross", "arrow", "circle", "square", "diamond"])]
    events += [image_event("cam-0", b"\x00 not an image"), image_event("cam-1", b"\x89PNG truncated"),
               image_event("cam-2", "s3://nobody-allowed/x.png"), image_event("cam-2", "ftp://example.org/a.png")]
    send(broker.url, events)
    records = collect(broker.url, len(events))
    labels = sum(topic == "labels.out" for topic, _ in records)
    reasons = Counter(ev.decode_dead_letter(value).reason for topic, value in records if topic == "images.dlq")
    assert labels + sum(reasons.values()) == len(events) and labels >= 9 and len(reasons) >= 2, reasons

    prometheus.wait_until(f"cased_events_in_total == {len(events)}")
    assert prometheus.values("up") == {(): 1.0}
    assert prometheus.values("cased_labels_out_total") == {(): labels}
    assert prometheus.values("cased_dead_letters_total") == {(("reason", r),): n for r, n in reasons.items()}
    batches = prometheus.values("cased_batches_total")[()]
    assert prometheus.values("cased_batch_size_count") == {(): batches}
    assert prometheus.values("cased_batch_size_sum") == {(): len(events)}
    assert prometheus.values("cased_assigned_partitions") == {(): PARTITIONS}
    assert prometheus.values("cased_ready") == {(): 1.0}
    assert prometheus.values('sum(cased_stage_cpu_seconds_total{stage="encode"}) > 0')
    assert prometheus.values("process_resident_memory_bytes")[()] > 100e6  # torch and the model, at least
    # Each partition answered and committed: its lag is known and nothing waits.
    prometheus.wait_until("sum(cased_consumer_lag) == 0")

    # Every query of the Grafana dashboard runs on the scraped data (the variables as "All"); rates need
    # two scrapes in their window after the events.
    prometheus.wait_until(f"count_over_time(cased_events_in_total[1m]) >= 2 and cased_events_in_total == {len(events)}")
    dashboard = json.loads(DASHBOARD.read_text())
    answered = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$job", ".*")
            answered[(panel["title"], target["legendFormat"])] = prometheus.query(expr)
    for key in (("Images/s in", "images/s"), ("Events in, labels out, dead letters", "labels out"),
                ("Dead letters by reason", "{{reason}}"), ("CPU per image by stage", "{{stage}}"),
                ("Batch size", "mean"), ("Memory (resident)", "{{instance}}"), ("Workers", "{{instance}} {{model}} "
                                                                                         "{{database}} {{device}}")):
        assert answered[key], key  # data where a worker ran
