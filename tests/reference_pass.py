"""An independent reference of the original PASS formulation, written from the spec for the exactness tests.

Deliberately plain and separate from ``pass_hub``: the original key names (``part_token1``, ``cls_pos``,
``part1_pos``, a patch-only ``pos_embed``), plain softmax attention, and the original checkpoint layouts.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

PARTS = 3


class ReferenceAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, length, dim))


class ReferenceMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ReferenceBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ReferenceAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ReferenceMlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferencePatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class ReferencePassViT(nn.Module):
    """The original PASS backbone layout with randomised (non-trivial) parameters."""

    def __init__(self, dim: int = 128, depth: int = 2, heads: int = 2, grid: tuple[int, int] = (16, 8)) -> None:
        super().__init__()
        self.grid = grid
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        for k in range(1, PARTS + 1):
            setattr(self, f"part_token{k}", nn.Parameter(torch.randn(1, 1, dim) * 0.5))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        for k in range(1, PARTS + 1):
            setattr(self, f"part{k}_pos", nn.Parameter(torch.randn(1, 1, dim) * 0.5))
        self.pos_embed = nn.Parameter(torch.randn(1, grid[0] * grid[1], dim) * 0.5)
        self.patch_embed = ReferencePatchEmbed(dim, 16)
        self.blocks = nn.ModuleList(ReferenceBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        with torch.no_grad():  # non-trivial norms so that a swapped weight/bias would show
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0, 0.1)

    def part_token(self, k: int) -> torch.Tensor:
        return getattr(self, f"part_token{k + 1}")

    def part_pos(self, k: int) -> torch.Tensor:
        return getattr(self, f"part{k + 1}_pos")

    def patch_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        table = self.pos_embed.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bilinear")
        return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens [CLS, P1, P2, P3, patches] after the final norm."""
        patches = self.patch_embed.proj(images)
        grid = tuple(patches.shape[-2:])
        patches = patches.flatten(2).transpose(1, 2) + self.patch_pos(grid)
        batch = images.shape[0]
        prefix = [self.cls_token + self.cls_pos] + [self.part_token(k) + self.part_pos(k) for k in range(PARTS)]
        prefix = torch.cat(prefix, dim=1).expand(batch, -1, -1)
        return self._encode(torch.cat([prefix, patches], dim=1))

    def forward_local(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """Local view of stripe k: [CLS, PART_k, patches] after the final norm."""
        patches = self.patch_embed.proj(images)
        grid = tuple(patches.shape[-2:])
        patches = patches.flatten(2).transpose(1, 2) + self.patch_pos(grid)
        batch = images.shape[0]
        prefix = torch.cat([self.cls_token + self.cls_pos, self.part_token(k) + self.part_pos(k)], dim=1)
        return self._encode(torch.cat([prefix.expand(batch, -1, -1), patches], dim=1))


def reid_embedding(tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokens[:, 0], tokens[:, 1 : 1 + PARTS].mean(dim=1)], dim=1)


class ReferenceReID(nn.Module):
    """The original fine-tuned model layout: ``base`` + four BN necks + bias-free classifier."""

    def __init__(self, base: ReferencePassViT, num_ids: int) -> None:
        super().__init__()
        dim = base.cls_token.shape[-1]
        self.base = base
        self.base.fc = nn.Linear(dim, 1000)  # present in the released files, never used
        self.classifier = nn.Linear(2 * dim, num_ids, bias=False)
        self.bottleneck = nn.BatchNorm1d(dim)
        for k in range(1, PARTS + 1):
            setattr(self, f"bottleneck_{k}", nn.BatchNorm1d(dim))
        with torch.no_grad():
            for k, neck in enumerate(self.necks()):
                neck.weight.uniform_(0.5, 1.5)
                neck.running_mean.normal_(0, 0.3)
                neck.running_var.uniform_(0.5, 2.0)
                neck.num_batches_tracked.fill_(100 + k)

    def necks(self) -> list[nn.BatchNorm1d]:
        return [self.bottleneck] + [getattr(self, f"bottleneck_{k}") for k in range(1, PARTS + 1)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature before necks, feature after necks, logits) in eval mode."""
        tokens = self.base(images)
        necks = self.necks()
        after = torch.cat(
            [necks[0](tokens[:, 0]), torch.stack([necks[k + 1](tokens[:, 1 + k]) for k in range(PARTS)]).mean(0)],
            dim=1,
        )
        return reid_embedding(tokens), after, self.classifier(after)


def pretraining_checkpoint(teacher: ReferencePassViT, student: ReferencePassViT) -> dict:
    """A DINO-style PASS ``checkpoint.pth`` dict (teacher ``backbone.*``, student ``module.backbone.*``)."""
    dim = teacher.cls_token.shape[-1]

    def head_state() -> dict[str, torch.Tensor]:
        return {
            "mlp.0.weight": torch.randn(32, dim),
            "mlp.0.bias": torch.randn(32),
            "last_layer.weight_g": torch.ones(64, 1),
        }

    return {
        "student": {
            **{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
            **{f"module.head.{k}": v for k, v in head_state().items()},
        },
        "teacher": {
            **{f"backbone.{k}": v for k, v in teacher.state_dict().items()},
            **{f"head.{k}": v for k, v in head_state().items()},
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", lr=0.0005, local_crops_number=9, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 64), "center1": torch.zeros(1, 64)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }
