"""Build the tiny world's model and database: what ships as package data for demos and tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cased_core.tinyworld import world as tinyworld
from cased_core.artifacts.database_build import build_database
from workers.progress import ProgressBars
from cased_core.method.lexicon import load_lexicon
from cased_core.artifacts.model import load_model
from cased_core.options import TrainConfig
from cased_core.tinyworld.train import train_tiny


def write_captions(path: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("".join(c + "\n" for c in tinyworld.captions(rng, count)), encoding="utf-8")
    return path


def build_tiny(out: Path, *, steps: int, captions: int, seed: int) -> tuple[Path, Path]:
    """Train the tiny model into out/tiny-model, then build out/tiny-db from fresh captions with it.
    The caption seed differs from the training seed so the database is not the training text."""
    out.mkdir(parents=True, exist_ok=True)
    model_dir = train_tiny(out / "tiny-model", TrainConfig(steps=steps, seed=seed))
    caption_file = write_captions(out / "tiny-captions.txt", captions, seed + 1000)
    model = load_model(str(model_dir), device="cpu")
    db_dir = build_database([caption_file], out / "tiny-db", model, load_lexicon(), progress=ProgressBars())
    caption_file.unlink()
    return model_dir, db_dir
