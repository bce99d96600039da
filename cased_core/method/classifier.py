"""Vocabulary-free classification: `Classifier(model, database).classify(images) -> predictions`.

Modes:
- ``cased``: CaSED with every text embedding precomputed in the database, so a classification costs
  one image forward plus one k-NN search;
- ``cased-reference``: the same method computed the way the reference code does it (captions and
  candidate names text-encoded per image), for benchmarks and cross-checks;
- ``closest-caption``: the nearest caption is the label (a baseline of the paper);
- ``vocabulary``: CLIP zero-shot over a given vocabulary (a user's list, WordNet nouns, English words).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cased_core.method import scoring
from cased_core.method.candidates import FALLBACK, extract_candidates, select_candidates_batch
from cased_core.artifacts.database import Database
from cased_core.artifacts.search import SearchHits
from cased_core.method.lexicon import Lexicon, load_lexicon
from cased_core.artifacts.model import ClipModel
from cased_core.options import MODES, ClassifierConfig


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # the label's probability
    candidates: tuple[tuple[str, float], ...]  # top-N (name, probability), best first
    considered: int = 1  # how many candidate names were scored
    # The image's L2-normalised embedding, when the caller kept it (the worker's history compares frames).
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)


class TermEmbeddings:
    """Text embeddings of candidate names: the database's precomputed table first, then a bounded LRU
    cache filled by the text encoder (fallback names, names a stream's history adds)."""

    def __init__(self, model: ClipModel, database: Database | None, cache_size: int):
        self.model = model
        self.table = database.term_embeddings if database is not None else np.zeros((0, model.dim), np.float32)
        self.rows = {t: i for i, t in enumerate(database.terms)} if database is not None else {}
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.encoded = 0  # text-encoder forwards spent on misses, for benchmarks and tests
        self._lock = threading.Lock()  # the inference thread fills the cache, the event loop reads it
        self._on: torch.Tensor | None = None  # the table on the model's device, once scoring ran there

    def lookup(self, name: str) -> np.ndarray | None:
        """The embedding if it is known already; never runs the text encoder."""
        if name in self.rows:
            return self.table[self.rows[name]]
        with self._lock:
            return self.cache.get(name)

    def on(self, device: torch.device) -> torch.Tensor:
        """The database's term table as a tensor on `device` (copied there once)."""
        if self._on is None or self._on.device != device:
            self._on = torch.from_numpy(self.table).to(device)
        return self._on

    def embed(self, names: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self._embed(names)

    def _embed(self, names: Sequence[str]) -> np.ndarray:
        missing = [n for n in dict.fromkeys(names) if n not in self.rows and n not in self.cache]
        if missing:
            for name, vector in zip(missing, self.model.encode_texts(missing)):
                self.cache[name] = vector
            self.encoded += len(missing)
        out = np.empty((len(names), self.model.dim), np.float32)
        for i, name in enumerate(names):
            if name in self.rows:
                out[i] = self.table[self.rows[name]]
            else:
                self.cache.move_to_end(name)
                out[i] = self.cache[name]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


class Classifier:
    def __init__(self, model: ClipModel, database: Database | None = None, mode: str = "cased",
                 vocabulary: Sequence[str] | None = None, config: ClassifierConfig = ClassifierConfig(),
                 lexicon: Lexicon | None = None, vocabulary_embeddings: np.ndarray | None = None):
        """`vocabulary_embeddings`: the vocabulary's text embeddings, when the caller has them (a cache:
        workers/vocabularies.py); computed here otherwise."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "vocabulary":
            if not vocabulary:
                raise ValueError("mode 'vocabulary' needs a non-empty vocabulary")
            self.vocabulary = list(dict.fromkeys(vocabulary))
            self.vocabulary_embeddings = model.encode_texts(self.vocabulary) if vocabulary_embeddings is None \
                else vocabulary_embeddings
        elif database is None:
            raise ValueError(f"mode {mode!r} needs a caption database")
        if database is not None:
            database.check_model(model.identity)
        self.model, self.database, self.mode, self.config = model, database, mode, config
        self.terms = TermEmbeddings(model, database, config.term_cache_size)
        self.lexicon = lexicon if lexicon is not None or mode != "cased-reference" else load_lexicon()

    def classify(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.model.preprocess(im.convert("RGB")) for im in images[start:start + batch_size]])
            out.extend(self.classify_pixels(pixels))
        return out

    def classify_pixels(self, pixels: torch.Tensor) -> list[Prediction]:
        return self.classify_embeddings(self.model.encode_pixels(pixels))

    def classify_embeddings(self, images: np.ndarray,
                            extra_candidates: Sequence[Sequence[str]] | None = None) -> list[Prediction]:
        """Classify L2-normalised image embeddings. `extra_candidates[i]` joins image i's candidate set
        (a stream's earlier labels), as CaSED would treat any other candidate."""
        return self.score(images, self.search(images), extra_candidates)

    # The two steps of classify_embeddings, public so a caller can time them apart (the worker does).
    def search(self, images: np.ndarray) -> SearchHits | None:
        """The k nearest captions of each image; None in vocabulary mode, which retrieves nothing."""
        return None if self.mode == "vocabulary" else self.database.search(images, self.config.k)

    def score(self, images: np.ndarray, hits: SearchHits | None,
              extra_candidates: Sequence[Sequence[str]] | None = None) -> list[Prediction]:
        """Candidates from `hits` (see `search`), scored against each image."""
        if self.mode == "vocabulary":
            return self._vocabulary(images)
        extras = extra_candidates or [()] * len(images)
        if self.mode == "closest-caption":
            return [Prediction(self.database.caption(int(ids[0])), float(scores[0]), ())
                    for scores, ids in zip(hits.scores, hits.ids)]
        if self.mode == "cased-reference":
            return [self._cased_reference(image, ids[ids >= 0], extra)
                    for image, ids, extra in zip(images, hits.ids, extras)]
        return self._cased(images, hits.ids, extras)

    def _cased(self, images: np.ndarray, ids: np.ndarray, extras: Sequence[Sequence[str]]) -> list[Prediction]:
        """CaSED for a batch at once, on the database's precomputed embeddings, in torch on the model's
        device: one gather of the retrieved captions, their deduplication and centroids, the two
        softmaxes over candidate lists padded to the longest, and the top names; the term counts on the
        CPU, over integer ids (`_cased_reference` takes the reference's steps per image)."""
        device = self.model.device
        n, k = ids.shape
        valid = ids >= 0
        captions = self.database.caption_embeddings_on(np.where(valid, ids, 0).reshape(-1), device).view(n, k, -1)
        kept = scoring.keep_distinct(captions, torch.from_numpy(valid).to(device), self.config.dedup_threshold)
        centroids = F.normalize((F.normalize(captions, dim=-1) * kept[..., None]).sum(dim=1), dim=-1)
        rows, cols = np.nonzero(kept.cpu().numpy())  # row-major: each image's kept captions in retrieval order
        owners, terms = self.database.caption_terms_flat(ids[rows, cols])
        selected = select_candidates_batch(rows[owners], terms, n)
        names = [[self.database.terms[t] for t in term_ids] or [FALLBACK] for term_ids in selected]
        for image_names, extra in zip(names, extras):
            image_names += [e for e in extra if e not in image_names]
        width = max(len(image_names) for image_names in names)
        # Rows of the database's term table by id (-1: padding), then the other names (the fallback, a
        # stream's extras) embedded and put in place with one copy.
        table_ids = np.full((n, width), -1, np.int64)
        other_at, other_names = [], []
        for i, (image_names, term_ids) in enumerate(zip(names, selected)):
            table_ids[i, :len(term_ids)] = term_ids
            other_at += [(i, j) for j in range(len(term_ids), len(image_names))]
            other_names += image_names[len(term_ids):]
        table_ids = torch.from_numpy(table_ids).to(device)
        candidates = self.terms.on(device)[table_ids.clamp(min=0)]
        if other_names:
            at = torch.tensor(other_at, device=device)
            candidates[at[:, 0], at[:, 1]] = torch.from_numpy(self.terms.embed(other_names)).to(device)
        counts = torch.tensor([len(image_names) for image_names in names], device=device)
        present = torch.arange(width, device=device)[None, :] < counts[:, None]
        probabilities = scoring.cased_scores_batch(torch.from_numpy(images).to(device), centroids, candidates,
                                                   present, self.model.logit_scale, self.config.alpha)
        top = torch.topk(probabilities, min(self.config.top_n, width), dim=1)
        top_p, top_i = top.values.cpu().numpy(), top.indices.cpu().numpy()
        out = []
        for image_names, p, i in zip(names, top_p, top_i):
            shown = min(len(image_names), len(i))
            candidates_shown = tuple((image_names[j], float(q)) for j, q in zip(i[:shown], p[:shown]))
            out.append(Prediction(candidates_shown[0][0], candidates_shown[0][1], candidates_shown, len(image_names)))
        return out

    def _cased_reference(self, image: np.ndarray, ids: np.ndarray, extra: Sequence[str]) -> Prediction:
        captions = [self.database.caption(int(i)) for i in ids]
        caption_embeddings = self.model.encode_texts(captions)
        kept = scoring.drop_near_duplicates(caption_embeddings, self.config.dedup_threshold)
        names = extract_candidates([captions[i] for i in kept], self.lexicon)
        names += [e for e in extra if e not in names]
        caption_centroid = scoring.centroid(caption_embeddings[kept])
        return self._score(image, caption_centroid, names, self.model.encode_texts(names))

    def _score(self, image: np.ndarray, caption_centroid: np.ndarray, names: list[str],
               embeddings: np.ndarray) -> Prediction:
        probabilities = scoring.cased_scores(image, caption_centroid, embeddings, self.model.logit_scale,
                                             self.config.alpha)
        best = int(np.argmax(probabilities))
        return Prediction(names[best], float(probabilities[best]),
                          scoring.top_n(names, probabilities, self.config.top_n), len(names))

    def _vocabulary(self, images: np.ndarray) -> list[Prediction]:
        probabilities = scoring.softmax(self.model.logit_scale * (images @ self.vocabulary_embeddings.T))
        out = []
        for row in probabilities:
            best = int(np.argmax(row))
            out.append(Prediction(self.vocabulary[best], float(row[best]),
                                  scoring.top_n(self.vocabulary, row, self.config.top_n), len(row)))
        return out
