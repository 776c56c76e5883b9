"""pass-hub: the PASS part-aware ViT for person re-identification, in transformers and timm.

Importing the package registers ``PassViTConfig`` / ``PassViTModel`` / the image processors with the
transformers Auto classes and the ``pass_vit_*`` models with timm's registry.

Example:
    >>> import pass_hub, timm
    >>> timm.list_models("pass_vit*")
    ['pass_vit_base', 'pass_vit_small', 'pass_vit_tiny']
"""

import importlib
import importlib.abc
import importlib.util
import sys

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel

from .deployment.embedder import ReIDEmbedder, load_reid_model
from .deployment.embedding import ImageEmbeddings, embed, embed_files
from .deployment.export import OnnxReIDModel, export_onnx
from .deployment.gallery import GalleryIndex
from .models import timm_models
from .models.backbone import PassVisionTransformer, pool_parts
from .models.configuration_pass_vit import PassViTConfig
from .models.convert import CheckpointError, convert_checkpoint, extract_weights, load_checkpoint_file
from .models.hub import save_hub_folder
from .models.image_processing_pass_vit import PassViTImageProcessor, PassViTImageProcessorPil, image_processor_for
from .models.modeling_pass_vit import (
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

# Modules that moved into the groups (models/, evaluation/, deployment/, pictures/): their old paths stay
# importable (``import pass_hub.metrics``, ``from pass_hub.inference import embed``) and name the same module.
MOVED_MODULES = {
    "backbone": "models.backbone",
    "configuration_pass_vit": "models.configuration_pass_vit",
    "modeling_pass_vit": "models.modeling_pass_vit",
    "image_processing_pass_vit": "models.image_processing_pass_vit",
    "timm_models": "models.timm_models",
    "convert": "models.convert",
    "hub": "models.hub",
    "model_card": "models.model_card",
    "metrics": "evaluation.metrics",
    "distances": "evaluation.distances",
    "reranking": "evaluation.reranking",
    "calibration": "evaluation.calibration",
    "inference": "deployment",
    "export": "deployment.export",
    "gallery": "deployment.gallery",
    "deployment_cli": "deployment.cli",
    "visualize": "pictures.visualize",
    "part_attention": "pictures.part_attention",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, module):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves ``pass_hub.<old>`` to the module now at ``pass_hub.<new>`` (``MOVED_MODULES``)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != __name__ or name not in MOVED_MODULES:
            return None
        module = importlib.import_module(f"{__name__}.{MOVED_MODULES[name]}")
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(module))


sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    if name in MOVED_MODULES:  # ``pass_hub.metrics.evaluate_reid`` without importing pass_hub.metrics first
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CheckpointError",
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
