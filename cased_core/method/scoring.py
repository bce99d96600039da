"""CaSED's scoring, and the caption steps that feed it (steps 3, 4 and 7 of docs/method.md)."""
from __future__ import annotations

import numpy as np
import torch

from cased_core.options import DEDUP_THRESHOLD, DEFAULT_ALPHA


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def drop_near_duplicates(embeddings: np.ndarray, threshold: float = DEDUP_THRESHOLD) -> np.ndarray:
    """Indices of the rows kept, in order: a row whose cosine to an already kept row is >= threshold is
    dropped. Rows must be L2-normalised."""
    kept: list[int] = []
    for i in range(len(embeddings)):
        if not kept or float(np.max(embeddings[kept] @ embeddings[i])) < threshold:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def keep_distinct(embeddings: torch.Tensor, valid: torch.Tensor, threshold: float = DEDUP_THRESHOLD) -> torch.Tensor:
    """`drop_near_duplicates` for a batch: embeddings (n, k, d), valid (n, k) -> kept (n, k), a mask.
    Row j of an image is kept when it is valid and its cosine to every kept row before it is under
    `threshold`."""
    similarity = embeddings @ embeddings.transpose(1, 2)
    kept = torch.zeros_like(valid)
    for j in range(valid.shape[1]):
        duplicate = ((similarity[:, j, :j] >= threshold) & kept[:, :j]).any(dim=1)
        kept[:, j] = valid[:, j] & ~duplicate
    return kept


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """Normalise each, average, normalise again."""
    return normalise(normalise(embeddings).mean(axis=0))


def cased_scores(image: np.ndarray, caption_centroid: np.ndarray, candidates: np.ndarray,
                 logit_scale: float, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """final = alpha * softmax(s * cos(image, c)) + (1 - alpha) * softmax(s * cos(centroid, c)),
    over this image's own candidates c (rows of `candidates`, L2-normalised)."""
    visual = softmax(logit_scale * (candidates @ image))
    textual = softmax(logit_scale * (candidates @ caption_centroid))
    return alpha * visual + (1.0 - alpha) * textual


def cased_scores_batch(images: torch.Tensor, caption_centroids: torch.Tensor, candidates: torch.Tensor,
                       present: torch.Tensor, logit_scale: float, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """`cased_scores` for a batch padded to the longest candidate list: images and centroids (n, d),
    candidates (n, c, d), present (n, c) marks the real ones. Padding gets probability 0."""
    def masked_softmax(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.masked_fill(~present, float("-inf")), dim=1)

    visual = masked_softmax(logit_scale * torch.einsum("ncd,nd->nc", candidates, images))
    textual = masked_softmax(logit_scale * torch.einsum("ncd,nd->nc", candidates, caption_centroids))
    return alpha * visual + (1.0 - alpha) * textual


def top_n(names: list[str], probabilities: np.ndarray, n: int) -> tuple[tuple[str, float], ...]:
    order = np.argsort(-probabilities, kind="stable")[:n]
    return tuple((names[i], float(probabilities[i])) for i in order)
