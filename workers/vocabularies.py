"""Text embeddings of a whole vocabulary (CLIP over WordNet's nouns, an English word list, a file),
cached on disk per model and vocabulary: WordNet's 96,636 names cost minutes with a large text
encoder, once. The shell's side of cased_core.method.classifier's vocabulary mode: the cache and the
progress bar live here."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from workers.databases import default_cache_dir


def vocabulary_embeddings(model, names: Sequence[str], cache_dir: str | Path | None = None) -> np.ndarray:
    """The names' text embeddings (fp16 precision, what later runs load, so the first run labels as
    they will), from `cache_dir/vocabularies` (default: the cache folder) or computed and stored there;
    a progress bar on stderr at a terminal meanwhile."""
    key = hashlib.sha256((model.identity + "\n" + "\n".join(names)).encode()).hexdigest()[:20]
    path = Path(cache_dir or default_cache_dir()) / "vocabularies" / f"{key}.f16.npy"
    if path.is_file():
        return np.load(path).astype(np.float32)
    from tqdm import tqdm

    with tqdm(total=len(names), desc="embedding vocabulary", disable=not sys.stderr.isatty(), mininterval=1.0) as bar:
        embeddings = model.encode_texts(names, progress=bar.update)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = embeddings.astype(np.float16)
    np.save(path, stored)
    return stored.astype(np.float32)
