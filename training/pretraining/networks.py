"""The PASS pre-training networks: :class:`PartAwareDINO`, a part-aware backbone with its four DINO heads, as
student or teacher. A forward batches the work: both global views go through the backbone in one pass, all local
views (of every stripe) in one more (their sequences have the same length: CLS, PART_k, patches), and each head is
applied once to the stacked outputs of its token type. With ``use_parts=False`` the same network is plain DINO,
the ablation of the method: no view carries a [PART] token, only the CLS head exists and the loss keeps its CLS
terms.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from pass_hub.models.backbone import PassVisionTransformer, backbone_architecture
from pass_hub.models.convert import split_as_original
from training.pretraining.heads import PartAwareHeads

if TYPE_CHECKING:
    from training.engine.recipes import PretrainSettings

PATCH_SIZE = 16  # every PASS model's


class StudentOutputs(NamedTuple):
    global_out: torch.Tensor  # (1 + S, 2B, K): CLS, PART1..S head outputs of both global views
    local_cls: torch.Tensor  # (L, K): CLS head outputs of the local views, in input order
    local_part: torch.Tensor | None  # (L, K): PART_k head outputs of the local views (k = each view's stripe)


class PartAwareDINO(nn.Module):
    """Backbone + per-token-type heads; the student sees global and local views, the teacher global views only.

    Example:
        >>> backbone = PassVisionTransformer(
        ...     img_size=(64, 32), embed_dim=32, depth=1, num_heads=1, dynamic_img_size=True
        ... )
        >>> model = PartAwareDINO(backbone, PartAwareHeads(32, 16, hidden_dim=8, bottleneck_dim=8))
        >>> out = model(torch.randn(4, 3, 64, 32), torch.randn(6, 3, 32, 16), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> out.global_out.shape, out.local_cls.shape, out.local_part.shape
        (torch.Size([4, 4, 16]), torch.Size([6, 16]), torch.Size([6, 16]))
    """

    def __init__(self, backbone: PassVisionTransformer, heads: PartAwareHeads, use_parts: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.num_parts = backbone.num_parts if use_parts else 0
        if len(heads.heads) != 1 + self.num_parts:
            raise ValueError(f"{len(heads.heads)} heads for {self.num_parts} [PART] tokens; need 1 + num_parts")

    def forward(
        self,
        global_views: torch.Tensor,
        local_views: torch.Tensor | None = None,
        local_stripes: torch.Tensor | None = None,
    ) -> StudentOutputs | torch.Tensor:
        """Head outputs; with only ``global_views`` (the teacher) a (1 + S, 2B, K) tensor."""
        if self.num_parts:
            global_tokens = self.backbone.forward_features(global_views)[:, : 1 + self.num_parts]
        else:
            global_tokens = self.backbone.forward_local(global_views, None)[:, :1]
        if local_views is None:
            return torch.stack([self.heads.apply_head(t, global_tokens[:, t]) for t in range(1 + self.num_parts)])
        if local_stripes is None or local_stripes.shape[0] != local_views.shape[0]:
            raise ValueError("local_stripes must give the stripe of every local view")
        local_tokens = self.backbone.forward_local(local_views, local_stripes if self.num_parts else None)
        num_global = global_tokens.shape[0]
        cls_out = self.heads.apply_head(0, torch.cat([global_tokens[:, 0], local_tokens[:, 0]]))
        global_out = [cls_out[:num_global]]
        if not self.num_parts:
            return StudentOutputs(torch.stack(global_out), cls_out[num_global:], None)
        local_part = cls_out.new_empty(cls_out[num_global:].shape)
        for part in range(self.num_parts):
            rows = local_stripes == part
            out = self.heads.apply_head(1 + part, torch.cat([global_tokens[:, 1 + part], local_tokens[rows, 1]]))
            global_out.append(out[:num_global])
            local_part[rows] = out[num_global:]
        return StudentOutputs(torch.stack(global_out), cls_out[num_global:], local_part)


def init_tokens_as_original(backbone: PassVisionTransformer) -> None:
    """The token initialisation of the original pre-training code: CLS and [PART] tokens and every position
    vector truncated-normal with std 0.02, except the CLS position, which starts at zero (timm instead draws the
    tokens from N(0, 1e-6) and the whole position table, CLS position included, with std 0.02).

    Example:
        >>> backbone = PassVisionTransformer(img_size=(64, 32), embed_dim=16, depth=1, num_heads=1)
        >>> init_tokens_as_original(backbone)
        >>> bool(backbone.pos_embed[0, 0].eq(0).all()), 0.005 < float(backbone.reg_token.detach().std()) < 0.05
        (True, True)
    """
    with torch.no_grad():
        for tensor in (backbone.cls_token, backbone.reg_token, backbone.pos_embed):
            nn.init.trunc_normal_(tensor, std=0.02)
        backbone.pos_embed[:, 0].zero_()


def new_network(
    settings: PretrainSettings, drop_path_rate: float, trained_size: tuple[int, int] | None = None
) -> PartAwareDINO:
    """A student (or, with ``drop_path_rate=0``, teacher) network with fresh weights for ``settings``.

    ``trained_size`` is the input the position table is laid out for (default: the global views' size); a
    network continued from a checkpoint keeps the checkpoint's.
    """
    backbone = PassVisionTransformer(
        img_size=tuple(trained_size or settings.image_size),
        patch_size=PATCH_SIZE,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        pos_embed_resampling=settings.pos_embed_resampling,
        **backbone_architecture(settings.preset),
    )
    if settings.token_init == "original":
        init_tokens_as_original(backbone)
    num_parts = backbone.num_parts if settings.part_tokens else 0
    heads = PartAwareHeads(backbone.embed_dim, settings.out_dim, settings.head_hidden_dim,
                           settings.head_bottleneck_dim, num_parts)
    return PartAwareDINO(backbone, heads, use_parts=settings.part_tokens)


def new_networks(settings: PretrainSettings) -> tuple[PartAwareDINO, PartAwareDINO]:
    """Student and teacher for ``settings``; the teacher starts as a copy of the student and has no gradients."""
    student = new_network(settings, settings.drop_path_rate)
    teacher = new_network(settings, 0.0)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def gradients_as_original_tensors(network: PartAwareDINO) -> list[torch.Tensor]:
    """The network's gradients cut as the original code's tensors, for per-tensor clipping: ``reg_token`` is
    ``part_token1..3`` and ``pos_embed`` is ``cls_pos``, ``part1_pos..part3_pos`` and the patch table there, so
    their gradients are clipped row by row (views); every other gradient whole.

    Example:
        >>> backbone = PassVisionTransformer(img_size=(32, 16), embed_dim=8, depth=1, num_heads=1)
        >>> network = PartAwareDINO(backbone, PartAwareHeads(8, 4, hidden_dim=4, bottleneck_dim=4))
        >>> network.backbone.pos_embed.grad = torch.ones_like(network.backbone.pos_embed)
        >>> [tuple(g.shape) for g in gradients_as_original_tensors(network)]
        [(1, 1, 8), (1, 1, 8), (1, 1, 8), (1, 1, 8), (1, 2, 8)]
    """
    parts = network.backbone.num_parts
    gradients = []
    for name, param in network.named_parameters():
        if param.grad is None:
            continue
        backbone_key = name.removeprefix("backbone.")
        gradients += split_as_original(backbone_key, param.grad, parts) if backbone_key != name else [param.grad]
    return gradients
