"""Image transforms of the ReID scripts (``docs/recipes.md`` §2 and §3).

Train: bicubic resize, horizontal flip 0.5, pad 10 + random crop, normalise with mean = std = 0.5, random
erasing with p 0.5 in one of the two originals' ways (``erasing``):

* ``"transreid"`` (fine-tuning): one box of 2%-1/3 of the area with a log-uniform aspect ratio in
  [0.3, 1/0.3], filled with per-pixel normal noise (timm's ``RandomErasing``, 10 tries);
* ``"cluster_contrast"`` (USL / UDA): one box of 2%-40% of the area with a *uniform* aspect ratio in [0.3, 1/0.3],
  up to 100 tries, filled with the constant (0.485, 0.456, 0.406) on the normalised tensor.

Test: resize (bilinear for fine-tuning, bicubic in cluster-contrast) and the same normalisation. Note the
normalisation differs from pre-training (ImageNet).

Example:
    >>> from PIL import Image
    >>> reid_train_transform((256, 128))(Image.new("RGB", (60, 150))).shape
    torch.Size([3, 256, 128])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from pass_hub.evaluation.protocol import pixel_transform

REID_MEAN = (0.5, 0.5, 0.5)
REID_STD = (0.5, 0.5, 0.5)
ERASINGS = ("transreid", "cluster_contrast")


class ClusterContrastErasing(torch.nn.Module):
    """Random erasing as the original cluster-contrast code does it, drawing from torch's global RNG.

    With probability ``p``: up to ``attempts`` boxes of area U(``area``) x H x W and aspect ratio (h / w)
    U(``aspect``, 1 / ``aspect``), sides rounded; the first that fits strictly inside the image (h < H, w < W) is
    filled with ``fill`` per channel at a uniformly drawn position.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> erased = ClusterContrastErasing(p=1.0)(torch.ones(3, 64, 32))
        >>> bool((erased[0] == 0.485).any()), bool((erased == 1).any())
        (True, True)
    """

    def __init__(
        self,
        p: float = 0.5,
        area: tuple[float, float] = (0.02, 0.4),
        aspect: float = 0.3,
        fill: Sequence[float] = (0.485, 0.456, 0.406),
        attempts: int = 100,
    ) -> None:
        super().__init__()
        self.p, self.area, self.aspect, self.fill, self.attempts = p, area, aspect, tuple(fill), attempts

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(()).item()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() >= self.p:
            return image
        _, height, width = image.shape
        for _ in range(self.attempts):
            target = self._uniform(*self.area) * height * width
            ratio = self._uniform(self.aspect, 1 / self.aspect)
            box_h, box_w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if box_h < height and box_w < width:
                top = int(torch.randint(0, height - box_h + 1, ()))
                left = int(torch.randint(0, width - box_w + 1, ()))
                image = image.clone()
                image[:, top : top + box_h, left : left + box_w] = torch.tensor(self.fill)[:, None, None]
                return image
        return image


def reid_train_transform(
    image_size: tuple[int, int],
    *,
    erasing: str = "transreid",
    padding: int = 10,
    erasing_p: float = 0.5,
    mean: Sequence[float] = REID_MEAN,
    std: Sequence[float] = REID_STD,
) -> v2.Compose:
    """The training augmentation; randomness from torch's global RNG (seed it per sample for reproducibility)."""
    if erasing == "transreid":
        eraser = v2.RandomErasing(p=erasing_p, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), value="random")
    elif erasing == "cluster_contrast":
        eraser = ClusterContrastErasing(p=erasing_p)
    else:
        raise ValueError(f"erasing={erasing!r}; expected one of {ERASINGS}")
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
            eraser,
        ]
    )


def reid_test_transform(
    image_size: tuple[int, int],
    *,
    interpolation: str = "bilinear",
    mean: Sequence[float] = REID_MEAN,
    std: Sequence[float] = REID_STD,
) -> v2.Compose:
    """The evaluation transform: resize (``interpolation``) and normalisation, nothing random."""
    return pixel_transform(image_size, mean, std, interpolation)
