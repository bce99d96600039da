"""Load any open_clip model through one function and encode images and texts in batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from cased_core.artifacts.digest import sha256_file
from cased_core.errors import ModelLoadError

TINY_MODEL_DIR = Path(__file__).parents[1] / "data" / "tiny-model"


@dataclass
class ClipModel:
    """An open_clip model with what classification needs around it."""

    module: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    identity: str  # names the weights: databases built with other weights are refused
    device: torch.device
    dtype: torch.dtype
    dim: int
    logit_scale: float

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed image batch (n, 3, H, W) -> L2-normalised float32 embeddings (n, dim)."""
        features = self.module.encode_image(pixels.to(self.device, self.dtype), normalize=True)
        return features.float().cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        chunks = [self.encode_pixels(torch.stack([self.preprocess(im.convert("RGB")) for im in images[i:i + batch_size]]))
                  for i in range(0, len(images), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Bare texts (no prompt, as CaSED does) -> L2-normalised float32 embeddings (n, dim)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            out[start:start + len(tokens)] = self.module.encode_text(tokens, normalize=True).float().cpu().numpy()
            if progress:
                progress(len(tokens))
        return out


def pick_device(device: str | None = None) -> torch.device:
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve(name: str, pretrained: str | None) -> tuple[str, str | None, str]:
    """Map a user's (name, pretrained) to open_clip's (model_name, pretrained) and an identity string."""
    if name == "tiny":
        name = str(TINY_MODEL_DIR)
    path = Path(name.removeprefix("local-dir:"))
    if name.startswith("local-dir:") or path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ModelLoadError(f"model folder {path} has no open_clip_config.json; "
                                 "pass an open_clip architecture name (e.g. ViT-B-32) or a folder written by `cased tiny train`")
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.pt*"))
        digest = sha256_file(weights[0])[:12] if weights else "random-init"
        label = "tiny" if path.resolve() == TINY_MODEL_DIR.resolve() else path.name
        return f"local-dir:{path}", None, f"{label}@{digest}"
    import open_clip

    if name.replace("/", "-") not in open_clip.list_models():
        raise ModelLoadError(f"unknown model {name!r}: use 'tiny', a checkpoint folder, or one of open_clip's "
                             f"architectures (e.g. ViT-B-32, ViT-L-14; see open_clip.list_models())")
    if pretrained is None:
        return name, None, f"{name}@random-init"
    if Path(pretrained).is_file():
        return name, pretrained, f"{name}@{sha256_file(pretrained)[:12]}"
    return name, pretrained, f"{name}/{pretrained}"


def load_model(name: str = "tiny", pretrained: str | None = None, device: str | None = None,
               seed: int = 0) -> ClipModel:
    """The one entry point for models.

    - ``load_model("tiny")``: the project's own small model, shipped as package data.
    - ``load_model("ViT-L-14", "openai")``: any open_clip architecture with a pretrained tag
      (downloads once from the hub into open_clip's cache), or a checkpoint file path as `pretrained`.
    - ``load_model("/path/to/folder")``: an open_clip ``local-dir`` checkpoint folder.
    - ``load_model("ViT-B-32")`` with no `pretrained`: random init (seeded), for benchmarks.
    CUDA with fp16 when present, CPU with fp32 otherwise.
    """
    import open_clip

    model_name, tag, identity = _resolve(name, pretrained)
    dev = pick_device(device)
    precision = "fp16" if dev.type == "cuda" else "fp32"
    try:
        # Random weights (no pretrained tag) are the seed's; the process's own random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag,
                                                                          precision=precision, device=dev)
    except RuntimeError as err:
        raise ModelLoadError(f"could not load {name!r} with pretrained={pretrained!r}: {err}. Pretrained tags "
                             f"download from the hub once; offline, pass a local checkpoint file or folder") from err
    module.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.inference_mode():  # towers name their width differently; one probe encode is exact
        dim = int(module.encode_text(tokenizer([""]).to(dev)).shape[-1])
    return ClipModel(module=module, preprocess=preprocess, tokenizer=tokenizer, identity=identity, device=dev,
                     dtype=torch.float16 if precision == "fp16" else torch.float32, dim=dim,
                     logit_scale=float(module.logit_scale.exp().item()))
