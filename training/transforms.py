"""Image transforms of supervised ReID fine-tuning (spec §4).

Train: bicubic resize, horizontal flip 0.5, pad 10 + random crop, normalise with mean = std = 0.5, random
erasing p 0.5 (one box of 2%-33% of the area, aspect 0.3-3.3, filled with per-pixel normal noise).
Test: bilinear resize and the same normalisation. Note the normalisation differs from pre-training (ImageNet).

Example:
    >>> from PIL import Image
    >>> reid_train_transform((256, 128))(Image.new("RGB", (60, 150))).shape
    torch.Size([3, 256, 128])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from pass_hub.evaluation import pixel_transform

REID_MEAN = (0.5, 0.5, 0.5)
REID_STD = (0.5, 0.5, 0.5)


def reid_train_transform(
    image_size: tuple[int, int],
    *,
    padding: int = 10,
    erasing_p: float = 0.5,
    mean: Sequence[float] = REID_MEAN,
    std: Sequence[float] = REID_STD,
) -> v2.Compose:
    """The training augmentation; randomness from torch's global RNG (seed it per sample for reproducibility)."""
    return v2.Compose(
        [
            v2.RGB(),
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(0.5),
            v2.Pad(padding),
            v2.RandomCrop(image_size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            v2.RandomErasing(p=erasing_p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value="random"),
        ]
    )


def reid_test_transform(
    image_size: tuple[int, int], *, mean: Sequence[float] = REID_MEAN, std: Sequence[float] = REID_STD
) -> v2.Compose:
    """The evaluation transform: bilinear resize and normalisation, nothing random."""
    return pixel_transform(image_size, mean, std, "bilinear")
