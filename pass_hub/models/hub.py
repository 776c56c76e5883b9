"""Writing pass-hub folders: ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` + ``README.md``.

The folder loads with ``AutoModel.from_pretrained(dir)`` and ``timm.create_model("local-dir:dir", pretrained=True)``
(and, once uploaded, ``"hf-hub:org/name"``). It is written next to its destination and renamed into place,
so a crash never leaves a half-written folder behind.

Example:
    >>> import pass_hub, tempfile
    >>> config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1)
    >>> model = pass_hub.PassViTModel(config)
    >>> folder = save_hub_folder(model, tempfile.mkdtemp() + "/tiny")
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors', 'preprocessor_config.json']
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import ModelCard
from transformers import PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor

from ..atomic import atomic_directory
from .image_processing_pass_vit import image_processor_for


def save_hub_folder(
    model: PreTrainedModel,
    out_dir: str | Path,
    *,
    image_processor: BaseImageProcessor | None = None,
    model_card: ModelCard | str | None = None,
    extra_files: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a ``PassViTModel`` or ``PassViTForReID``) as a hub folder, atomically.

    Args:
        model: The model; its config decides the default image processor (size, mean/std).
        out_dir: Destination folder.
        image_processor: Processor to ship; ``image_processor_for(model.config)`` when None.
        model_card: ``README.md`` content.
        extra_files: Files copied into the folder (pictures the card shows).
        overwrite: Replace an existing destination (only after the new folder is complete).
    """
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        (image_processor or image_processor_for(model.config)).save_pretrained(staging)
        if model_card is not None:
            card = model_card if isinstance(model_card, ModelCard) else ModelCard(model_card)
            card.save(staging / "README.md")
        for file in extra_files:
            shutil.copy2(file, staging / Path(file).name)
    return Path(out_dir)
