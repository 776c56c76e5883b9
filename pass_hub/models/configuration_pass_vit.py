"""``PassViTConfig``: the configuration of the part-aware ViT, readable by transformers and by timm.

A saved ``config.json`` carries the transformers fields and, derived from them, the fields timm's
``create_model("hf-hub:...")`` / ``"local-dir:..."`` reads (``architecture``, ``model_args``,
``pretrained_cfg``), so one hub folder serves both libraries.
"""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

from .backbone import FUSIONS, PASS_POOLS, PRESETS, REID_IMAGE_SIZE, backbone_architecture

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The supervised fine-tuning recipe normalises with mean = std = 0.5 (spec §4), unlike pre-training.
REID_MEAN = (0.5, 0.5, 0.5)
REID_STD = (0.5, 0.5, 0.5)

REID_FEATURES = ("before_neck", "after_neck")
NECKS = ("per_token", "single")
POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGE_INTERPOLATIONS = ("bilinear", "bicubic")
# Keys that only timm reads; they are derived from the config on save and ignored on load.
TIMM_KEYS = ("architecture", "num_classes", "model_args", "pretrained_cfg")


@strict
class PassViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of a PASS part-aware ViT (``model_type="pass_vit"``). Defaults are ViT-S/16 at 256x128.

    Args:
        hidden_size: Token width D (the ReID embedding has 2D values).
        num_hidden_layers: Number of transformer blocks.
        num_attention_heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: Bias on the qkv projection.
        image_size: Training input (height, width); other sizes resample the patch position table.
        patch_size: Square, non-overlapping patch size.
        num_channels: Input channels.
        num_part_tokens: [PART] tokens (3 in PASS: top, middle, bottom).
        pos_embed_interpolation: How the patch position table is resampled for another grid.
        drop_path_rate: Stochastic depth of the last block (linearly increasing over blocks).
        initializer_range: Std of the truncated normal used for linear layers and the position table.
        image_mean: Normalisation mean the weights expect (ImageNet for pre-trained backbones, 0.5 for
            fine-tuned ReID models); mirrored into timm's ``pretrained_cfg`` and the image processor.
        image_std: Normalisation std, likewise.
        image_interpolation: Resize filter of the test-time input (``"bilinear"``, or ``"bicubic"`` as the original
            cluster-contrast code resizes); mirrored likewise.
        reid_feature: Test-time embedding of ``PassViTForReID``: the feature ``"before_neck"`` (PASS default)
            or ``"after_neck"`` (after the BatchNorm necks).
        normalize_embeddings: L2-normalise the test-time embedding of ``PassViTForReID``.
        feature_fusion: How CLS and the mean [PART] token are combined, before and after the necks: ``"cat"``
            (2D values, PASS fine-tuning) or ``"mean"`` (D values); also the pooling of ``PassViTModel``.
        neck: BatchNorm necks of ``PassViTForReID``: ``"per_token"`` (one per token: CLS, PART1..3) or
            ``"single"`` (one on the fused feature; the original's single-neck USL).
        normalize_neck_outputs: L2-normalise each per-token neck's output before fusing (the original's UDA).
        label_smoothing: Label smoothing of the identity cross-entropy of ``PassViTForReID``.
        out_features / out_indices: Blocks whose feature maps ``PassViTBackbone`` returns (``stage1``..``stageN``).

    Example:
        >>> config = PassViTConfig.from_preset("pass_vit_tiny", image_size=(384, 128))
        >>> config.hidden_size, config.num_patches, config.embedding_size
        (192, 192, 384)
    """

    model_type: ClassVar[str] = "pass_vit"

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    image_size: list[int] | tuple[int, int] = REID_IMAGE_SIZE
    patch_size: int = 16
    num_channels: int = 3
    num_part_tokens: int = 3
    pos_embed_interpolation: str = "bilinear"
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_STD
    image_interpolation: str = "bilinear"
    reid_feature: str = "before_neck"
    normalize_embeddings: bool = True
    feature_fusion: str = "cat"
    neck: str = "per_token"
    normalize_neck_outputs: bool = False
    label_smoothing: float | int = 0.0
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        for key in TIMM_KEYS:
            kwargs.pop(key, None)
        self.image_size = tuple(self.image_size)
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)
        self.check_values()

    def check_values(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent value (run on creation and by the models)."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if len(self.image_size) != 2 or any(side % self.patch_size for side in self.image_size):
            raise ValueError(f"image_size={self.image_size} must be (height, width), multiples of {self.patch_size}")
        if self.reid_feature not in REID_FEATURES:
            raise ValueError(f"reid_feature={self.reid_feature!r}; expected one of {REID_FEATURES}")
        if self.image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image_interpolation={self.image_interpolation!r}; expected one of {IMAGE_INTERPOLATIONS}"
            )
        if self.feature_fusion not in FUSIONS:
            raise ValueError(f"feature_fusion={self.feature_fusion!r}; expected one of {FUSIONS}")
        if self.neck not in NECKS:
            raise ValueError(f"neck={self.neck!r}; expected one of {NECKS}")
        if self.normalize_neck_outputs and self.neck != "per_token":
            raise ValueError("normalize_neck_outputs=True needs neck='per_token' (it normalises each neck's output)")
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation={self.pos_embed_interpolation!r}; expected one of {POS_EMBED_INTERPOLATIONS}"
            )
        if self.num_part_tokens < 1:
            raise ValueError(f"num_part_tokens={self.num_part_tokens} must be at least 1")

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> PassViTConfig:
        """Config of a named preset (``pass_vit_tiny`` / ``pass_vit_small`` / ``pass_vit_base``, or ``tiny`` ...) or
        of a written-out shape ``"embed_dim=D,depth=L,num_heads=H"``."""
        preset = backbone_architecture(name)
        arch = dict(
            hidden_size=preset["embed_dim"],
            num_hidden_layers=preset["depth"],
            num_attention_heads=preset["num_heads"],
        )
        return cls(**{**arch, **kwargs})

    # ------------------------------------------------------------ derived
    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def embedding_size(self) -> int:
        """Width of the ReID embedding: ``cat(CLS, mean(PARTs))`` has 2D values, their ``mean`` D."""
        return (2 if self.feature_fusion == "cat" else 1) * self.hidden_size

    @property
    def global_pool(self) -> str:
        """timm's name of this config's pooling (``"pass"`` or ``"pass_mean"``)."""
        return next(pool for pool, fusion in PASS_POOLS.items() if fusion == self.feature_fusion)

    @property
    def timm_architecture(self) -> str:
        """The timm registry name whose preset is closest to this config (the saved ``model_args`` rule)."""
        for name, preset in PRESETS.items():
            if preset["embed_dim"] == self.hidden_size:
                return name
        return "pass_vit_small"

    def backbone_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of ``PassVisionTransformer`` (timm's ``model_args``)."""
        return dict(
            img_size=list(self.image_size),
            patch_size=self.patch_size,
            in_chans=self.num_channels,
            embed_dim=self.hidden_size,
            depth=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            mlp_ratio=float(self.mlp_ratio),
            qkv_bias=self.qkv_bias,
            num_parts=self.num_part_tokens,
            pos_embed_interpolation=self.pos_embed_interpolation,
            global_pool=self.global_pool,
        )

    def timm_pretrained_cfg(self) -> dict[str, Any]:
        return dict(
            input_size=[self.num_channels, *self.image_size],
            interpolation=self.image_interpolation,
            crop_pct=1.0,
            crop_mode="squash",
            mean=list(self.image_mean),
            std=list(self.image_std),
            num_classes=0,
            pool_size=None,
            fixed_input_size=True,
            first_conv="patch_embed.proj",
            classifier="head",
            license="apache-2.0",
        )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.update(
            architecture=self.timm_architecture,
            num_classes=0,
            model_args=self.backbone_kwargs(),
            pretrained_cfg=self.timm_pretrained_cfg(),
        )
        return output
