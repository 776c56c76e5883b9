"""Student and teacher networks of PASS pre-training: a part-aware backbone and its four DINO heads.

A forward batches the work: both global views go through the backbone in one pass, all local views (of every
stripe) in one more (their sequences have the same length: CLS, PART_k, patches), and each head is applied
once to the stacked outputs of its token type.

With ``use_parts=False`` the same network is plain DINO, the ablation of the method: no view carries a [PART]
token, only the CLS head exists and the loss keeps its CLS terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from pass_hub.backbone import PassVisionTransformer

from .heads import PartAwareHeads


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
