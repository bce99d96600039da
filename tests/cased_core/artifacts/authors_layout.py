"""Writes a clip-retrieval database with clip-retrieval's and autofaiss's own code. It runs in a venv of
its own (`make setup` makes .venv-authors): autofaiss 2.18 and clip-retrieval 2.45 pin numpy<2, and
clip-retrieval also open_clip<3, pyarrow<16 and a long list the project does not need, so they cannot
share the project's environment. clip-retrieval is installed without its dependencies, and only the
three modules the layout needs are loaded, from their files (its package __init__ would import its web
back end, torch and wandb).

Usage: python authors_layout.py INPUT.npz OUT_DIR PARTS MAX_INDEX_MEMORY
  INPUT.npz: `captions` (strings) and `embeddings` (float32, L2-normalised), in order.
Writes OUT_DIR/embeddings (clip-retrieval inference's output: text_emb/*.npy, metadata/*.parquet, in
PARTS partitions), OUT_DIR/parquet (`clip-retrieval index`: autofaiss's text.index, metadata copied)
and OUT_DIR/arrow (the same with the metadata converted by its back end's parquet_to_arrow, the
layout `clip-retrieval back --use_arrow` serves and the CaSED authors publish). Prints autofaiss's
index key and search parameters as JSON on the last line.
"""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def clip_retrieval_module(name: str, relative: str):
    root = Path(importlib.util.find_spec("clip_retrieval").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(name, root / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(data: str, out: str, parts: int, max_index_memory: str) -> None:
    given = np.load(data)
    captions, embeddings = [str(c) for c in given["captions"]], given["embeddings"].astype(np.float32)
    out = Path(out)
    writer = clip_retrieval_module("clip_retrieval_writer", "clip_inference/writer.py")
    bounds = np.linspace(0, len(captions), parts + 1).astype(int)
    for part, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        sink = writer.OutputSink(str(out / "embeddings"), enable_text=True, enable_image=False,
                                 enable_metadata=False, partition_id=part, output_partition_count=parts)
        sink.add({"text_embs": embeddings[start:stop], "text": captions[start:stop]})
        sink.flush()
    index = clip_retrieval_module("clip_retrieval_index", "clip_index.py")
    (out / "parquet").mkdir()
    index.clip_index(str(out / "embeddings"), str(out / "parquet"), max_index_memory_usage=max_index_memory,
                     current_memory_available="2G", nb_cores=2)
    arrow = clip_retrieval_module("clip_retrieval_parquet_to_arrow", "clip_back_prepro/parquet_to_arrow.py")
    shutil.copytree(out / "parquet", out / "arrow", ignore=shutil.ignore_patterns("metadata"))
    arrow.parquet_to_arrow(str(out / "parquet" / "metadata"), str(out / "arrow" / "metadata"), ["caption"])
    infos = json.loads((out / "parquet" / "text.json").read_text())
    print(json.dumps({"index_key": infos.get("index_key"), "index_param": infos.get("index_param")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
