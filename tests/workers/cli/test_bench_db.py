"""`cased bench db` at a small size: the same code that measures CC12M's size (docs/databases.md), on
20,000 entries of 32 dimensions with an approximate index (OPQ, IVF, PQ), so that every step runs:
the streamed build, tuning, the exact reference, two worker processes sharing the files, the S3
download through a local S3 server."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from workers.cli.bench_db import SyntheticWorld


def test_bench_db_builds_once_and_measures_everything(tmp_path):
    out = tmp_path / "db.json"
    command = [sys.executable, "-m", "workers.cli", "bench", "db", "--entries", "20000", "--dim", "32",
               "--exact-below", "1000", "--queries", "200", "--repeats", "1", "--work-dir", str(tmp_path / "work"),
               "--out", str(out)]
    result = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures == json.loads(out.read_text())
    assert figures["entries"] == 20_000 and figures["index"].startswith("OPQ16_32,IVF")
    build = figures["build"]
    assert list(build["steps"]) == ["captions", "terms", "training", "indexing", "tuning", "checksums"]
    assert all(step["wall_s"] >= 0 and 0 < step["peak_anon_mb"] <= step["peak_rss_mb"]
               for step in build["steps"].values())
    assert build["peak_anon_mb"] == max(step["peak_anon_mb"] for step in build["steps"].values())
    assert figures["disk_mb"]["embeddings.f16"] == round(20_000 * 32 * 2 / 2**20, 1)
    tuned = [row for row in figures["search"] if row["tuned"]]
    assert len(tuned) == 1 and len(figures["search"]) == 3  # the tuned nprobe, half and twice it
    recalls = [row["recall_at_10"] for row in figures["search"]]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0]  # more probes find more
    assert tuned[0]["recall_at_10"] >= 0.9 and tuned[0]["labels_identical"] >= 0.85
    assert all(row["ms_per_image_batch_16"]["median"] > 0 for row in figures["search"])
    cold, warm = figures["open"]["cold"], figures["open"]["warm"]
    assert cold["rss_mb_opened"] >= cold["rss_mb_before"] > 0 and warm["first_batch_s"] > 0
    # two workers on one machine share the memory-mapped files: each one's PSS is below its RSS
    for worker in figures["two_workers"]:
        assert worker["memory_mb"]["pss"] < worker["memory_mb"]["rss"]
    download = figures["download"]
    assert download["mib_per_s"]["median"] > 0 and download["filled_cache_s"] >= 0

    assert figures["retuned_s"] is None and figures["refine"] in (4, 8, 16)

    # another recall target: the kept database is re-tuned, not built again; the table this time
    again = subprocess.run(command + ["--recall-target", "0.8"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "building a synthetic database" not in again.stderr and "re-tuning" in again.stderr
    assert "recall@10" in again.stdout and "two workers" in again.stdout and "download" in again.stdout
    retuned = json.loads(out.read_text())
    assert retuned["build"] == build and retuned["retuned_s"] >= 0
    assert retuned["tuning"]["recall_target"] == 0.8 <= retuned["tuning"]["recall_at_k"]


def test_the_synthetic_world_is_deterministic_and_shaped_like_a_text_encoders():
    words = [f"word{i}" for i in range(400)]
    world = SyntheticWorld(4000, 64, words, seed=3)
    first, again = world.block(0, 1000), SyntheticWorld(4000, 64, words, seed=3).block(0, 1000)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    captions, rows = first
    assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5) and len(captions) == 1000
    similarity = rows @ rows.T
    assert similarity[np.triu_indices(1000, 1)].mean() > 0.2  # a shared mean direction
    neighbours = np.sort(similarity, axis=1)[:, -2]
    assert (neighbours > 0.9).mean() > 0.03  # near-duplicate captions
    queries = world.queries(100, seed=1)
    assert not np.allclose(queries, world.queries(100, seed=2))
    assert (queries @ rows.T).max(axis=1).mean() < neighbours.mean()  # images sit apart from captions
