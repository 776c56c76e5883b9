"""What a model expects of its input (:class:`Preprocessing`: size, mean/std, resize filter) and the strings that
describe an embedder's output (:func:`embedding_metadata`): shared by the PyTorch embedder and the ONNX runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers.image_utils import PILImageResampling

from ..models.backbone import PassVisionTransformer
from ..models.configuration_pass_vit import IMAGENET_MEAN, IMAGENET_STD, PassViTConfig
from ..models.image_processing_pass_vit import PassViTImageProcessorPil

if TYPE_CHECKING:
    from .embedding import Embedder



@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input: RGB, resized to ``image_size``, rescaled to [0, 1], normalised.

    Attributes:
        image_size: (height, width) the images are resized to.
        mean: Per-channel mean subtracted after rescaling to [0, 1].
        std: Per-channel std divided by after subtracting the mean.
        interpolation: Resize filter (a ``PIL.Image.Resampling`` name in lower case).
        patch_size: Other input sizes must be multiples of it.
    """

    image_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    patch_size: int = 16

    @classmethod
    def from_config(cls, config: PassViTConfig) -> Preprocessing:
        return cls(tuple(config.image_size), tuple(config.image_mean), tuple(config.image_std),
                   config.image_interpolation, config.patch_size)

    @classmethod
    def from_image_processor(cls, processor: Any, patch_size: int) -> Preprocessing:
        """From a transformers image processor (``preprocessor_config.json`` of a hub folder)."""
        size = processor.size
        return cls(
            (int(size["height"]), int(size["width"])),
            tuple(float(v) for v in processor.image_mean),
            tuple(float(v) for v in processor.image_std),
            PILImageResampling(processor.resample).name.lower(),
            patch_size,
        )

    @classmethod
    def from_timm(cls, model: PassVisionTransformer) -> Preprocessing:
        """From a timm model's ``pretrained_cfg`` (defaults: its construction size, ImageNet statistics)."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        height, width = cfg.get("input_size", (3, *model.patch_embed.img_size))[-2:]
        return cls(
            (int(height), int(width)),
            tuple(cfg.get("mean", IMAGENET_MEAN)),
            tuple(cfg.get("std", IMAGENET_STD)),
            cfg.get("interpolation", "bilinear"),
            int(model.patch_embed.patch_size[0]),
        )

    def image_processor(self) -> PassViTImageProcessorPil:
        """The PIL-backend processor doing this preprocessing (on batches of small person crops it is several
        times faster than the torchvision one, with the same output)."""
        height, width = self.image_size
        return PassViTImageProcessorPil(
            size={"height": height, "width": width},
            image_mean=list(self.mean),
            image_std=list(self.std),
            resample=PILImageResampling[self.interpolation.upper()],
        )




def embedding_metadata(embedder: Embedder) -> dict[str, str]:
    """Strings describing an embedder's output (stored with embedding files and gallery indexes)."""
    from .. import __version__

    height, width = embedder.preprocessing.image_size
    return {
        "model": embedder.source,
        "model_fingerprint": embedder.fingerprint(),
        "embedding_dim": str(embedder.embedding_size),
        "feature": embedder.feature,
        "feature_description": embedder.feature_description,
        "normalized": str(embedder.normalize).lower(),
        "image_size": f"{height}x{width}",
        "pass_hub_version": __version__,
    }
