"""Acceptance: CaSED names held-out tiny-world images well with the shipped model and database."""
from cased_core.tinyworld import world as tinyworld
from cased_core.evaluation.evaluate import evaluate, load_dataset


def test_cased_cluster_accuracy_on_held_out_tiny_world(tmp_path, tiny_model, tiny_database):
    # seed 12345 is never used for training (seed 0) or for the database captions (seed 1000)
    dataset = load_dataset(tinyworld.write_dataset(tmp_path, per_category=20, seed=12345))
    [cased] = evaluate(tiny_model, tiny_database, dataset, ["cased"])
    assert cased.images == 200
    assert cased.cluster_accuracy >= 0.7, cased
