"""The PASS multi-crop views: 2 global views and, per horizontal stripe, several local crops (spec §3).

Geometry: the image is cut into ``num_stripes`` horizontal stripes, each ``2 / (num_stripes + 1)`` of the height
and overlapping its neighbour by half (3 stripes: rows [0, 0.5H), [0.25H, 0.75H), [0.5H, H), rounded down as the
original does). Local crops of stripe k are drawn inside stripe k only, so the [PART_k] token they carry always
sees the same body region.

Photometric recipe (DINO): flip 0.5; colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8; grayscale 0.2; Gaussian
blur with radius U(0.1, 2.0) with p 1.0 (global view 1), 0.1 (global view 2, plus solarize 0.2) and 0.5
(local views); ImageNet normalisation. Colour jitter strength and the grayscale probability are settings
(``ViewConfig.colour_jitter`` / ``grayscale_p``): identities that differ only in colour need them turned down.

Example:
    >>> from PIL import Image
    >>> views = PassViews(ViewConfig(image_size=(128, 64)))(Image.new("RGB", (64, 128)))
    >>> views["global_views"].shape, views["local_views"].shape
    (torch.Size([2, 3, 128, 64]), torch.Size([9, 3, 64, 32]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIPE_COLOURS = ((230, 60, 60), (60, 170, 60), (60, 90, 230), (200, 160, 30), (160, 60, 200))


@dataclass(frozen=True)
class ViewConfig:
    """Sizes and scales of the PASS views. Local views are half the global size unless given."""

    image_size: tuple[int, int] = (256, 128)
    local_size: tuple[int, int] | None = None
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.8)
    num_stripes: int = 3
    local_crops_per_stripe: int = 3
    colour_jitter: float = 1.0  # scales the (0.4, 0.4, 0.2, 0.1) jitter; 0 turns it off
    grayscale_p: float = 0.2

    @property
    def resolved_local_size(self) -> tuple[int, int]:
        return self.local_size or (self.image_size[0] // 2, self.image_size[1] // 2)

    @property
    def num_local_views(self) -> int:
        return self.num_stripes * self.local_crops_per_stripe


def stripe_bounds(height: int, num_stripes: int) -> list[tuple[int, int]]:
    """Row ranges [top, bottom) of the half-overlapping stripes of an image of ``height`` rows, cut as the original
    code cuts them: stripe k starts at ``int(k * height / (S + 1))`` and has ``int(2 * height / (S + 1))`` rows
    (3 stripes: tops 0, int(0.25 H), int(0.5 H), height int(0.5 H)).

    Example:
        >>> stripe_bounds(90, 3)
        [(0, 45), (22, 67), (45, 90)]
    """
    tops = [int(k * height / (num_stripes + 1)) for k in range(num_stripes)]
    return [(top, top + int(2 * height / (num_stripes + 1))) for top in tops]


class RandomGaussianBlur(torch.nn.Module):
    """PIL Gaussian blur with probability ``p`` and a radius drawn from U(low, high), using torch's RNG."""

    def __init__(self, p: float, radius: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        self.p, self.radius = p, radius

    def forward(self, image: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return image
        low, high = self.radius
        return image.filter(ImageFilter.GaussianBlur(radius=low + (high - low) * torch.rand(()).item()))


def _photometric(config: ViewConfig, blur_p: float, solarize_p: float = 0.0) -> v2.Compose:
    strength = config.colour_jitter
    steps = [v2.RandomHorizontalFlip(0.5)]
    if strength:
        jitter = v2.ColorJitter(0.4 * strength, 0.4 * strength, 0.2 * strength, min(0.1 * strength, 0.5))
        steps.append(v2.RandomApply([jitter], p=0.8))
    if config.grayscale_p:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    steps.append(RandomGaussianBlur(blur_p))
    if solarize_p:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


class PassViews:
    """Callable that turns one PIL image into the PASS views.

    Returns a dict with ``global_views`` (2, 3, H, W) and ``local_views`` (S*C, 3, h, w), the local views ordered
    stripe by stripe (rows [k*C:(k+1)*C] come from stripe k). Randomness comes from torch's global RNG, so a
    caller that seeds it per sample (see :class:`training.engine.data.SeededTransformDataset`) gets reproducible views.
    """

    def __init__(self, config: ViewConfig = ViewConfig()) -> None:
        self.config = config
        bicubic = v2.InterpolationMode.BICUBIC
        self.global_crop = v2.RandomResizedCrop(config.image_size, scale=config.global_scale, interpolation=bicubic)
        self.local_crop = v2.RandomResizedCrop(
            config.resolved_local_size, scale=config.local_scale, interpolation=bicubic
        )
        self.global_photometric = (
            _photometric(config, blur_p=1.0),
            _photometric(config, blur_p=0.1, solarize_p=0.2),
        )
        self.local_photometric = _photometric(config, blur_p=0.5)

    def crops(self, image: Image.Image) -> tuple[list[Image.Image], list[Image.Image]]:
        """The geometric crops only (PIL), before photometric augmentation: (globals, locals by stripe)."""
        image = image.convert("RGB")
        globals_ = [self.global_crop(image) for _ in range(2)]
        locals_ = []
        for top, bottom in stripe_bounds(image.height, self.config.num_stripes):
            stripe = image.crop((0, top, image.width, bottom))
            locals_ += [self.local_crop(stripe) for _ in range(self.config.local_crops_per_stripe)]
        return globals_, locals_

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        globals_, locals_ = self.crops(image)
        pairs = zip(self.global_photometric, globals_, strict=True)
        return {
            "global_views": torch.stack([augment(view) for augment, view in pairs]),
            "local_views": torch.stack([self.local_photometric(view) for view in locals_]),
        }


def render_views_figure(image: Image.Image, views: dict[str, torch.Tensor], config: ViewConfig) -> Image.Image:
    """A picture of one image's views: the original with its stripes, the 2 global and the local views.

    Local views are framed in the colour of the stripe they came from.
    """
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]

    def to_pil(tensor: torch.Tensor) -> Image.Image:
        return v2.functional.to_pil_image((tensor * std + mean).clamp(0, 1))

    height, width = config.image_size
    pad, label = 8, 16
    original = image.convert("RGB").resize((width, height), Image.BICUBIC)
    local_h, local_w = config.resolved_local_size
    locals_left = pad + 3 * (width + pad)
    canvas = Image.new(
        "RGB",
        (
            locals_left + config.local_crops_per_stripe * (max(local_w, 110) + pad),
            max(height, config.num_stripes * (local_h + pad + label)) + label + 2 * pad,
        ),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad // 2), "original", fill="black")
    canvas.paste(original, (pad, pad + label))
    for k, (top, bottom) in enumerate(stripe_bounds(height, config.num_stripes)):
        inset = 2 * k + 1
        draw.rectangle(
            (pad + inset, pad + label + top + inset, pad + width - 1 - inset, pad + label + bottom - 1 - inset),
            outline=STRIPE_COLOURS[k % len(STRIPE_COLOURS)],
            width=2,
        )
    for index, view in enumerate(views["global_views"]):
        x = pad + (index + 1) * (width + pad)
        draw.text((x, pad // 2), f"global {index + 1}", fill="black")
        canvas.paste(to_pil(view), (x, pad + label))
    for index, view in enumerate(views["local_views"]):
        stripe, crop = divmod(index, config.local_crops_per_stripe)
        x = locals_left + crop * (max(local_w, 110) + pad)
        y = pad + label + stripe * (local_h + pad + label)
        colour = STRIPE_COLOURS[stripe % len(STRIPE_COLOURS)]
        draw.text((x, y - label + 2), f"stripe {stripe + 1} / PART{stripe + 1}", fill=colour)
        canvas.paste(to_pil(view), (x, y))
        draw.rectangle((x - 2, y - 2, x + local_w + 1, y + local_h + 1), outline=colour, width=2)
    return canvas
