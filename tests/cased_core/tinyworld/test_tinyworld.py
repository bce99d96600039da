import numpy as np

from cased_core.tinyworld import world as tinyworld
from cased_core.artifacts.model import load_model
from cased_core.options import TrainConfig
from cased_core.tinyworld.train import train_tiny


def test_render_is_seeded_and_labelled():
    a, scene_a = tinyworld.render(np.random.default_rng(5), "heart")
    b, scene_b = tinyworld.render(np.random.default_rng(5), "heart")
    assert scene_a == scene_b and scene_a.category == "heart"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size == (64, 64) and a.mode == "RGB"


def test_shapes_differ_in_pixels():
    images = {c: np.asarray(tinyworld.render(np.random.default_rng(0), c)[0], np.float32) for c in tinyworld.CATEGORIES}
    assert np.abs(images["circle"] - images["star"]).mean() > 1.0


def test_captions_name_the_shape_or_an_alias():
    rng = np.random.default_rng(0)
    for category in tinyworld.CATEGORIES:
        scene = tinyworld.random_scene(rng, category)
        for _ in range(20):
            text = tinyworld.caption(rng, scene)
            assert any(alias.split()[-1] in text for alias in tinyworld.ALIASES[category])


def test_write_dataset_layout(tmp_path):
    root = tinyworld.write_dataset(tmp_path, per_category=2, seed=1)
    assert sorted(p.name for p in root.iterdir()) == sorted(tinyworld.CATEGORIES)
    assert len(list(root.glob("*/*.png"))) == 20


def test_training_smoke_writes_a_loadable_checkpoint(tmp_path):
    """A few steps: the loss is finite and the checkpoint loads through the ordinary local-dir path."""
    out = train_tiny(tmp_path / "m", TrainConfig(steps=5, batch_size=32, images=200), progress=lambda _: None)
    model = load_model(str(out), device="cpu")
    assert model.identity.startswith("m@") and model.dim == 64
    assert np.isfinite(model.encode_texts(["a star"])).all()
    assert (out / "open_clip_model.safetensors").stat().st_size < 12_000_000
