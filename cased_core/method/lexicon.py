"""The WordNet noun lexicon that decides which caption words and n-grams are candidate names.

The data file is built by tools/build_lexicon.py (see there for which WordNet nouns are kept
and why): a gzip'd TSV of ``term<TAB>synset offsets`` after ``#`` comment lines that carry
the WordNet 3.0 licence (also in data/WORDNET_LICENSE.txt).
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

DEFAULT_LEXICON_PATH = Path(__file__).resolve().parents[1] / "data" / "wordnet_nouns.tsv.gz"


# eq=False: identity equality and hashing; comparing ~100k-entry lexicons field by field is never wanted.
@dataclass(frozen=True, eq=False)
class Lexicon:
    terms: frozenset[str]
    synsets: Mapping[str, tuple[str, ...]]  # term -> noun synset offsets, WordNet sense order
    max_words: int  # longest term in words, the largest n-gram worth looking up

    def __contains__(self, term: object) -> bool:
        return term in self.terms

    def same_concept(self, a: str, b: str) -> bool:
        """Whether two terms are synonyms in some sense, i.e. share a WordNet synset."""
        return not set(self.synsets.get(a, ())).isdisjoint(self.synsets.get(b, ()))


def concept_id(name: str, lexicon: Lexicon) -> str:
    """A stable id for the concept a label names, to join labels across streams: the WordNet synset
    of its first sense when the lexicon knows the name (`wn:02084071-n` for "dog"), else one derived
    from the name itself, case and spacing aside (`name:` and 12 hex digits of its SHA-256).

    Examples:
        >>> concept_id("dog", load_lexicon())
        'wn:02084071-n'
        >>> concept_id("Zorblax  Widget", load_lexicon()) == concept_id("zorblax widget", load_lexicon())
        True
    """
    synsets = lexicon.synsets.get(name)
    if synsets:
        return f"wn:{synsets[0]}-n"
    canonical = " ".join(name.lower().split())
    return "name:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def parse_lexicon(text: str) -> Lexicon:
    synsets = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            term, offsets = line.split("\t")
            synsets[term] = tuple(offsets.split(","))
    return Lexicon(terms=frozenset(synsets), synsets=synsets,
                   max_words=max((t.count(" ") + 1 for t in synsets), default=0))


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The lexicon at `path` (default: the packaged one), read once per resolved path."""
    return _load(Path(path or DEFAULT_LEXICON_PATH).resolve())


@lru_cache(maxsize=None)
def _load(path: Path) -> Lexicon:
    # One decompress + decode of the whole file is several times faster than line-wise gzip reads.
    return parse_lexicon(gzip.decompress(path.read_bytes()).decode("utf-8"))
