"""transformers models around the one PASS backbone: ``PassViTModel`` and ``PassViTForReID``.

Both wrap :class:`pass_hub.backbone.PassVisionTransformer` (the module timm's ``pass_vit_*`` entries return),
so a folder saved by either loads in timm too.

Example:
    >>> import torch, pass_hub
    >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)
    >>> model = pass_hub.PassViTModel(config).eval()
    >>> out = model(torch.randn(1, 3, 256, 128))
    >>> out.last_hidden_state.shape, out.pooler_output.shape, out.part_tokens.shape
    (torch.Size([1, 132, 64]), torch.Size([1, 128]), torch.Size([1, 3, 64]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .backbone import PassVisionTransformer, fuse_tokens, l2_normalize, pool_parts
from .configuration_pass_vit import PassViTConfig


@dataclass
class PassViTModelOutput(BaseModelOutputWithPooling):
    """Output of :class:`PassViTModel`.

    Attributes:
        last_hidden_state: (B, 1 + P + N, D) tokens ``[CLS, PART1..P, patches]`` after the final norm.
        pooler_output: (B, 2D) ReID embedding ``cat(CLS, mean(PARTs))``, not normalised ((B, D) ``mean`` of the
            two with ``config.feature_fusion="mean"``).
        hidden_states: Embedding output and the output of every block, each (B, 1 + P + N, D).
        attentions: Attention probabilities of every block, each (B, heads, T, T).
        part_tokens: (B, P, D) the [PART] tokens (top to bottom) after the final norm.
    """

    part_tokens: torch.FloatTensor | None = None


@dataclass
class PassViTReIDOutput(ModelOutput):
    """Output of :class:`PassViTForReID`.

    Attributes:
        loss: Identity cross-entropy when ``labels`` are given.
        logits: (B, num_labels) identity logits from the after-neck feature.
        embeddings: Test-time ReID embedding, chosen by ``config.reid_feature`` and L2-normalised when
            ``config.normalize_embeddings``.
        features_before_neck: ``cat(CLS, mean(PARTs))`` (B, 2D): the triplet-loss feature.
        features_after_neck: ``cat(BN(CLS), mean(BN_k(PART_k)))`` (B, 2D): the classifier input.
            Both follow ``config.feature_fusion`` (``mean``: (B, D)) and ``config.neck``.
        hidden_states: As in :class:`PassViTModelOutput`.
        attentions: As in :class:`PassViTModelOutput`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    features_before_neck: torch.FloatTensor | None = None
    features_after_neck: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def bias_frozen_batchnorm(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d whose bias is a zero buffer instead of a parameter.

    The recipe freezes the neck bias at 0; as a buffer it stays out of every optimizer and survives
    ``from_pretrained`` (which re-creates parameters with ``requires_grad=True``), yet keeps the ``.bias`` key.
    """
    neck = nn.BatchNorm1d(dim)
    del neck.bias
    neck.register_buffer("bias", torch.zeros(dim))
    return neck


def describe_feature(config: PassViTConfig, reid_feature: str | None = None) -> str:
    """A ReID feature of ``config`` in words (``reid_feature``, default the config's), for metadata and cards.

    Example:
        >>> describe_feature(PassViTConfig(), "after_neck")
        'cat(BN(CLS), mean(BN_k(PART_k))) after the BatchNorm necks'
    """
    feature = reid_feature or config.reid_feature
    if feature == "before_neck":
        parts = "mean(PART_1..PART_n)"
        fused = f"cat(CLS, {parts})" if config.feature_fusion == "cat" else f"(CLS + {parts}) / 2"
        return f"{fused} of the final-norm tokens"
    if config.neck == "single":
        fused = "cat(CLS, mean(PARTs))" if config.feature_fusion == "cat" else "(CLS + mean(PARTs)) / 2"
        return f"BN({fused}) after the single BatchNorm neck"
    cls, parts = ("L2(BN(CLS))", "mean(L2(BN_k(PART_k)))") if config.normalize_neck_outputs else (
        "BN(CLS)", "mean(BN_k(PART_k))")
    fused = f"cat({cls}, {parts})" if config.feature_fusion == "cat" else f"({cls} + {parts}) / 2"
    return f"{fused} after the BatchNorm necks"


class PassViTLayer(GradientCheckpointingLayer, Block):
    """timm's pre-norm ViT block as transformers checkpoints its layers: ``gradient_checkpointing_enable`` (and
    ``activation_checkpointing_enable``) route their options (``use_reentrant``, ``every_n_layers``, offloading)
    through it. The parameters are timm's ``Block``'s, so the weights load in timm's ``pass_vit_*`` unchanged."""


class PassViTPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading conventions shared by the PASS models."""

    config_class = PassViTConfig
    config: PassViTConfig
    base_model_prefix = "pass_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["PassViTLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, PassVisionTransformer):
            # timm's ViT recipe: the tokens start near zero, the position table like the linear layers.
            init.trunc_normal_(module.pos_embed, std=std)
            init.normal_(module.cls_token, std=1e-6)
            init.normal_(module.reg_token, std=1e-6)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class PassViTEncoderModel(PassViTPreTrainedModel):
    """Base of the models that own the backbone directly (``PassViTModel``, ``PassViTBackbone``)."""

    # A fine-tuned ReID folder also loads as the bare backbone; its head is expected to be left out.
    _keys_to_ignore_on_load_unexpected = [r"^cls_neck\.", r"^part_necks\.", r"^fused_neck\.", r"^classifier\."]

    def __init__(self, config: PassViTConfig) -> None:
        super().__init__(config)
        config.check_values()
        self.vit = PassVisionTransformer(
            **config.backbone_kwargs(),
            drop_path_rate=config.drop_path_rate,
            dynamic_img_size=True,
            num_classes=0,
            block_fn=PassViTLayer,
        )

    def post_init(self) -> None:
        super().post_init()
        self.sync_attention()

    def sync_attention(self) -> None:
        """Run the attention ``config._attn_implementation`` names: PyTorch's fused kernel (``sdpa``) or the plain
        matmul-softmax path (``eager``). Called by every forward, so ``set_attn_implementation`` on a built model
        takes effect."""
        fused = self.config._attn_implementation != "eager"
        if self.vit.blocks[0].attn.fused_attn != fused:
            for block in self.vit.blocks:
                block.attn.fused_attn = fused

    def get_input_embeddings(self) -> nn.Module:
        return self.vit.patch_embed

    def _output_flags(
        self, output_hidden_states: bool | None, output_attentions: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """The call's output options, falling back to the config's."""
        config = self.config
        return (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.output_attentions if output_attentions is None else output_attentions,
            config.return_dict if return_dict is None else return_dict,
        )

    def _check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None) -> None:
        channels = self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise ValueError(f"pixel_values must be (batch, {channels}, height, width), got {list(pixel_values.shape)}")
        size = tuple(pixel_values.shape[-2:])
        patch = self.config.patch_size
        if size[0] % patch or size[1] % patch:
            raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
        if interpolate_pos_encoding is False and size != tuple(self.config.image_size):
            raise ValueError(
                f"image size {size} differs from the model's {tuple(self.config.image_size)}; "
                "pass interpolate_pos_encoding=True (or None) to resample the position table"
            )


class PassViTModel(PassViTEncoderModel):
    """The PASS part-aware ViT backbone. ``pooler_output`` is the ReID embedding ``cat(CLS, mean(PARTs))``.

    Inputs whose size differs from ``config.image_size`` get a resampled patch position table (the CLS and
    PART positions are kept), so 384x128 or 224x224 inputs work with 256x128 weights.

    Example:
        >>> from transformers import AutoModel, AutoImageProcessor  # doctest: +SKIP
        >>> model = AutoModel.from_pretrained("out/pass-vit-s16")  # doctest: +SKIP
        >>> processor = AutoImageProcessor.from_pretrained("out/pass-vit-s16")  # doctest: +SKIP
        >>> embedding = model(**processor(images, return_tensors="pt")).pooler_output  # doctest: +SKIP
    """

    def __init__(self, config: PassViTConfig) -> None:
        super().__init__(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PassViTModelOutput | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) normalised images; H and W multiples of the patch size.
            output_hidden_states: Return the embedding output and every block's output.
            output_attentions: Return every block's attention probabilities (computed unfused).
            interpolate_pos_encoding: ``False`` refuses sizes other than ``config.image_size``; ``None``/``True``
                resample the patch position table when needed.
            return_dict: Return a :class:`PassViTModelOutput` (default) or a plain tuple.
        """
        config = self.config
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        self._check_pixel_values(pixel_values, interpolate_pos_encoding)
        self.sync_attention()

        tokens = self.vit.forward_tokens(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        num_parts = config.num_part_tokens
        output = PassViTModelOutput(
            last_hidden_state=tokens.last_hidden_state,
            pooler_output=pool_parts(tokens.last_hidden_state, num_parts, config.feature_fusion),
            hidden_states=tokens.hidden_states,
            attentions=tokens.attentions,
            part_tokens=tokens.last_hidden_state[:, 1 : 1 + num_parts],
        )
        return output if return_dict else output.to_tuple()


class PassViTForReID(PassViTPreTrainedModel):
    """PASS backbone with the supervised ReID head of the paper (spec §4), or the cluster-contrast variants.

    By default four BatchNorm1d necks (CLS, PART1..3; bias frozen at 0) and a bias-free identity classifier on
    ``cat(BN(CLS), mean(BN_k(PART_k)))``. The test-time embedding (``embeddings``) is the feature before the
    necks, L2-normalised, unless ``config.reid_feature`` / ``config.normalize_embeddings`` say otherwise.
    ``config.neck="single"`` puts one neck on the fused feature instead, ``config.feature_fusion="mean"``
    averages CLS and the mean PART rather than concatenating them, and ``config.normalize_neck_outputs``
    L2-normalises each neck's output before fusion: the heads of the original USL / UDA code.

    Example:
        >>> import torch, pass_hub
        >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_labels=10)
        >>> model = pass_hub.PassViTForReID(config)
        >>> out = model(torch.randn(4, 3, 256, 128), labels=torch.tensor([0, 1, 2, 3]))
        >>> out.logits.shape, out.embeddings.shape, out.loss.ndim
        (torch.Size([4, 10]), torch.Size([4, 128]), 0)
    """

    def __init__(self, config: PassViTConfig) -> None:
        super().__init__(config)
        self.pass_vit = PassViTModel(config)
        dim = config.hidden_size
        if config.neck == "per_token":
            self.cls_neck = bias_frozen_batchnorm(dim)
            self.part_necks = nn.ModuleList(bias_frozen_batchnorm(dim) for _ in range(config.num_part_tokens))
        else:
            self.fused_neck = bias_frozen_batchnorm(config.embedding_size)
        # No identities (e.g. cluster-contrast, which learns none): no classifier, and ``logits`` is None.
        self.classifier = (
            nn.Linear(config.embedding_size, config.num_labels, bias=False) if config.num_labels > 0 else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.classifier:
            # The identity classifier of the original recipe starts from N(0, 0.001).
            init.normal_(module.weight, std=0.001)
        else:
            super()._init_weights(module)

    def neck_modules(self) -> list[nn.BatchNorm1d]:
        """The BatchNorm necks: CLS then PART1..P (``per_token``), or the one fused-feature neck (``single``)."""
        if self.config.neck == "per_token":
            return [self.cls_neck, *self.part_necks]
        return [self.fused_neck]

    def neck_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The after-neck feature from (B, T, D) tokens: ``cat(BN(CLS), mean(BN_k(PART_k)))`` by default."""
        config = self.config
        if config.neck == "single":
            return self.fused_neck(pool_parts(tokens, config.num_part_tokens, config.feature_fusion))
        outputs = [neck(tokens[:, k]) for k, neck in enumerate(self.neck_modules())]
        if config.normalize_neck_outputs:
            outputs = [l2_normalize(output) for output in outputs]
        return fuse_tokens(outputs[0], torch.stack(outputs[1:]).mean(dim=0), config.feature_fusion)

    def test_features(self, pixel_values: torch.Tensor, feature: str | None = None) -> torch.Tensor:
        """The feature ``feature`` (default ``config.reid_feature``) names, not normalised: what ``embeddings``
        holds, and what an embedder of that feature returns before L2 normalisation."""
        feature = feature or self.config.reid_feature
        return self.features_by_name(pixel_values, (feature,))[feature]

    def features_by_name(self, pixel_values: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Several test features (``before_neck`` / ``after_neck``, not normalised) from one forward pass."""
        tokens = self.pass_vit(pixel_values)
        features = {}
        for name in names:
            if name not in ("before_neck", "after_neck"):
                raise ValueError(f"feature {name!r}; expected 'before_neck' or 'after_neck'")
            features[name] = tokens.pooler_output if name == "before_neck" else self.neck_features(
                tokens.last_hidden_state)
        return features

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PassViTReIDOutput | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) images normalised with the model's mean/std.
            labels: (B,) identity indices in [0, num_labels) for the cross-entropy loss.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.pass_vit(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        before = outputs.pooler_output
        after = self.neck_features(outputs.last_hidden_state)
        logits = None if self.classifier is None else self.classifier(after)
        loss = None
        if labels is not None:
            if logits is None:
                raise ValueError("labels were given but config.num_labels is 0: this model has no identity classifier")
            loss = F.cross_entropy(logits, labels, label_smoothing=float(self.config.label_smoothing))
        embeddings = before if self.config.reid_feature == "before_neck" else after
        if self.config.normalize_embeddings:
            embeddings = l2_normalize(embeddings)
        output = PassViTReIDOutput(
            loss=loss,
            logits=logits,
            embeddings=embeddings,
            features_before_neck=before,
            features_after_neck=after,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class PassViTBackbone(BackboneMixin, PassViTEncoderModel):
    """Feature maps (B, D, H/p, W/p) of selected blocks, after the final norm, for dense-prediction heads.

    Example:
        >>> import torch, pass_hub
        >>> config = pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        ...                                 out_features=["stage1", "stage2"])
        >>> maps = pass_hub.PassViTBackbone(config)(torch.randn(1, 3, 256, 128)).feature_maps
        >>> [tuple(m.shape) for m in maps]
        [(1, 64, 16, 8), (1, 64, 16, 8)]
    """

    def __init__(self, config: PassViTConfig) -> None:
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        config = self.config
        output_hidden_states, output_attentions, return_dict = self._output_flags(
            output_hidden_states, output_attentions, return_dict
        )
        self._check_pixel_values(pixel_values)
        self.sync_attention()
        tokens = self.vit.forward_tokens(pixel_values, output_hidden_states=True, output_attentions=output_attentions)
        batch = pixel_values.shape[0]
        height, width = (side // config.patch_size for side in pixel_values.shape[-2:])
        prefix = self.vit.num_prefix_tokens
        feature_maps = tuple(
            self.vit.norm(hidden)[:, prefix:].reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
            for stage, hidden in zip(self.stage_names, tokens.hidden_states, strict=True)
            if stage in self.out_features
        )
        output = BackboneOutput(
            feature_maps=feature_maps,
            hidden_states=tokens.hidden_states if output_hidden_states else None,
            attentions=tokens.attentions,
        )
        return output if return_dict else output.to_tuple()
