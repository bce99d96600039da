"""Candidate class names from retrieved captions (CaSED step 5).

The reference keeps nouns, adjectives and participles by a neural tagger
downloaded from a hub; we keep words and multi-word terms (n-grams) found in
a noun lexicon derived from WordNet, which also finds terms like
"golden retriever" that a single-word pipeline cannot produce.

Every step but the count threshold is per caption, so a database can run
`caption_terms` once per caption at build time and classification only
counts precomputed term ids.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Hashable, Iterable, Sequence, TypeVar

import numpy as np

from cased_core.method.lexicon import Lexicon

BLACKLIST = frozenset({"image", "photo", "picture", "thumbnail", "logo", "symbol", "clipart", "portrait",
                       "painting", "illustration", "icon", "profile"})
FALLBACK = "object"

_TAG = re.compile(r"<[^>]*>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_EXTENSION = re.compile(r"\.(?:jpe?g|png|gif|bmp|tiff?|webp|svg|eps|ai|pdf|mp4|html?)\b", re.IGNORECASE)
_SEPARATORS = re.compile(r"[_\-]+")
_SPECIAL = re.compile(r"[^A-Za-z0-9\s]+")
# Singularising these endings breaks words ("rhombus" -> "rhombu"), as the reference notes.
_KEEP_ENDINGS = ("ss", "us", "is", "ies", "oes")

Term = TypeVar("Term", bound=Hashable)  # a term string, or its id in a database's term table


def strip_markup(caption: str) -> str:
    """Drop <tokens>, URLs and file extensions; '_' and '-' become spaces; drop special characters."""
    text = _TAG.sub(" ", caption)
    text = _URL.sub(" ", text)
    text = _EXTENSION.sub(" ", text)
    text = _SEPARATORS.sub(" ", text)
    return _SPECIAL.sub(" ", text)


@lru_cache(maxsize=1)
def _inflect_engine():
    import inflect

    return inflect.engine()


@lru_cache(maxsize=200_000)
def singularise(word: str) -> str:
    if word.endswith(_KEEP_ENDINGS):
        return word
    singular = _inflect_engine().singular_noun(word)
    return singular or word


def clean_words(caption: str) -> list[str]:
    """The caption's words after the reference's cleaning: alphabetic, >= 3 letters, lowercase, singular."""
    words = (w for w in strip_markup(caption).split() if len(w) >= 3 and w.isalpha())
    return [singularise(w.lower()) for w in words]


def caption_terms(caption: str, lexicon: Lexicon) -> list[str]:
    """Every lexicon term (1..max_words words) occurring in the cleaned caption, with repeats, in order."""
    words = clean_words(caption)
    terms = []
    for start in range(len(words)):
        if words[start] in lexicon and words[start] not in BLACKLIST:
            terms.append(words[start])
        for n in range(2, lexicon.max_words + 1):
            if start + n > len(words):
                break
            ngram = " ".join(words[start:start + n])
            if ngram in lexicon:
                terms.append(ngram)
    return terms


def select_candidates(term_lists: Iterable[Sequence[Term]], min_count: int = 2) -> list[Term]:
    """Terms occurring at least `min_count` times across the kept captions (if none do, the bar drops to
    the highest count), deduplicated, most frequent first; empty when the captions hold no term."""
    counts = Counter(term for terms in term_lists for term in terms)
    if not counts:
        return []
    bar = min(min_count, max(counts.values()))
    return [term for term, count in counts.most_common() if count >= bar]


def select_candidates_batch(rows: np.ndarray, terms: np.ndarray, count: int, min_count: int = 2) -> list[np.ndarray]:
    """`select_candidates` for `count` images at once, over term ids: `terms[i]` is one occurrence of a
    term in a kept caption of image `rows[i]`, each image's occurrences in caption order. Returns each
    image's selected term ids, most frequent first, ties in order of first occurrence (as
    Counter.most_common keeps them); empty for an image whose captions hold no term.

    Examples:
        >>> [a.tolist() for a in select_candidates_batch(np.array([0, 0, 0, 1]), np.array([7, 3, 7, 5]), 3)]
        [[7], [5], []]
    """
    out = [terms[:0]] * count
    if not len(terms):
        return out
    width = int(terms.max()) + 1
    keys, first, counts = np.unique(rows.astype(np.int64) * width + terms, return_index=True, return_counts=True)
    key_rows, key_terms = keys // width, keys % width
    most = np.zeros(count, np.int64)
    np.maximum.at(most, key_rows, counts)
    kept = counts >= np.minimum(min_count, most)[key_rows]
    order = np.lexsort((first[kept], -counts[kept], key_rows[kept]))
    kept_rows, kept_terms = key_rows[kept][order], key_terms[kept][order].astype(terms.dtype)
    return np.split(kept_terms, np.searchsorted(kept_rows, np.arange(1, count)))


def extract_candidates(captions: Sequence[str], lexicon: Lexicon) -> list[str]:
    """Step 5 end to end, from caption strings (what the reference does per image)."""
    return select_candidates(caption_terms(c, lexicon) for c in captions) or [FALLBACK]
