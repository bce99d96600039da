"""`python -m tests.workers.faults ARGS...`: runs `cased ARGS...` with faults injected, so that tests can
make a real worker process fail the way a bug or a broken dependency would. The product never imports
this; tests start it through WorkerProcess(faults=...).

CASED_TEST_FAULTS is a JSON map:
- "preprocess": true: the model's preprocess raises for a flat cyan image (every pixel 0,255,255);
- "encoder": true: the image encoder raises for any batch holding a flat magenta image;
- "commit_fails_after": N: every offset commit after the first N raises, as a coordinator gone would;
- "encoder_fails_while": {"path": P, "error": TEXT}: the image encoder raises RuntimeError(TEXT) for any
  batch while the file P exists (a model or device failing for everyone, switched by the test);
- "oom_above_while": {"path": P, "images": N}: the image encoder runs out of memory for batches of more
  than N images while the file P exists.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

CYAN, MAGENTA = (0, 255, 255), (255, 0, 255)


def flat(image, colour: tuple[int, int, int]) -> bool:
    return image.convert("RGB").getextrema() == tuple((c, c) for c in colour)


def poisoned(pixels: torch.Tensor) -> bool:
    """A preprocessed batch holds a flat magenta image: every channel constant, red and blue above green."""
    spread = pixels.flatten(2).std(dim=2)
    means = pixels.flatten(2).mean(dim=2)
    return bool(((spread.max(dim=1).values < 1e-4) & (means[:, 0] > means[:, 1]) & (means[:, 2] > means[:, 1])).any())


def install(faults: dict) -> None:
    if faults.get("preprocess"):
        from cased_core.artifacts import model

        load_model = model.load_model

        def load_model_with_fault(*args, **kwargs):
            loaded = load_model(*args, **kwargs)
            preprocess = loaded.preprocess

            def failing_preprocess(image):
                if flat(image, CYAN):
                    raise ValueError("injected preprocess fault")
                return preprocess(image)

            loaded.preprocess = failing_preprocess
            return loaded

        model.load_model = load_model_with_fault
    if faults.get("encoder"):
        from cased_core.artifacts.model import ClipModel

        encode_pixels = ClipModel.encode_pixels

        def failing_encode(self, pixels):
            if poisoned(pixels):
                raise RuntimeError("injected encoder fault")
            return encode_pixels(self, pixels)

        ClipModel.encode_pixels = failing_encode
    if "encoder_fails_while" in faults or "oom_above_while" in faults:
        from cased_core.artifacts.model import ClipModel

        encode_pixels = ClipModel.encode_pixels
        failing, pressure = faults.get("encoder_fails_while"), faults.get("oom_above_while")

        def switched_encode(self, pixels):
            if failing and Path(failing["path"]).exists():
                raise RuntimeError(failing["error"])
            if pressure and len(pixels) > pressure["images"] and Path(pressure["path"]).exists():
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected for {len(pixels)} images)")
            return encode_pixels(self, pixels)

        ClipModel.encode_pixels = switched_encode
    if "commit_fails_after" in faults:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        commit, allowed = AIOKafkaConsumer.commit, [faults["commit_fails_after"]]

        async def failing_commit(self, offsets=None):
            if allowed[0] <= 0:
                raise KafkaError("injected commit failure")
            allowed[0] -= 1
            return await commit(self, offsets)

        AIOKafkaConsumer.commit = failing_commit


if __name__ == "__main__":
    install(json.loads(os.environ.get("CASED_TEST_FAULTS", "{}")))
    from workers.cli.commands import main

    sys.argv[0] = "cased"
    sys.exit(main())
