"""Build the compact WordNet noun lexicon used for candidate extraction.

Reads WordNet 3.0's dict files directly (wndb(5WN) / senseidx(5WN) formats) and writes
a gzip'd TSV, sorted by term: ``term<TAB>offset,offset,...`` with the noun synset
offsets in WordNet's sense order (most frequent first).

A noun lemma is kept only when it is likely to name a *thing* in a caption. The rules
come from WordNet's own data, each of the form "drop when the evidence against outweighs
the evidence for by a factor", with +1 smoothing so untagged words are judged by their
senses alone:

* part of speech: SemCor tag counts in index.sense. Drop a term whose modifier uses
  (adjective, satellite, adverb) outnumber its noun uses 2:1 ("red", "small", "three",
  "well"). Verbs need two orders of magnitude (100:1) because English converts nouns
  and verbs freely ("ring", "cross", "bear", "drill") and captions use verbs mostly
  inflected, while adjectives sit in the very base form a noun would; the verb rule only
  removes common verbs whose noun senses are rare oddities ("have", "make", "say", "take").
* meaning: lexicographer files. Each noun sense weighs its tag count + 1; drop a term
  whose abstract senses (ABSTRACT_FILES) outweigh its nameable ones 2:1 ("colour",
  "size", "image", "day", "kind").

Spellings of one word are judged together: SemCor tags mostly one of them ("gray" 47
times as an adjective, "grey" once), so each alone would say different things about the
same word. Two terms are spellings of one word when they differ by one letter (added,
removed, changed, or two swapped: grey/gray, colour/color, centre/center, -ise/-ize) and
share at least two synsets and at least half of each one's synsets; their tag counts are
summed over the spellings before the rules above apply, so "grey" goes where "gray" and
"blue" go.
"""
from __future__ import annotations

import argparse
import gzip
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = REPO / "cased_core" / "data" / "wordnet_nouns.tsv.gz"
DEFAULT_LICENSE = REPO / "cased_core" / "data" / "WORDNET_LICENSE.txt"

# Lexicographer files (lexnames(5WN)) whose senses are not things one can see and name:
# unique beginners (too generic: "entity", "group"), attributes (colours, sizes, shapes-as-
# property), cognition, feelings, motives, possession (payments, funds), processes,
# quantities (numbers, units), relations, states and time. Everything else is kept:
# act (sports, activities), animal, artifact, body, communication (signs, arrows, text,
# posters), event, food, group, location, object, person, phenomenon, plant, shape, substance.
ABSTRACT_FILES = frozenset({
    3,   # noun.Tops
    7,   # noun.attribute
    9,   # noun.cognition
    12,  # noun.feeling
    16,  # noun.motive
    21,  # noun.possession
    22,  # noun.process
    23,  # noun.quantity
    24,  # noun.relation
    26,  # noun.state
    28,  # noun.time
})
MODIFIER_FACTOR = 2
VERB_FACTOR = 100
ABSTRACT_FACTOR = 2
MAX_WORDS = 3

# ss_type digit of a sense key (senseidx(5WN)) -> the tag-count bucket it feeds.
_SS_TYPE = {"1": "noun", "2": "verb", "3": "modifier", "4": "modifier", "5": "modifier"}
_TERM = re.compile(r"[a-z]+(?: [a-z]+)*")

PROBES_KEEP = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "arrow", "moon", "diamond",
               "cat", "dog", "golden retriever", "garbage dump", "pagoda", "rocket", "coffee", "astronaut",
               "motorcycle", "flower", "airplane", "car", "pizza", "forest", "highway", "river", "basketball",
               "guitar")
PROBES_DROP = ("red", "blue", "green", "black", "white", "small", "big", "large", "little", "three", "two",
               "one", "image", "many", "new", "good", "grey", "gray")


def canonical(lemma: str) -> str:
    """Lowercase with '_' and '-' as spaces: "Golden_Retriever", "ice-cream" -> "golden retriever", "ice cream"."""
    return " ".join(lemma.lower().replace("_", " ").replace("-", " ").split())


def valid_term(term: str) -> bool:
    """Letters and single spaces, 1..MAX_WORDS words; single words >= 3 letters, words of phrases >= 2."""
    if not _TERM.fullmatch(term):
        return False
    words = term.split(" ")
    min_len = 3 if len(words) == 1 else 2
    return len(words) <= MAX_WORDS and all(len(w) >= min_len for w in words)


def data_lines(path: Path) -> Iterator[str]:
    """Lines of a WordNet dict file minus its licence header (header lines start with two spaces)."""
    with path.open(encoding="utf-8") as f:
        yield from (line for line in f if not line.startswith("  "))


def read_lexfiles(wordnet_dir: Path) -> dict[str, int]:
    """Noun synset offset -> lex_filenum (fields 1 and 2 of a data.noun line)."""
    lexfiles = {}
    for line in data_lines(wordnet_dir / "data.noun"):
        offset, lex_filenum, _ = line.split(" ", 2)
        lexfiles[offset] = int(lex_filenum)
    return lexfiles


def read_index(wordnet_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(lemma, synset offsets in sense order) per index.noun line; offsets close the line."""
    for line in data_lines(wordnet_dir / "index.noun"):
        fields = line.split()
        synset_cnt = int(fields[2])
        yield fields[0], fields[-synset_cnt:]


def read_tag_counts(wordnet_dir: Path) -> tuple[dict[str, Counter], Counter, dict[str, set[tuple[str, str]]]]:
    """From index.sense: term -> tag counts per POS bucket, (term, noun offset) -> tag count, and term ->
    its synsets in every part of speech, as (ss_type, offset)."""
    pos_counts: dict[str, Counter] = defaultdict(Counter)
    sense_counts: Counter = Counter()
    synsets: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for line in data_lines(wordnet_dir / "index.sense"):
        sense_key, offset, _sense_number, tag_cnt = line.split()
        lemma, lex_sense = sense_key.split("%", 1)
        term, bucket = canonical(lemma), _SS_TYPE[lex_sense[0]]
        pos_counts[term][bucket] += int(tag_cnt)
        synsets[term].add((lex_sense[0], offset))
        if bucket == "noun":
            sense_counts[term, offset] += int(tag_cnt)
    return pos_counts, sense_counts, synsets


def one_edit_apart(a: str, b: str) -> bool:
    """Whether one letter added, removed or changed, or two neighbours swapped, turns `a` into `b`."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    i = next((i for i, (x, y) in enumerate(zip(short, long)) if x != y), len(short))
    return short[i:] == long[i + 1:]


def spellings(synsets: dict[str, set[tuple[str, str]]]) -> dict[str, set[str]]:
    """Term -> the spellings of its word (itself included), for terms that have others: terms one edit
    apart, of 4 letters or more, sharing at least two synsets and half of each one's."""
    members: dict[tuple[str, str], list[str]] = defaultdict(list)
    for term, keys in synsets.items():
        for key in keys:
            members[key].append(term)
    group = {}
    for terms in members.values():
        for i, a in enumerate(terms):
            for b in terms[i + 1:]:
                shared = len(synsets[a] & synsets[b])
                if (min(len(a), len(b)) >= 4 and one_edit_apart(a, b) and shared >= 2
                        and 2 * shared >= max(len(synsets[a]), len(synsets[b]))):
                    joined = group.get(a, {a}) | group.get(b, {b})
                    group.update((t, joined) for t in joined)
    return group


def merged_offsets(variants: list[tuple[str, list[str]]], sense_counts: Counter, term: str) -> list[str]:
    """Offsets of all spelling variants, the most used variant's senses first, without repeats."""
    def usage(variant: tuple[str, list[str]]) -> tuple[int, str]:
        lemma, offsets = variant
        return -sum(sense_counts[term, o] for o in offsets), lemma
    return list(dict.fromkeys(o for _, offsets in sorted(variants, key=usage) for o in offsets))


def drop_reason(term: str, offsets: list[str], pos: Counter, sense_counts: Counter,
                lexfiles: dict[str, int]) -> str | None:
    """Why a valid noun term is not a candidate label, or None to keep it."""
    nouns = pos["noun"] + 1
    if pos["modifier"] > MODIFIER_FACTOR * nouns:
        return "modifier"
    if pos["verb"] > VERB_FACTOR * nouns:
        return "verb"
    abstract = sum(sense_counts[term, o] + 1 for o in offsets if lexfiles[o] in ABSTRACT_FILES)
    concrete = sum(sense_counts[term, o] + 1 for o in offsets if lexfiles[o] not in ABSTRACT_FILES)
    if abstract > ABSTRACT_FACTOR * concrete:
        return "abstract"
    return None


def build(wordnet_dir: Path) -> tuple[dict[str, list[str]], dict[str, str], int]:
    """Kept term -> offsets, dropped term -> reason, and the number of index.noun lemmas read."""
    lexfiles = read_lexfiles(wordnet_dir)
    pos_counts, sense_counts, synsets = read_tag_counts(wordnet_dir)
    # One word's evidence, whichever spelling was tagged (summed from the counts as read, then stored).
    groups = spellings(synsets)
    pooled_pos = {term: sum((pos_counts[w] for w in words), Counter()) for term, words in groups.items()}
    pooled_senses = {(term, offset): sum(sense_counts[w, offset] for w in words) for term, words in groups.items()
                     for ss_type, offset in synsets[term] if ss_type == "1"}
    pos_counts.update(pooled_pos)
    for key, count in pooled_senses.items():
        sense_counts[key] = count
    variants: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    n_lemmas = 0
    for lemma, offsets in read_index(wordnet_dir):
        n_lemmas += 1
        variants[canonical(lemma)].append((lemma, offsets))
    kept: dict[str, list[str]] = {}
    dropped: dict[str, str] = {}
    for term, term_variants in variants.items():
        offsets = merged_offsets(term_variants, sense_counts, term)
        reason = "form" if not valid_term(term) else drop_reason(
            term, offsets, pos_counts.get(term, Counter()), sense_counts, lexfiles)
        if reason:
            dropped[term] = reason
        else:
            kept[term] = offsets
    return kept, dropped, n_lemmas


def header(license_path: Path) -> list[str]:
    license_lines = license_path.read_text(encoding="utf-8").splitlines()
    return [
        "# WordNet 3.0 noun lexicon for CaSED candidate extraction: term<TAB>noun synset offsets (sense order).",
        "# Produced by tools/build_lexicon.py from WordNet 3.0 index.noun, data.noun and index.sense: lemmas",
        f"# normalised to lowercase letters and spaces, 1-{MAX_WORDS} words, merged over '-'/'_' spellings; dropped",
        f"# when modifier tags > {MODIFIER_FACTOR}x, verb tags > {VERB_FACTOR}x (noun tags + 1), or abstract-file "
        f"senses > {ABSTRACT_FACTOR}x concrete ones",
        f"# (each sense weighted tag count + 1; abstract files: {sorted(ABSTRACT_FILES)}); tag counts summed over the",
        "# spellings of one word (one letter apart, sharing at least half of each one's synsets).",
        "#",
        *(f"# {line}".rstrip() for line in license_lines),
    ]


def write_tsv(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip byte-identical across rebuilds.
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write("".join(f"{line}\n" for line in lines).encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--license", type=Path, default=DEFAULT_LICENSE, help="licence text for the header")
    args = parser.parse_args(argv)

    kept, dropped, n_lemmas = build(args.wordnet_dir)
    write_tsv(args.out, [*header(args.license), *(f"{t}\t{','.join(kept[t])}" for t in sorted(kept))])

    reasons = Counter(dropped.values())
    print(f"index.noun lemmas read: {n_lemmas}; normalised terms: {len(kept) + len(dropped)}")
    print(f"kept: {len(kept)}; dropped: " + ", ".join(f"{r} {reasons[r]}" for r in
                                                     ("form", "modifier", "verb", "abstract")))
    failures = []
    for probe, want in [*((p, "keep") for p in PROBES_KEEP), *((p, "drop") for p in PROBES_DROP)]:
        got = "keep" if probe in kept else f"drop ({dropped.get(probe, 'not a noun')})"
        failures += [probe] if got.split()[0] != want else []
        print(f"  probe {probe!r}: want {want}, got {got}")
    print(f"probes failing: {failures or 'none'}; wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
