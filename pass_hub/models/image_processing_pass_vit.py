"""Image processors of the PASS models: resize to the model's (height, width), rescale, normalise.

Two backends, as transformers provides them: ``PassViTImageProcessor`` (torchvision) and
``PassViTImageProcessorPil`` (PIL/numpy). Both default to 256x128 bilinear resizing with ImageNet statistics;
:func:`image_processor_for` builds the one that matches a config (0.5/0.5 for fine-tuned ReID models).

Example:
    >>> from PIL import Image
    >>> processor = PassViTImageProcessor()
    >>> processor(Image.new("RGB", (64, 160)), return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 256, 128])
"""

from __future__ import annotations

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import PILImageResampling

from .backbone import REID_IMAGE_SIZE
from .configuration_pass_vit import IMAGENET_MEAN, IMAGENET_STD, PassViTConfig


class _PassViTDefaults:
    """Defaults both backends share: bilinear resize to 256x128, rescale to [0, 1], ImageNet normalisation."""

    resample = PILImageResampling.BILINEAR
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    size = {"height": REID_IMAGE_SIZE[0], "width": REID_IMAGE_SIZE[1]}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True


class PassViTImageProcessor(_PassViTDefaults, TorchvisionBackend):
    """Torchvision-backend processor: bilinear resize to 256x128, rescale to [0, 1], normalise."""


class PassViTImageProcessorPil(_PassViTDefaults, PilBackend):
    """PIL-backend twin of :class:`PassViTImageProcessor`."""


def image_processor_for(config: PassViTConfig) -> PassViTImageProcessor:
    """The processor whose size, mean/std and resize filter match ``config`` (what a hub folder should ship)."""
    return PassViTImageProcessor(
        size={"height": config.image_size[0], "width": config.image_size[1]},
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        resample=PILImageResampling[config.image_interpolation.upper()],
    )
