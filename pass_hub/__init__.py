"""pass-hub: the PASS part-aware ViT for person re-identification, in transformers and timm.

Importing the package registers ``PassViTConfig`` / ``PassViTModel`` / the image processors with the
transformers Auto classes and the ``pass_vit_*`` models with timm's registry.

Example:
    >>> import pass_hub, timm
    >>> timm.list_models("pass_vit*")
    ['pass_vit_base', 'pass_vit_small', 'pass_vit_tiny']
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel

from . import timm_models
from .backbone import PassVisionTransformer, pool_parts
from .configuration_pass_vit import PassViTConfig
from .convert import convert_checkpoint, extract_weights, load_checkpoint_file
from .export import OnnxReIDModel, export_onnx
from .gallery import GalleryIndex
from .hub import save_hub_folder
from .image_processing_pass_vit import PassViTImageProcessor, PassViTImageProcessorPil, image_processor_for
from .inference import ImageEmbeddings, ReIDEmbedder, embed, embed_files, load_reid_model
from .modeling_pass_vit import (
    PassViTBackbone,
    PassViTForReID,
    PassViTModel,
    PassViTModelOutput,
    PassViTPreTrainedModel,
    PassViTReIDOutput,
)

AutoConfig.register(PassViTConfig.model_type, PassViTConfig, exist_ok=True)
AutoModel.register(PassViTConfig, PassViTModel, exist_ok=True)
AutoBackbone.register(PassViTConfig, PassViTBackbone, exist_ok=True)
AutoImageProcessor.register(
    PassViTConfig,
    image_processor_classes={"torchvision": PassViTImageProcessor, "pil": PassViTImageProcessorPil},
    exist_ok=True,
)

__version__ = "0.1.0"
__all__ = [
    "GalleryIndex",
    "ImageEmbeddings",
    "OnnxReIDModel",
    "PassViTBackbone",
    "PassViTConfig",
    "PassViTForReID",
    "PassViTImageProcessor",
    "PassViTImageProcessorPil",
    "PassViTModel",
    "PassViTModelOutput",
    "PassViTPreTrainedModel",
    "PassViTReIDOutput",
    "PassVisionTransformer",
    "ReIDEmbedder",
    "convert_checkpoint",
    "embed",
    "embed_files",
    "export_onnx",
    "extract_weights",
    "image_processor_for",
    "load_checkpoint_file",
    "load_reid_model",
    "pool_parts",
    "save_hub_folder",
    "timm_models",
]
