import csv
import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cased_core.artifacts.captions import clip_retrieval_captions, read_captions
from cased_core.artifacts.database import Database, DatabaseError, ModelMismatchError
from cased_core.artifacts.database_build import (BuildOptions, build_database, build_from_embeddings, build_from_parts,
                                       import_clip_retrieval, plan_index, retune)
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
    out = build_database([source], tmp_path / "db", random_model, lexicon, chunk_size=2)
    loaded = load_database(out, random_model.identity)
    assert loaded.count == 4  # whitespace normalised, exact duplicate and empty line dropped
    assert [loaded.caption(i) for i in range(4)] == ["a red circle", "star sticker", "moon drawing", "star tattoo idea"]
    np.testing.assert_allclose(loaded.caption_embeddings(np.arange(4)),
                               random_model.encode_texts([loaded.caption(i) for i in range(4)]), atol=2e-3)
    assert loaded.manifest["index"]["factory"] == "Flat"
    assert loaded.manifest["model"] == random_model.identity
    star = loaded.terms.index("star")
    assert star in loaded.caption_terms_flat(np.array([1]))[1].tolist()
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
        build_database([tmp_path / "c.txt"], tmp_path / "taken", random_model, lexicon)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatabaseError, match="no captions"):
        build_database([tmp_path / "empty.txt"], tmp_path / "e", random_model, lexicon)


def test_a_database_of_another_model_is_refused(small_database, tiny_model):
    with pytest.raises(ModelMismatchError) as err:
        load_database(small_database.path, tiny_model.identity)
    assert small_database.model in str(err.value) and tiny_model.identity in str(err.value)


def test_plan_index_follows_autofaiss_within_the_memory_budgets():
    assert plan_index(10_000, 512).factory == "Flat"
    # autofaiss: 4 sqrt(n) lists below 1M, 16,384 below 10M, 65,536 above; an HNSW quantizer from 1,000
    # lists; the largest code that fits the index's memory; OPQ; 39..100 training points per list.
    assert plan_index(300_000, 768).factory == "OPQ256_768,IVF2048_HNSW32,PQ256x8np"
    assert plan_index(1_000_000, 768).factory == "OPQ256_768,IVF16384_HNSW32,PQ256x8np"
    cc12m = plan_index(12_000_000, 768)
    # 65,536 lists need 39 x 65,536 x 3 KiB = 7.5 GiB of training sample: over half the 8 GiB build budget
    assert cc12m.factory == "OPQ128_768,IVF32768_HNSW32,PQ128x8np"
    assert 39 * cc12m.nlist <= cc12m.train_size <= 100 * cc12m.nlist
    assert cc12m.train_size * 768 * 4 <= BuildOptions().build_memory_mb * 2**20 / 2
    assert 12_000_000 * (cc12m.code_bytes + 8) <= BuildOptions().index_memory_mb * 2**20
    roomy = plan_index(12_000_000, 768, BuildOptions(build_memory_mb=32_768, index_memory_mb=4096))
    assert roomy.factory == "OPQ256_768,IVF65536_HNSW32,PQ256x8np"
    tight = plan_index(12_000_000, 768, BuildOptions(build_memory_mb=2048, index_memory_mb=512))
    assert tight.factory == "OPQ32_768,IVF8192_HNSW32,PQ32x8np"
    assert plan_index(50_000, 64, BuildOptions(exact_below=1000)).factory == "OPQ32_64,IVF1024_HNSW32,PQ32x8np"


def _random_unit(rng, count, dim):
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_approximate_index_is_built_tuned_and_reranked_exactly(tmp_path, random_model, lexicon):
    rng = np.random.default_rng(0)
    count = 12_000
    embeddings = _random_unit(rng, count, random_model.dim)
    captions = [f"caption number {i}" for i in range(count)]
    steps = []
    out = build_from_embeddings(captions, embeddings, tmp_path / "ivf", random_model.identity,
                                random_model.encode_texts, lexicon, progress=lambda *a: steps.append(a),
                                options=BuildOptions(exact_below=1000, tuning_queries=200))
    assert [s for s, done, _ in steps if done == 0] == ["captions", "terms", "training", "indexing", "tuning",
                                                        "checksums"]
    assert steps[-1] == ("checksums", 8, 8)
    loaded = Database(out)
    info = loaded.manifest["index"]
    assert info["factory"].startswith("OPQ") and "IVF" in info["factory"] and loaded.searcher.approximate
    # tuned on held-out queries: the cheapest setting that reaches the target, recorded with its curve
    assert info["recall_at_k"] >= info["recall_target"] == 0.95 and info["tuning_queries"] == 200
    assert info["search_params"].startswith("nprobe=") and info["refine"] in (4, 8, 16)
    curve = dict(info["tuning_curve"])  # each setting tried, with its recall at each re-ranking depth
    assert curve[info["search_params"]][str(info["refine"])] == info["recall_at_k"]
    assert list(curve)[0] == "nprobe=1" and len(curve) > 1  # IVF307: no HNSW quantizer below 1,000 lists
    # nothing cheaper reached the target: fewer probes at that depth did not, nor did shallower depths
    nprobes = [int(p.split("=")[1].split(",")[0]) for p in curve]
    chosen = int(info["search_params"].split("=")[1].split(",")[0])
    assert all(curve[p][str(info["refine"])] < 0.95 for p, n in zip(curve, nprobes) if n < chosen)
    assert loaded.search_params in loaded.searcher.name and loaded.searcher.refine == info["refine"]
    before = {name: (out / name).stat().st_mtime_ns for name in loaded.manifest["files"]}
    retuned = retune(out, BuildOptions(recall_target=0.8, tuning_queries=200))
    assert retuned["recall_at_k"] >= 0.8 and retuned["recall_target"] == 0.8
    assert int(retuned["search_params"].split("=")[1].split(",")[0]) <= chosen  # an easier target costs no more
    assert Database(out).manifest["index"] == retuned and Database(out).search_params == retuned["search_params"]
    assert {name: (out / name).stat().st_mtime_ns for name in loaded.manifest["files"]} == before
    queries = embeddings[:20] + 0.05 * rng.standard_normal((20, random_model.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = loaded.search(queries, 5)
    assert (hits.ids[:, 0] == np.arange(20)).mean() >= 0.9  # the perturbed source is found first
    exact = np.einsum("ij,ij->i", loaded.caption_embeddings(hits.ids[:, 0]), queries)
    np.testing.assert_allclose(hits.scores[:, 0], exact, rtol=1e-5)  # scores are exact after re-ranking
    assert (np.diff(hits.scores, axis=1) <= 0).all() and (hits.ids >= 0).all()  # best first, k each


def test_a_failed_build_leaves_nothing_behind(tmp_path, random_model, lexicon):
    def parts():
        yield ["a dog", "a cat"], _random_unit(np.random.default_rng(1), 2, random_model.dim)
        raise OSError("the caption source went away")

    with pytest.raises(OSError, match="went away"):
        build_from_parts(parts(), tmp_path / "db", random_model.dim, random_model.identity,
                         random_model.encode_texts, lexicon)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary folder
    (tmp_path / "empty").mkdir()  # an empty target folder is allowed, and kept when the build fails
    with pytest.raises(DatabaseError, match="embeddings of shape"):
        build_from_parts([(["a dog"], np.zeros((2, random_model.dim), np.float32))], tmp_path / "empty",
                         random_model.dim, random_model.identity, random_model.encode_texts, lexicon)
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and not any((tmp_path / "empty").iterdir())


def _write_clip_retrieval(folder, captions, embeddings, metadata="arrow"):
    """A clip-retrieval layout written here (the real one, from autofaiss and clip-retrieval's own code,
    is tested in test_authors_layout.py): a text.index and the captions in two metadata files."""
    (folder / "metadata").mkdir(parents=True)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    faiss.write_index(index, str(folder / "text.index"))
    half = len(captions) // 2
    for n, part in enumerate((captions[:half], captions[half:])):
        table = pa.table({"caption": part, "url": [f"http://x/{i}" for i in range(len(part))]})
        if metadata == "arrow":
            with pa.ipc.new_file(str(folder / "metadata" / f"{n}_metadata.arrow"), table.schema) as writer:
                writer.write_table(table)
        else:
            pq.write_table(table, folder / "metadata" / f"metadata_{n}.parquet")


@pytest.mark.parametrize("metadata", ["arrow", "parquet"])
def test_clip_retrieval_import_keeps_rows_aligned(tmp_path, random_model, lexicon, metadata):
    captions = ["a star sticker", "moon drawing", "a red circle", "heart tattoo", "arrow sign", "star pattern"]
    embeddings = random_model.encode_texts(captions)
    _write_clip_retrieval(tmp_path / "cr", captions, embeddings, metadata)
    out = import_clip_retrieval(tmp_path / "cr", tmp_path / "db", random_model, lexicon)
    loaded = load_database(out, random_model.identity)
    assert [loaded.caption(i) for i in range(len(captions))] == captions
    hits = loaded.search(embeddings[3:4], 1)
    assert hits.ids[0, 0] == 3
    assert "star" in loaded.terms and loaded.manifest["index"]["origin"].startswith("clip-retrieval")
    assert loaded.manifest["index"]["factory"] == "IndexFlatIP" and loaded.manifest["index"]["recall_at_k"] == 1


def test_clip_retrieval_captions_read_as_the_back_end_reads_them(tmp_path):
    (tmp_path / "metadata").mkdir()
    for n in (1, 0):  # file order is by name, not by creation
        pq.write_table(pa.table({"caption": [f"caption {n}.{i}" if i != 1 else None for i in range(3)]}),
                       tmp_path / "metadata" / f"metadata_{n}.parquet")
    chunks = list(clip_retrieval_captions(tmp_path / "metadata", chunk_rows=2))
    assert sum(chunks, []) == ["caption 0.0", "", "caption 0.2", "caption 1.0", "", "caption 1.2"]
    assert max(len(c) for c in chunks) == 2
    with pytest.raises(DatabaseError, match="no column 'text'"):
        next(clip_retrieval_captions(tmp_path / "metadata", "text"))
    with pytest.raises(DatabaseError, match="holds no metadata"):
        next(clip_retrieval_captions(tmp_path / "nothing"))


def test_clip_retrieval_import_errors(tmp_path, random_model, lexicon):
    with pytest.raises(DatabaseError, match="not a clip-retrieval database"):
        import_clip_retrieval(tmp_path, tmp_path / "out", random_model, lexicon)
    assert not (tmp_path / "out").exists()
    wrong_dim = np.eye(4, 32, dtype=np.float32)
    _write_clip_retrieval(tmp_path / "dim", ["a", "b", "c", "d"], wrong_dim)
    with pytest.raises(ModelMismatchError, match="32-dimensional"):
        import_clip_retrieval(tmp_path / "dim", tmp_path / "out", random_model, lexicon)
    emb = random_model.encode_texts(["a b c", "d e f", "g h i", "j k l"])
    _write_clip_retrieval(tmp_path / "short", ["a b c", "d e f", "g h i", "j k l"], emb)
    (tmp_path / "short" / "metadata" / "1_metadata.arrow").unlink()
    with pytest.raises(DatabaseError, match="holds 2 captions but the index holds 4"):
        import_clip_retrieval(tmp_path / "short", tmp_path / "out2", random_model, lexicon)
