"""DINO projection heads, one per token type (CLS, PART1, PART2, PART3), as PASS uses them (spec §3).

Each head: Linear(D, 2048)-GELU-Linear(2048, 2048)-GELU-Linear(2048, 256) -> L2 normalise -> a weight-normalised
Linear(256, K, no bias) whose norm (the weight-norm "g") is frozen at 1.

Example:
    >>> heads = PartAwareHeads(in_dim=64, out_dim=128, hidden_dim=32, bottleneck_dim=16, num_parts=3)
    >>> heads.apply_head(0, torch.randn(5, 64)).shape
    torch.Size([5, 128])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP projector + L2 normalisation + weight-normalised prototype layer with the norm frozen at 1."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # Prototype norms fixed at 1: only the directions are learned, as in DINO.
        original0 = self.last_layer.parametrizations.weight.original0
        original0.data.fill_(1.0)
        original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class PartAwareHeads(nn.Module):
    """Head 0 for CLS outputs and head k for PART_k outputs; output k of any view always goes through head k."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, num_parts: int = 3
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.heads = nn.ModuleList(
            DINOHead(in_dim, out_dim, hidden_dim, bottleneck_dim) for _ in range(1 + num_parts)
        )

    def apply_head(self, token_type: int, features: torch.Tensor) -> torch.Tensor:
        return self.heads[token_type](features)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The trainable prototype directions, frozen during the first epoch."""
        return [head.last_layer.parametrizations.weight.original1 for head in self.heads]
