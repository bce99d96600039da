"""The model's image transform as batched tensor operations, on whatever device the model runs on.

open_clip's transform (Resize of the shortest side, bicubic with antialiasing; CenterCrop; ToTensor;
Normalize) works on one PIL image at a time. `TensorPreprocess` does the same steps with torchvision's
tensor functions on uint8 images, a batch of equal-sized images per call, so that the worker's decode
threads only decode and the same code resizes on the CPU here and on the GPU there. On the CPU,
torchvision resizes uint8 with PIL's filter, so the result is within a level or two of 255 of the PIL
path (tests/cased_core/method/test_preprocess.py measures it on real photos).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class TensorPreprocess:
    """Shortest side to `size` (bicubic, antialiased), centre crop `size` x `size`, normalise."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, transform) -> "TensorPreprocess | None":
        """The tensor form of an open_clip image transform, or None when it is not the default layout
        (shortest-side bicubic Resize, square CenterCrop of the same size, then Normalize).

        Examples:
            >>> import open_clip
            >>> TensorPreprocess.of(open_clip.image_transform(224, is_train=False)).size
            224
        """
        from torchvision import transforms as T

        steps = list(getattr(transform, "transforms", ()))
        normalise = [s for s in steps if type(s) is T.Normalize]
        for resize, crop in zip(steps, steps[1:]):
            # Exact types: open_clip's ResizeKeepRatio and CenterCropOrPad compute other sizes.
            if (type(resize) is not T.Resize or type(crop) is not T.CenterCrop or resize.max_size is not None
                    or resize.interpolation != T.InterpolationMode.BICUBIC or len(normalise) != 1):
                continue
            size = resize.size if isinstance(resize.size, int) else resize.size[0] if len(resize.size) == 1 else None
            if size is not None and tuple(crop.size) == (size, size):
                return cls(size, tuple(float(m) for m in normalise[0].mean),
                           tuple(float(s) for s in normalise[0].std))
        return None

    def __call__(self, images: Sequence[torch.Tensor], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 images, each (3, H, W), any sizes, on the CPU or on `device` -> the model's input batch
        (n, 3, size, size) on `device`, in input order. Equal-sized images are resized in one call."""
        out = torch.empty((len(images), 3, self.size, self.size), dtype=dtype, device=device)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(i)
        pin = torch.device(device).type == "cuda"
        for shape, members in groups.items():
            batch = torch.stack([images[i] for i in members])
            if pin and batch.device.type == "cpu":  # page-locked, so that the copy overlaps other work
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=True)
            resized = F.resize(batch, [self.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
            cropped = F.center_crop(resized, [self.size, self.size])
            normalised = F.normalize(cropped.to(torch.float32).div_(255.0), mean=list(self.mean), std=list(self.std))
            out[members] = normalised.to(dtype)
        return out


# EXIF orientation -> the tensor operation on (..., H, W) that shows the image upright (as PIL's
# transpose in workers.decode does for the images it decodes).
UPRIGHT = {
    2: lambda x: x.flip(-1), 3: lambda x: x.flip(-1, -2), 4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2), 6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1, -2), 8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


def decode_jpegs(encoded: Sequence[bytes], orientations: Sequence[int],
                 device: torch.device | str = "cpu") -> list[torch.Tensor | Exception]:
    """JPEG bytes -> uint8 RGB images (3, H, W) on `device`, upright: all at once with torchvision
    (nvJPEG on a GPU, libjpeg-turbo on the CPU); when the batch fails, one by one, so that a JPEG
    that does not decode is the exception in its own place."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(e), dtype=torch.uint8) for e in encoded]
    try:
        decoded: list = list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        decoded = []
        for one in data:
            try:
                decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                decoded.append(err)
    return [UPRIGHT.get(o, lambda x: x)(image) if isinstance(image, torch.Tensor) else image
            for image, o in zip(decoded, orientations)]
