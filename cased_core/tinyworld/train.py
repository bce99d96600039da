"""Train the tiny CLIP of the tiny world, contrastively, on the CPU.

The result is an open_clip `local-dir:` checkpoint (open_clip_config.json +
open_clip_model.safetensors, fp16), loaded by the same code path as any
other checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cased_core.options import TrainConfig
from cased_core.tinyworld import world as tinyworld

# A convolutional tower on 32 px images learns shape rather than colour in
# minutes on two cores (a ViT of the same cost learns the colour shortcut).
TINY_MODEL_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 4},
}
TINY_PREPROCESS_CFG: dict = {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                             "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                             "resize_mode": "shortest"}


def _render_corpus(cfg: TrainConfig, preprocess: Callable, tokenizer: Callable,
                   progress: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(cfg.seed)
    pixels, texts = [], []
    for i in range(cfg.images):
        image, scene = tinyworld.render(rng, size=cfg.render_size)
        pixels.append(preprocess(image))
        texts.extend(tinyworld.caption(rng, scene) for _ in range(cfg.captions_per_image))
        if (i + 1) % 10_000 == 0:
            progress(f"rendered {i + 1}/{cfg.images} images")
    tokens = tokenizer(texts).view(cfg.images, cfg.captions_per_image, -1)
    return torch.stack(pixels), tokens


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def write_checkpoint(model: torch.nn.Module, out_dir: Path, cfg: TrainConfig, extra: dict) -> Path:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    # fp16 halves the size; the token embedding (49,408 rows) dominates it.
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.detach().contiguous() for k, v in model.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": TINY_PREPROCESS_CFG,
              "training": {**cfg.__dict__, **extra}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def train_tiny(out_dir: str | Path, cfg: TrainConfig = TrainConfig(),
               progress: Callable[[str], None] = print) -> Path:
    """Train the tiny model and write it as a local-dir checkpoint. Seeded and deterministic up to
    CPU kernel scheduling."""
    import open_clip
    from open_clip.loss import ClipLoss

    torch.manual_seed(cfg.seed)
    model = open_clip.CLIP(**TINY_MODEL_CFG)
    preprocess = open_clip.image_transform(32, is_train=False, mean=TINY_PREPROCESS_CFG["mean"],
                                           std=TINY_PREPROCESS_CFG["std"], interpolation="bicubic")
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=TINY_MODEL_CFG["text_cfg"]["context_length"])
    started = time.time()
    pixels, tokens = _render_corpus(cfg, preprocess, tokenizer, progress)
    progress(f"corpus ready in {time.time() - started:.0f}s: {tuple(pixels.shape)} images")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    loss_fn = ClipLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    loss_value = float("nan")
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        idx = torch.randint(0, cfg.images, (cfg.batch_size,), generator=generator)
        which = torch.randint(0, cfg.captions_per_image, (cfg.batch_size,), generator=generator)
        image_features, text_features, logit_scale = model(pixels[idx], tokens[idx, which])
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            progress(f"step {step + 1}/{cfg.steps} loss {loss_value:.3f} "
                     f"logit_scale {model.logit_scale.exp().item():.1f} ({time.time() - started:.0f}s)")
    model.eval()
    return write_checkpoint(model, Path(out_dir), cfg, {"final_loss": round(loss_value, 4),
                                                        "seconds": round(time.time() - started)})
