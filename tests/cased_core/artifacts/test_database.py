import csv
import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cased_core.artifacts import database_build as db
from cased_core.artifacts.captions import read_captions
from cased_core.artifacts.database import Database, DatabaseError, ModelMismatchError
from cased_core.artifacts.database_build import build_database, build_from_embeddings, import_clip_retrieval, plan_index
from workers.databases import load_database


def test_read_captions_from_every_format(tmp_path):
    captions = ["a dog", "a cat, sleeping", 'a "quoted" bird']
    (tmp_path / "c.txt").write_text("\n".join(captions) + "\n")
    with open(tmp_path / "c.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        writer.writerows([["http://x", c] for c in captions])
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n" for c in captions))
    pq.write_table(pa.table({"caption": captions, "n": [1, 2, 3]}), tmp_path / "c.parquet")
    for name in ("c.txt", "c.csv", "c.jsonl", "c.parquet"):
        assert list(read_captions(tmp_path / name)) == captions, name


def test_read_captions_names_a_missing_column(tmp_path):
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(DatabaseError, match="no column 'caption'.*--caption-column"):
        list(read_captions(tmp_path / "c.parquet"))
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(DatabaseError, match="bad.jsonl:1"):
        list(read_captions(tmp_path / "bad.jsonl"))


def test_build_load_round_trip(tmp_path, random_model, lexicon):
    source = tmp_path / "c.txt"
    source.write_text("a red  circle\na red circle\n\nstar sticker\nmoon drawing\nstar tattoo idea\n")
    out = build_database([source], tmp_path / "db", random_model, lexicon, chunk_size=2, show_progress=False)
    loaded = load_database(out, random_model.identity)
    assert loaded.count == 4  # whitespace normalised, exact duplicate and empty line dropped
    assert [loaded.caption(i) for i in range(4)] == ["a red circle", "star sticker", "moon drawing", "star tattoo idea"]
    np.testing.assert_allclose(loaded.caption_embeddings(np.arange(4)),
                               random_model.encode_texts([loaded.caption(i) for i in range(4)]), atol=2e-3)
    assert loaded.manifest["index"]["factory"] == "Flat"
    assert loaded.manifest["model"] == random_model.identity
    star = loaded.terms.index("star")
    assert star in loaded.caption_term_ids(1).tolist()
    np.testing.assert_allclose(loaded.term_embeddings[star], random_model.encode_texts(["star"])[0], atol=2e-3)
    # exact search agrees with brute force over the stored embeddings
    query = random_model.encode_texts(["star"])
    hits = loaded.search(query, 2)
    brute = np.argsort(-(loaded.caption_embeddings(np.arange(4)) @ query[0]))[:2]
    assert hits.ids[0].tolist() == brute.tolist()


def test_build_refuses_a_non_empty_folder_and_empty_input(tmp_path, random_model, lexicon):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    (tmp_path / "c.txt").write_text("a dog\n")
    with pytest.raises(DatabaseError, match="not empty"):
        build_database([tmp_path / "c.txt"], tmp_path / "taken", random_model, lexicon, show_progress=False)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatabaseError, match="no captions"):
        build_database([tmp_path / "empty.txt"], tmp_path / "e", random_model, lexicon, show_progress=False)


def test_a_database_of_another_model_is_refused(small_database, tiny_model):
    with pytest.raises(ModelMismatchError) as err:
        load_database(small_database.path, tiny_model.identity)
    assert small_database.model in str(err.value) and tiny_model.identity in str(err.value)


def test_plan_index_exact_when_small_ivf_pq_when_large():
    assert plan_index(10_000, 512).factory == "Flat"
    large = plan_index(1_000_000, 512)
    assert large.factory == "IVF1024,PQ64x8" and large.nprobe == 32 and large.train_size == 65_536
    assert plan_index(12_000_000, 768).factory.startswith("OPQ96,IVF4096,PQ96x8")


def test_approximate_index_is_built_and_reranked_exactly(tmp_path, monkeypatch, random_model, lexicon):
    monkeypatch.setattr(db, "EXACT_INDEX_LIMIT", 1000)
    rng = np.random.default_rng(0)
    count = 12_000
    embeddings = rng.standard_normal((count, random_model.dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    captions = [f"caption number {i}" for i in range(count)]
    out = build_from_embeddings(captions, embeddings, tmp_path / "ivf", random_model.identity,
                                random_model.encode_texts, lexicon, show_progress=False)
    loaded = Database(out)
    assert loaded.manifest["index"]["factory"].startswith("IVF") and loaded.searcher.approximate
    queries = embeddings[:20] + 0.05 * rng.standard_normal((20, random_model.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = loaded.search(queries, 5)
    assert (hits.ids[:, 0] == np.arange(20)).mean() >= 0.9  # the perturbed source is found first
    exact = np.einsum("ij,ij->i", loaded.caption_embeddings(hits.ids[:, 0]), queries)
    np.testing.assert_allclose(hits.scores[:, 0], exact, rtol=1e-5)  # scores are exact after re-ranking
    assert (np.diff(hits.scores, axis=1) <= 0).all() and (hits.ids >= 0).all()  # best first, k each


def _write_clip_retrieval(folder, captions, embeddings):
    (folder / "metadata").mkdir(parents=True)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    faiss.write_index(index, str(folder / "text.index"))
    half = len(captions) // 2
    for n, part in enumerate((captions[:half], captions[half:])):
        table = pa.table({"caption": part, "url": [f"http://x/{i}" for i in range(len(part))]})
        with pa.ipc.new_file(str(folder / "metadata" / f"{n}_metadata.arrow"), table.schema) as writer:
            writer.write_table(table)


def test_clip_retrieval_import_keeps_rows_aligned(tmp_path, random_model, lexicon):
    captions = ["a star sticker", "moon drawing", "a red circle", "heart tattoo", "arrow sign", "star pattern"]
    embeddings = random_model.encode_texts(captions)
    _write_clip_retrieval(tmp_path / "cr", captions, embeddings)
    out = import_clip_retrieval(tmp_path / "cr", tmp_path / "db", random_model, lexicon, show_progress=False)
    loaded = load_database(out, random_model.identity)
    assert [loaded.caption(i) for i in range(len(captions))] == captions
    hits = loaded.search(embeddings[3:4], 1)
    assert hits.ids[0, 0] == 3
    assert "star" in loaded.terms and loaded.manifest["index"]["origin"].startswith("clip-retrieval")


def test_clip_retrieval_import_errors(tmp_path, random_model, lexicon):
    with pytest.raises(DatabaseError, match="not a clip-retrieval database"):
        import_clip_retrieval(tmp_path, tmp_path / "out", random_model, lexicon, show_progress=False)
    wrong_dim = np.eye(4, 32, dtype=np.float32)
    _write_clip_retrieval(tmp_path / "dim", ["a", "b", "c", "d"], wrong_dim)
    with pytest.raises(ModelMismatchError, match="32-dimensional"):
        import_clip_retrieval(tmp_path / "dim", tmp_path / "out", random_model, lexicon, show_progress=False)
    emb = random_model.encode_texts(["a b c", "d e f", "g h i", "j k l"])
    _write_clip_retrieval(tmp_path / "short", ["a b c", "d e f", "g h i", "j k l"], emb)
    (tmp_path / "short" / "metadata" / "1_metadata.arrow").unlink()
    with pytest.raises(DatabaseError, match="holds 2 captions but text.index holds 4"):
        import_clip_retrieval(tmp_path / "short", tmp_path / "out2", random_model, lexicon, show_progress=False)
