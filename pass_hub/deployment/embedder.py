"""One way to resolve a MODEL argument to a PyTorch embedder (:func:`load_reid_model`, :class:`ReIDEmbedder`).


A MODEL is any of (:func:`load_reid_model`):

* a pass-hub folder or hub id (``org/name``, ``hf-hub:org/name``); a ``PassViTForReID`` folder keeps its
  configured test-time feature (``reid_feature``) and normalisation (``normalize_embeddings``);
* a timm name of the ``pass_vit_*`` family (``pass_vit_small``, ``pass_vit_small.lup_pass``);
* an original PASS checkpoint (``.pth`` / ``.bin`` / ``.safetensors``, any layout :mod:`pass_hub.convert` reads);
* an ``nn.Module`` already in memory (``PassViTModel``, ``PassViTForReID`` or a timm ``PassVisionTransformer``),
  e.g. the model being trained;
* for :func:`embed` / :func:`embed_files` / :class:`pass_hub.GalleryIndex` only: an ONNX file written by
  :func:`pass_hub.export_onnx` (run with onnxruntime through :class:`pass_hub.OnnxReIDModel`).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..models.backbone import PASS_POOLS, PassVisionTransformer, l2_normalize
from ..models.convert import load_pass_hub_folder
from ..models.modeling_pass_vit import PassViTForReID, PassViTModel, PassViTPreTrainedModel, describe_feature
from .preprocessing import Preprocessing

# The feature search and tracking thresholds: after the BatchNorm necks, cosines of different people spread out
# (README, "Deployment": measured on the demo's models), where before the necks they all sit near 1.
DEPLOYMENT_FEATURE = "after_neck"
FEATURE_CHOICES = ("evaluation", "deployment", "before_neck", "after_neck")


def resolve_feature(model: nn.Module, feature: str) -> str:
    """``before_neck`` or ``after_neck`` for what ``feature`` asks of ``model`` (see :class:`ReIDEmbedder`).

    Example:
        >>> import pass_hub
        >>> config = pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, num_labels=2)
        >>> resolve_feature(pass_hub.PassViTForReID(config), "evaluation"), resolve_feature(
        ...     pass_hub.PassViTForReID(config), "deployment")
        ('before_neck', 'after_neck')
    """
    if feature not in FEATURE_CHOICES:
        raise ValueError(f"feature={feature!r}; expected one of {FEATURE_CHOICES}")
    has_necks = isinstance(model, PassViTForReID)
    if feature == "evaluation":
        return model.config.reid_feature if has_necks else "before_neck"
    if feature == "deployment":
        return DEPLOYMENT_FEATURE if has_necks else "before_neck"
    if feature == "after_neck" and not has_necks:
        raise ValueError(f"a {type(model).__name__} has no BatchNorm necks, so no after-neck feature")
    return feature


class ReIDEmbedder(nn.Module):
    """Preprocessed pixels (B, 3, H, W) -> ReID embeddings (B, 2D), L2-normalised when ``normalize``.

    The embedding is ``cat(CLS, mean(PART1..3))`` of the backbone, or for a ``PassViTForReID`` the feature
    ``feature`` names (``before_neck``: the same; ``after_neck``: after the BatchNorm necks). This is the module
    :func:`pass_hub.export_onnx` exports and :func:`embed` runs. Sizes other than ``preprocessing.image_size``
    (multiples of the patch size) resample the patch position table.

    Args:
        model: ``PassViTModel``, ``PassViTForReID`` or a timm ``PassVisionTransformer`` (``global_pool="pass"``).
        preprocessing: Input the weights expect; derived from ``model`` when None.
        normalize: L2-normalise the embedding; default: the ReID config's ``normalize_embeddings``, else True.
        source: What the model was loaded from (written into exported files and embedding metadata).
        feature: ``"deployment"`` (default): the one whose cosine similarities can be thresholded, the after-neck
            feature of a model with BatchNorm necks (:data:`DEPLOYMENT_FEATURE`); ``"evaluation"``: the feature the
            paper tests, ``config.reid_feature`` of a ReID model (the before-neck one unless configured otherwise);
            or ``"before_neck"`` / ``"after_neck"``. A backbone without necks has only the before-neck feature.

    Example:
        >>> import torch, pass_hub
        >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
        >>> embedder = ReIDEmbedder(pass_hub.PassViTModel(config)).eval()
        >>> embedder(torch.randn(2, 3, 256, 128)).shape, embedder.normalize
        (torch.Size([2, 128]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocessing: Preprocessing | None = None,
        normalize: bool | None = None,
        source: str = "",
        feature: str = "deployment",
    ) -> None:
        super().__init__()
        self.feature = resolve_feature(model, feature)
        if isinstance(model, PassViTPreTrainedModel):
            config = model.config
            default_preprocessing = Preprocessing.from_config(config)
            self.embedding_size = config.embedding_size
        elif isinstance(model, PassVisionTransformer):
            if model.global_pool not in PASS_POOLS:
                raise ValueError(f"the timm model pools with {model.global_pool!r}; create it with global_pool='pass'")
            default_preprocessing = Preprocessing.from_timm(model)
            self.embedding_size = model.head_hidden_size
        else:
            raise ValueError(
                f"expected a PassViTModel, PassViTForReID or PassVisionTransformer, got {type(model).__name__}"
            )
        self.model = model
        self.preprocessing = preprocessing or default_preprocessing
        if normalize is None:
            normalize = model.config.normalize_embeddings if isinstance(model, PassViTForReID) else True
        self.normalize = bool(normalize)
        self.source = source or type(model).__name__

    @property
    def feature_description(self) -> str:
        """Which feature the embedding is, in words (for metadata)."""
        if isinstance(self.model, PassViTPreTrainedModel):
            return describe_feature(self.model.config, self.feature)
        fusion = "cat(CLS, mean(PART_1..PART_n))" if self.model.global_pool == "pass" else "(CLS + mean(PARTs)) / 2"
        return f"{fusion} of the final-norm tokens"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        if isinstance(model, PassViTForReID):
            features = model.test_features(pixel_values, self.feature)
        elif isinstance(model, PassViTModel):
            features = model(pixel_values).pooler_output
        else:
            features = model.forward_head(model.forward_features(pixel_values), pre_logits=True)
        return l2_normalize(features) if self.normalize else features

    def fingerprint(self) -> str:
        """SHA-256 of the weights, preprocessing and output choice: equal fingerprints give equal embeddings."""
        digest = hashlib.sha256(repr((self.preprocessing, self.normalize, self.feature_description)).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def _load_pass_hub_folder(spec: str) -> tuple[PassViTPreTrainedModel, Preprocessing]:
    """A local folder or hub id holding a pass-hub ``config.json``."""
    from transformers import AutoImageProcessor

    # A fine-tuned folder loads as PassViTForReID so that its configured test-time feature is used.
    model = load_pass_hub_folder(spec)
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError):  # no (readable) preprocessor_config.json: the config's values are the truth
        return model, Preprocessing.from_config(model.config)
    return model, Preprocessing.from_image_processor(processor, model.config.patch_size)


def _load_timm(name: str, pretrained: bool) -> PassVisionTransformer:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    # timm would warn and hand back random weights; a ReID model without weights must not pass silently.
    if pretrained and not (cfg and (cfg.hf_hub_id or cfg.url or cfg.file)):
        raise ValueError(
            f"timm model {name!r} has no published weights; give a folder or checkpoint, "
            "or pretrained=False for a randomly initialised model"
        )
    return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True)


def load_reid_model(
    spec: str | Path | nn.Module,
    *,
    normalize: bool | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    feature: str | None = None,
    num_heads: int | None = None,
) -> ReIDEmbedder:
    """Resolve a MODEL argument (module docstring) to a :class:`ReIDEmbedder` in eval mode.

    Args:
        spec: Folder, hub id, timm ``pass_vit_*`` name, original checkpoint file, or a model object.
        normalize: L2-normalise embeddings; default: the ReID config's choice, otherwise True.
        feature: Which embedding (:class:`ReIDEmbedder`): ``"deployment"`` (default; the scores search and
            tracking threshold), ``"evaluation"`` (the paper's test feature, what :func:`pass_hub.evaluate_model`
            uses), ``"before_neck"`` or ``"after_neck"``; None keeps the feature of a :class:`ReIDEmbedder` passed
            as ``spec``.
        pretrained: For timm names: load the published weights (False: random initialisation, for benchmarks).
        device: Where to put the model (default: where it is, the CPU for loaded ones).
        num_heads: Attention heads of an original checkpoint whose width is not 64 per head (its tensors do not
            say; :func:`pass_hub.convert_checkpoint`). Other forms carry their heads in their config.

    Raises:
        FileNotFoundError / ValueError: naming the spec when it is none of the accepted forms.

    Example:
        >>> embedder = load_reid_model("pass_vit_tiny", pretrained=False)
        >>> embedder.embedding_size, embedder.preprocessing.image_size
        (384, (256, 128))
    """
    converted = isinstance(spec, (str, Path)) and Path(spec).exists() and not (Path(spec) / "config.json").is_file()
    if num_heads is not None and not converted:
        raise ValueError(f"num_heads (--num-heads) applies to original checkpoint files, whose tensors do not give "
                         f"the attention heads; {_describe(spec)} gives its own")
    if isinstance(spec, ReIDEmbedder):
        embedder = spec
        wanted = spec.feature if feature is None else resolve_feature(spec.model, feature)
        if (normalize is not None and normalize != spec.normalize) or wanted != spec.feature:
            embedder = ReIDEmbedder(spec.model, preprocessing=spec.preprocessing,
                                    normalize=spec.normalize if normalize is None else normalize,
                                    source=spec.source, feature=wanted)
    elif isinstance(spec, nn.Module):
        embedder = ReIDEmbedder(spec, normalize=normalize, feature=feature or "deployment")
    else:
        embedder = _embedder_from_spec(str(spec), normalize=normalize, pretrained=pretrained,
                                       feature=feature or "deployment", num_heads=num_heads)
    if device is not None:
        embedder.to(device)
    return embedder.eval()


def _describe(spec: object) -> str:
    return f"{spec}" if isinstance(spec, (str, Path)) else f"a {type(spec).__name__} object"


def _embedder_from_spec(
    spec: str, *, normalize: bool | None, pretrained: bool, feature: str, num_heads: int | None = None
) -> ReIDEmbedder:
    import timm

    path = Path(spec)
    if path.suffix == ".onnx":
        raise ValueError(f"{spec} is an ONNX file; run it with pass_hub.OnnxReIDModel (embed/search accept it)")
    if path.is_dir() and (path / "config.json").is_file():
        model, preprocessing = _load_pass_hub_folder(spec)
        return ReIDEmbedder(model, preprocessing=preprocessing, normalize=normalize, source=spec, feature=feature)
    if path.exists():
        # An original checkpoint (or a bare weights folder): convert it once to a temporary pass-hub folder,
        # which picks the backbone or ReID model and the matching normalisation exactly as `convert` does.
        from ..models.convert import convert_checkpoint

        with tempfile.TemporaryDirectory(prefix="pass-hub-convert-") as scratch:
            folder = convert_checkpoint(path, Path(scratch) / "model", num_heads=num_heads)
            model, preprocessing = _load_pass_hub_folder(str(folder))
        return ReIDEmbedder(model, preprocessing=preprocessing, normalize=normalize, source=spec, feature=feature)
    name = spec.removeprefix("timm:")
    if name.split(".")[0] in timm.list_models("pass_vit*"):
        return ReIDEmbedder(_load_timm(name, pretrained), normalize=normalize, source=spec, feature=feature)
    hub_id = spec.removeprefix("hf-hub:")
    if hub_id.count("/") == 1 and not spec.startswith((".", "/")):
        try:
            model, preprocessing = _load_pass_hub_folder(hub_id)
        except OSError:  # not on the hub, offline, or not cached
            from huggingface_hub import constants

            where = "not in the local hub cache (offline)" if constants.HF_HUB_OFFLINE else "not found on the hub"
            raise FileNotFoundError(
                f"model {spec}: no such folder or file, and as a hub id {where}"
            ) from None
        return ReIDEmbedder(model, preprocessing=preprocessing, normalize=normalize, source=spec, feature=feature)
    raise FileNotFoundError(
        f"model {spec}: no such folder or file, and not a timm name ({', '.join(timm.list_models('pass_vit*'))}) "
        "or a hub id (org/name)"
    )
