import numpy as np
import pytest

from cased_core.classifier import Classifier, ClassifierConfig
from cased_core.database import ModelMismatchError


def test_precomputed_cased_agrees_with_the_reference_computation(random_model, small_database, lexicon):
    rng = np.random.default_rng(1)
    queries = random_model.encode_texts([small_database.caption(int(i)) for i in rng.choice(small_database.count, 12)])
    fast = Classifier(random_model, small_database).classify_embeddings(queries)
    reference = Classifier(random_model, small_database, mode="cased-reference", lexicon=lexicon)
    slow = reference.classify_embeddings(queries)
    for a, b in zip(fast, slow):
        assert a.label == b.label
        assert a.considered == b.considered
        assert abs(a.score - b.score) < 0.02  # fp16 storage of the embeddings is the only difference


def test_steady_state_spends_no_text_encoder_forward(random_model, small_database):
    classifier = Classifier(random_model, small_database)
    queries = random_model.encode_texts(["a star", "moon", "circle icon", "heart tattoo"])
    classifier.classify_embeddings(queries)
    assert classifier.terms.encoded == 0


def test_predictions_carry_label_probability_and_top_candidates(random_model, small_database):
    classifier = Classifier(random_model, small_database, config=ClassifierConfig(top_n=3))
    [prediction] = classifier.classify_embeddings(random_model.encode_texts(["star sticker"]))
    assert prediction.candidates[0] == (prediction.label, prediction.score)
    assert len(prediction.candidates) == min(3, prediction.considered)
    probabilities = [p for _, p in prediction.candidates]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < prediction.score <= 1


def test_extra_candidates_join_the_set_and_are_cached(random_model, small_database):
    classifier = Classifier(random_model, small_database)
    query = random_model.encode_texts(["star sticker"])
    [plain] = classifier.classify_embeddings(query)
    [extended] = classifier.classify_embeddings(query, extra_candidates=[["lighthouse keeper"]])
    assert extended.considered == plain.considered + 1
    assert classifier.terms.encoded == 1
    classifier.classify_embeddings(query, extra_candidates=[["lighthouse keeper"]])
    assert classifier.terms.encoded == 1


def test_closest_caption_and_vocabulary_modes(random_model, small_database):
    caption = small_database.caption(5)
    [closest] = Classifier(random_model, small_database, mode="closest-caption").classify_embeddings(
        random_model.encode_texts([caption]))
    assert closest.label == caption
    names = ["star", "moon", "circle"]
    vocabulary = Classifier(random_model, mode="vocabulary", vocabulary=names)
    predictions = vocabulary.classify_embeddings(random_model.encode_texts(names))
    assert [p.label for p in predictions] == names  # each name is its own nearest neighbour
    assert all(p.considered == 3 for p in predictions)


def test_bad_configurations_are_refused(random_model, small_database, tiny_model):
    with pytest.raises(ValueError, match="unknown mode"):
        Classifier(random_model, small_database, mode="nope")
    with pytest.raises(ValueError, match="needs a caption database"):
        Classifier(random_model)
    with pytest.raises(ValueError, match="non-empty vocabulary"):
        Classifier(random_model, mode="vocabulary")
    with pytest.raises(ModelMismatchError):
        Classifier(tiny_model, small_database)
