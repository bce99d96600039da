"""The authors' layout for real: a caption database written by clip-retrieval's own code and indexed by
the autofaiss package (what the CaSED authors' databases are made with), imported with `cased db
import`, labels like a `cased db build` of the same captions.

autofaiss and clip-retrieval run in a venv of their own (their numpy<2 pin clashes with the
project's numpy 2; see tests/authors-requirements.txt): `make setup` makes it. A missing venv is an
error, not a skip, like any missing dev dependency.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cased_core.tinyworld import world as tinyworld
from cased_core.artifacts.captions import unique_captions
from cased_core.method.classifier import Classifier
from workers.databases import load_database
from workers.cli.commands import main

REPO = Path(__file__).resolve().parents[3]
AUTHORS_PYTHON = Path(os.environ.get("CASED_AUTHORS_PYTHON", REPO / ".venv-authors" / "bin" / "python"))
SCRIPT = Path(__file__).with_name("authors_layout.py")
# autofaiss quantizes from 10,000 vectors; a small memory budget makes it pick what it picks for
# CC12M at its real size: OPQ, IVF and PQ codes instead of an HNSW graph.
CAPTIONS = 12_000
MAX_INDEX_MEMORY = "1M"


def _captions(lexicon) -> list[str]:
    """Tiny-world captions (what the tiny model knows), topped up with captions of 500 lexicon words."""
    rng = np.random.default_rng(5)
    captions = list(unique_captions(tinyworld.captions(rng, 30_000)))
    words = rng.choice(sorted(t for t in lexicon.terms if " " not in t and t.isalpha()), 500, replace=False)
    extra = unique_captions(" ".join(rng.choice(words, 6)) for _ in range(2 * CAPTIONS))
    return (captions + [c for c in extra if c not in set(captions)])[:CAPTIONS]


@pytest.mark.slow
def test_autofaiss_index_in_clip_retrieval_layout_imports_and_labels_like_a_built_database(
        tmp_path, tiny_model, lexicon):
    assert AUTHORS_PYTHON.is_file(), (f"{AUTHORS_PYTHON} is missing: `make setup` installs autofaiss and "
                                      "clip-retrieval in a venv of their own")
    captions = _captions(lexicon)
    np.savez(tmp_path / "input.npz", captions=np.array(captions), embeddings=tiny_model.encode_texts(captions))
    authors = tmp_path / "authors"
    authors.mkdir()
    made = subprocess.run([str(AUTHORS_PYTHON), str(SCRIPT), str(tmp_path / "input.npz"), str(authors), "3",
                           MAX_INDEX_MEMORY], capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    chosen = json.loads(made.stdout.strip().splitlines()[-1])
    assert chosen["index_key"].startswith("OPQ") and ",IVF" in chosen["index_key"] and ",PQ" in chosen["index_key"]
    assert sorted(p.name for p in (authors / "embeddings" / "text_emb").iterdir()) == [
        "text_emb_0.npy", "text_emb_1.npy", "text_emb_2.npy"]

    (tmp_path / "captions.txt").write_text("".join(c + "\n" for c in captions))
    assert main(["db", "build", str(tmp_path / "captions.txt"), "--out", str(tmp_path / "built"),
                 "--model", "tiny", "--device", "cpu"]) == 0
    built = load_database(tmp_path / "built", tiny_model.identity)
    rng = np.random.default_rng(11)
    images = [tinyworld.render(rng, category, size=64)[0] for category in tinyworld.CATEGORIES for _ in range(6)]
    expected = [p.label for p in Classifier(tiny_model, built).classify(images)]
    for layout in ("parquet", "arrow"):  # clip-retrieval's inference output, and its back end's --use_arrow
        out = tmp_path / f"imported-{layout}"
        assert main(["db", "import", str(authors / layout), "--out", str(out), "--model", "tiny",
                     "--device", "cpu"]) == 0
        imported = load_database(out, tiny_model.identity)
        assert imported.count == built.count == len(captions)
        assert [imported.caption(i) for i in (0, 5000, len(captions) - 1)] == \
            [built.caption(i) for i in (0, 5000, len(captions) - 1)]
        assert imported.terms == built.terms
        info = imported.manifest["index"]
        assert "IndexIVFPQ(nlist=" in info["factory"] and imported.searcher.approximate
        assert info["recall_at_k"] >= info["recall_target"]  # their index, our tuning
        labels = [p.label for p in Classifier(tiny_model, imported).classify(images)]
        agree = np.mean([a == b for a, b in zip(labels, expected)])
        assert agree >= 0.95, (layout, agree, list(zip(labels, expected)))
