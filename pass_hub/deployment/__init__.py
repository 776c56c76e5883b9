"""Deployment: what a model expects of its input (``preprocessing``), one way to resolve a MODEL argument to an
embedder (``embedder``), image inputs (``images``), batched embedding (``embedding``), thresholded gallery search
(``gallery``), ONNX export and its runner (``export``) and their commands (``cli``). The ONNX runner and the
PyTorch embedder share ``preprocessing``; ``export`` never imports ``embedding``."""

from .embedder import DEPLOYMENT_FEATURE, FEATURE_CHOICES, ReIDEmbedder, load_reid_model, resolve_feature
from .embedding import (
    EMBEDDING_SUFFIXES,
    Embedder,
    ImageEmbeddings,
    ModelSpec,
    embed,
    embed_files,
    resolve_embedder,
    warn_skipped,
)
from .images import ImageInput, ImageList, dataset_images, list_image_paths, load_dataset_split, read_image
from .preprocessing import Preprocessing, embedding_metadata

__all__ = [
    "DEPLOYMENT_FEATURE", "EMBEDDING_SUFFIXES", "FEATURE_CHOICES", "Embedder", "ImageEmbeddings", "ImageInput",
    "ImageList", "ModelSpec", "Preprocessing", "ReIDEmbedder", "dataset_images", "embed", "embed_files",
    "embedding_metadata", "list_image_paths", "load_dataset_split", "load_reid_model", "read_image",
    "resolve_embedder", "resolve_feature", "warn_skipped",
]
