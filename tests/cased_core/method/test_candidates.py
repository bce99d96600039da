from cased_core.method.candidates import (
    FALLBACK, caption_terms, clean_words, extract_candidates, select_candidates, singularise, strip_markup,
)
from cased_core.method.lexicon import Lexicon


def make_lexicon(*terms: str) -> Lexicon:
    return Lexicon(terms=frozenset(terms), synsets={t: () for t in terms},
                   max_words=max(len(t.split()) for t in terms))


def test_strip_markup_drops_tags_urls_extensions_and_special_characters():
    assert strip_markup("<b>dog</b>").split() == ["dog"]
    assert strip_markup("see http://x.com/a.jpg and www.y.org/b now").split() == ["see", "and", "now"]
    assert strip_markup("golden_retriever-puppy.jpeg").split() == ["golden", "retriever", "puppy"]
    assert strip_markup("cat.PNG").split() == ["cat"]
    assert strip_markup("#sunset @beach!!").split() == ["sunset", "beach"]


def test_clean_words_length_alpha_lowercase_and_singular():
    assert clean_words("A Big DOGS on 2 mats at 9am") == ["big", "dog", "mat"]


def test_singularise_leaves_the_reference_skip_endings_alone():
    assert singularise("cats") == "cat"
    assert singularise("rhombus") == "rhombus"
    assert singularise("glass") == "glass"
    assert singularise("analysis") == "analysis"
    assert singularise("puppies") == "puppies"
    assert singularise("heroes") == "heroes"
    assert singularise("dog") == "dog"


def test_caption_terms_finds_multiword_terms_and_skips_the_blacklist():
    lexicon = make_lexicon("golden retriever", "retriever", "dog", "photo", "park")
    terms = caption_terms("Photo of golden retrievers in the park, a happy dog", lexicon)
    assert terms == ["golden retriever", "retriever", "park", "dog"]  # "photo" is blacklisted


def test_select_candidates_applies_the_count_bar_and_its_fallback():
    assert select_candidates([["dog", "cat"], ["dog", "park"], ["cat"]]) == ["dog", "cat"]
    # nothing reaches two: the bar drops to the highest count (1)
    assert select_candidates([["dog"], ["cat"]]) == ["dog", "cat"]
    assert select_candidates([[], []]) == []
    assert select_candidates([[3, 3, 4]]) == [3]  # ids work as terms too


def test_extract_candidates_end_to_end_with_the_fallback():
    lexicon = make_lexicon("dog", "park")
    assert extract_candidates(["a dog in a park", "dogs.jpg", "park bench"], lexicon) == ["dog", "park"]
    assert extract_candidates(["nothing here to see"], lexicon) == [FALLBACK]


def test_real_lexicon_keeps_shapes_and_drops_colour_words(lexicon):
    terms = caption_terms("small red circle_blue_12.png #art", lexicon)
    assert "circle" in terms
    assert "red" not in terms and "blue" not in terms and "small" not in terms
