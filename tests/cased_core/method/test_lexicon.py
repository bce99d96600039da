from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from cased_core.method.lexicon import DEFAULT_LEXICON_PATH, load_lexicon

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "tools" / "build_lexicon.py"
WORDNET_DIR = Path("/usr/share/wordnet")

KEEP = ["circle", "square", "triangle", "star", "heart", "cross", "ring", "arrow", "moon", "diamond", "cat", "dog",
        "golden retriever", "garbage dump", "pagoda", "rocket", "coffee", "astronaut", "motorcycle", "flower",
        "airplane", "car", "pizza", "forest", "highway", "river", "basketball", "guitar", "bear", "drill"]
DROP = ["red", "blue", "green", "black", "white", "small", "big", "large", "little", "three", "two", "one",
        "image", "many", "new", "good", "colour", "size", "have", "make", "t shirt", "ox", "gray", "grey", "color"]


def run_script(*args: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True).stdout


def test_packaged_lexicon_loads_once():
    lexicon = load_lexicon()
    assert lexicon is load_lexicon(DEFAULT_LEXICON_PATH) is load_lexicon(str(DEFAULT_LEXICON_PATH))
    assert 50_000 < len(lexicon.terms) < 150_000
    assert lexicon.max_words == 3
    assert DEFAULT_LEXICON_PATH.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    header = gzip.open(DEFAULT_LEXICON_PATH, "rt").read(4000)
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in header


@pytest.mark.parametrize("term", KEEP)
def test_nameable_terms_kept(term):
    assert term in load_lexicon()


@pytest.mark.parametrize("term", DROP)
def test_modifiers_numbers_and_abstractions_dropped(term):
    assert term not in load_lexicon()


def test_multi_word_terms_and_sense_order():
    lexicon = load_lexicon()
    assert lexicon.synsets["golden retriever"] == ("02099601",)
    assert lexicon.synsets["garbage dump"] == ("08560027",)
    assert lexicon.synsets["dog"][0] == "02084071"  # the animal is WordNet's first sense
    assert "ice cream" in lexicon  # "ice-cream" and "ice_cream" merged


def test_same_concept():
    lexicon = load_lexicon()
    assert lexicon.same_concept("car", "automobile")
    assert lexicon.same_concept("dog", "dog")
    assert not lexicon.same_concept("car", "dog")
    assert not lexicon.same_concept("cassowary", "casuarius")  # bird vs its genus: different synsets
    assert not lexicon.same_concept("no such term", "no such term")


def write_fake_wordnet(folder: Path) -> None:
    """A few lemmas in the real wndb(5WN)/senseidx(5WN) formats, one per rule and corner case."""
    licence = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    (folder / "data.noun").write_text(licence + "".join(
        f"{offset} {lexfile:02d} n 01 {word} 0 000 | gloss  \n" for offset, lexfile, word in [
            ("02084071", 5, "dog"), ("10114209", 18, "dog"), ("04962784", 7, "red"), ("04960277", 7, "colour"),
            ("07390400", 7, "ring"), ("13875970", 25, "ring"), ("04092609", 6, "ring"),
            ("10162991", 18, "have"), ("02099601", 5, "golden_retriever"), ("07614500", 13, "ice_cream"),
            ("04197391", 6, "t-shirt"), ("05919263", 9, "heart"), ("05388805", 8, "heart"),
            ("02958343", 6, "car"), ("02959942", 6, "car"), ("04961691", 7, "gray"), ("02381364", 5, "gray"),
            ("11015650", 18, "Grey")]))
    (folder / "index.noun").write_text(licence + "".join(f"{line}  \n" for line in [
        "car n 2 1 @ 2 1 02958343 02959942",
        "automobile n 1 1 @ 1 1 02958343",
        "colour n 1 1 @ 1 0 04960277",
        "dog n 2 2 @ ~ 2 1 02084071 10114209",
        "golden_retriever n 1 1 @ 1 0 02099601",
        "gray n 2 1 @ 2 2 04961691 02381364",
        "grey n 3 1 @ 3 0 11015650 04961691 02381364",
        "have n 1 1 @ 1 0 10162991",
        "heart n 2 1 @ 2 2 05919263 05388805",
        "ice-cream n 1 1 @ 1 0 07614500",
        "ice_cream n 1 1 @ 1 1 07614500",
        "red n 1 1 @ 1 1 04962784",
        "ring n 3 1 @ 3 3 07390400 13875970 04092609",
        "t-shirt n 1 1 @ 1 0 04197391",
    ]))
    (folder / "index.sense").write_text("".join(f"{line}\n" for line in [
        "automobile%1:06:00:: 02958343 1 0",
        "car%1:06:00:: 02958343 1 71",
        "car%1:06:01:: 02959942 2 2",
        "colour%1:07:00:: 04960277 1 0",
        "dog%1:05:00:: 02084071 1 42",
        "dog%1:18:01:: 10114209 2 0",
        "dog%2:38:00:: 02005948 1 2",
        "golden_retriever%1:05:00:: 02099601 1 0",
        "gray%1:05:00:: 02381364 2 1",
        "gray%1:07:00:: 04961691 1 6",
        "gray%5:00:00:achromatic:00 00389310 1 38",
        "grey%1:05:00:: 02381364 3 0",
        "grey%1:07:00:: 04961691 2 0",
        "grey%1:18:00:: 11015650 1 0",
        "grey%5:00:00:achromatic:00 00389310 1 1",
        "have%1:18:00:: 10162991 1 0",
        "have%2:40:00:: 02203362 1 2233",
        "heart%1:08:00:: 05388805 2 25",
        "heart%1:09:00:: 05919263 1 42",
        "ice-cream%1:13:00:: 07614500 1 0",
        "ice_cream%1:13:00:: 07614500 1 3",
        "red%1:07:00:: 04962784 1 17",
        "red%5:00:00:chromatic:00 00381097 1 58",
        "ring%1:06:00:: 04092609 3 2",
        "ring%1:07:00:: 07390400 1 4",
        "ring%1:25:00:: 13875970 2 2",
        "ring%2:39:00:: 02186690 1 28",
        "t-shirt%1:06:00:: 04197391 1 0",
    ]))


def test_build_script_on_fake_wordnet(tmp_path):
    wordnet_dir, out = tmp_path / "dict", tmp_path / "lexicon.tsv.gz"
    wordnet_dir.mkdir()
    write_fake_wordnet(wordnet_dir)
    summary = run_script("--wordnet-dir", str(wordnet_dir), "--out", str(out))
    lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    assert lines[:len(comments)] == comments  # the header comes first
    assert any("WordNet 3.0 Copyright 2006 by Princeton University" in line for line in comments)
    assert any("tools/build_lexicon.py" in line for line in comments)
    assert lines[len(comments):] == [
        "automobile\t02958343",
        "car\t02958343,02959942",
        "dog\t02084071,10114209",
        "golden retriever\t02099601",
        "heart\t05919263,05388805",  # cognition 43 vs body 26 (+1 smoothed): not abstract-dominated
        "ice cream\t07614500",
        "ring\t07390400,13875970,04092609",  # verb 28 < 100 x 9 noun tags
    ]  # dropped: colour (abstract), have (verb), red, gray and grey (modifiers), t-shirt (form)
    # "grey" alone (1 adjective tag, a person and a horse besides the colour) would pass; judged with
    # "gray", the spelling SemCor tagged (38 adjective tags), it is the adjective it is
    assert "kept: 7; dropped: form 1, modifier 3, verb 1, abstract 1" in summary
    assert load_lexicon(out).same_concept("car", "automobile")


@pytest.mark.slow
@pytest.mark.skipif(not (WORDNET_DIR / "index.noun").exists(), reason="needs Debian's wordnet-base in /usr/share/wordnet")
def test_packaged_file_is_reproducible(tmp_path):
    out = tmp_path / "wordnet_nouns.tsv.gz"
    summary = run_script("--out", str(out))
    assert "probes failing: none" in summary
    assert out.read_bytes() == DEFAULT_LEXICON_PATH.read_bytes()


def test_concept_ids_join_labels_across_streams():
    from cased_core.method.lexicon import concept_id

    lexicon = load_lexicon()
    assert concept_id("dog", lexicon) == "wn:02084071-n"  # WordNet's first sense
    assert concept_id("moon", lexicon).startswith("wn:") and concept_id("moon", lexicon) != concept_id("dog", lexicon)
    made_up = concept_id("zorblax widget", lexicon)
    assert made_up.startswith("name:") and len(made_up) == 17
    assert concept_id(" Zorblax   WIDGET ", lexicon) == made_up != concept_id("zorblax gadget", lexicon)
