import numpy as np
import pytest

from cased_core.method import scoring
from cased_core.method.candidates import FALLBACK, select_candidates
from cased_core.method.classifier import Classifier, ClassifierConfig
from cased_core.artifacts.database import ModelMismatchError


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


def one_image_at_a_time(classifier: Classifier, image: np.ndarray, ids: np.ndarray, extra: list[str]):
    """CaSED for one image with the per-image primitives, as the classifier computed it before the
    batch was vectorised: (label, probability, candidate names)."""
    database = classifier.database
    ids = ids[ids >= 0]
    embeddings = database.caption_embeddings(ids)
    kept = scoring.drop_near_duplicates(embeddings, classifier.config.dedup_threshold)
    names = [database.terms[t] for t in select_candidates(database.caption_terms_flat(ids[j:j + 1])[1]
                                                           for j in kept)]
    names = names or [FALLBACK]
    names += [e for e in extra if e not in names]
    probabilities = scoring.cased_scores(image, scoring.centroid(embeddings[kept]), classifier.terms.embed(names),
                                         classifier.model.logit_scale, classifier.config.alpha)
    best = int(np.argmax(probabilities))
    return names[best], float(probabilities[best]), names


def test_the_batch_computation_is_the_per_image_one(tiny_model, tiny_database):
    """Retrieved from the tiny database for images and for caption texts (so that the near-duplicate
    drop and the count bar both act), some with a stream's extra names, one with none retrieved."""
    from cased_core.tinyworld import world as tinyworld

    rng = np.random.default_rng(4)
    classifier = Classifier(tiny_model, tiny_database, config=ClassifierConfig(top_n=50))
    pixels = np.concatenate([tiny_model.encode_images([tinyworld.render(rng, size=64)[0] for _ in range(40)]),
                             tiny_model.encode_texts([tiny_database.caption(int(i))
                                                      for i in rng.choice(tiny_database.count, 24)])])
    hits = classifier.search(pixels)
    hits.ids[-1, :] = -1  # nothing retrieved: the fallback name alone
    hits.ids[-2, 5:] = -1  # fewer than k
    extras = [[] if i % 3 else ["lighthouse", "star", "zebra crossing"] for i in range(len(pixels))]
    batch = classifier.score(pixels, hits, extras)
    dropped = 0
    for i, prediction in enumerate(batch[:-1]):
        label, probability, names = one_image_at_a_time(classifier, pixels[i], hits.ids[i], extras[i])
        assert prediction.label == label, i
        assert prediction.score == pytest.approx(probability, abs=1e-5)
        assert sorted(n for n, _ in prediction.candidates) == sorted(names) and prediction.considered == len(names)
        dropped += len(scoring.drop_near_duplicates(tiny_database.caption_embeddings(hits.ids[i][hits.ids[i] >= 0]),
                                                    classifier.config.dedup_threshold)) < (hits.ids[i] >= 0).sum()
    assert dropped > 0  # the near-duplicate drop was exercised
    # Nothing retrieved: no caption centroid (the per-image computation gave NaN), so the image alone
    # ranks the fallback and the extras.
    assert batch[-1].label in ("object", "lighthouse", "star", "zebra crossing") and 0 < batch[-1].score <= 1


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU: scoring on the device")
def test_scoring_on_a_gpu_gives_the_cpu_labels(tiny_model, tiny_database):
    from cased_core.tinyworld import world as tinyworld
    from cased_core.artifacts.model import load_model

    rng = np.random.default_rng(5)
    images = [tinyworld.render(rng, size=64)[0] for _ in range(48)]
    on_cpu = Classifier(tiny_model, tiny_database).classify(images)
    gpu_model = load_model("tiny", device="cuda")
    tiny_database.use_search("exact", gpu_model.device)
    try:
        on_gpu = Classifier(gpu_model, tiny_database).classify(images)
    finally:
        tiny_database.use_search("faiss")
    agreement = np.mean([a.label == b.label for a, b in zip(on_cpu, on_gpu)])
    assert agreement >= 0.95, agreement  # fp16 weights and products on the GPU
