"""An independent reference of the original PASS formulation, written from the spec for the exactness tests.

Deliberately plain and separate from ``pass_hub``: the original key names (``part_token1``, ``cls_pos``,
``part1_pos``, a patch-only ``pos_embed``), plain softmax attention, and the original checkpoint layouts.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
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

    def __init__(
        self, dim: int = 128, depth: int = 2, heads: int = 2, grid: tuple[int, int] = (16, 8),
        pretraining_positions: bool = False,
    ) -> None:
        super().__init__()
        self.grid = grid
        # The original pre-training code: the patch table resampled bicubically with the +0.1 scale factor on every
        # forward, even at the trained grid (docs/recipes.md section 1, "pos-emb").
        self.pretraining_positions = pretraining_positions
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
        table = self.pos_embed.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        if self.pretraining_positions:
            scale = ((grid[0] + 0.1) / self.grid[0], (grid[1] + 0.1) / self.grid[1])
            table = F.interpolate(table, scale_factor=scale, mode="bicubic", align_corners=False,
                                  recompute_scale_factor=False)
            return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        if grid == self.grid:
            return self.pos_embed
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
                neck.bias.requires_grad_(False)  # frozen at 0 in the original
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


class ReferenceMultiHead(nn.Module):
    """The original PASS head: one module with a branch per token type, ``mlp_cls`` / ``mlp_pt1..3`` (Linear-GELU-
    Linear-GELU-Linear) and weight-normalised ``last_layer_cls`` / ``last_layer_pt1..3`` with ``weight_g`` fixed."""

    def __init__(self, dim: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.branches = ["cls", *(f"pt{k}" for k in range(1, PARTS + 1))]
        for branch in self.branches:
            mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                nn.Linear(hidden, bottleneck))
            setattr(self, f"mlp_{branch}", mlp)
            with warnings.catch_warnings():  # the deprecated form is the one with the original's key names
                warnings.simplefilter("ignore", FutureWarning)
                last = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
            last.weight_g.data.fill_(1.0)
            last.weight_g.requires_grad = False
            setattr(self, f"last_layer_{branch}", last)

    def branch(self, index: int, features: torch.Tensor) -> torch.Tensor:
        name = self.branches[index]
        hidden = F.normalize(getattr(self, f"mlp_{name}")(features), dim=-1)
        return getattr(self, f"last_layer_{name}")(hidden)


class ReferencePassDINO(nn.Module):
    """Backbone + head as the original's ``MultiCropWrapper``: state-dict keys ``backbone.*`` and ``head.*``."""

    def __init__(self, backbone: ReferencePassViT, head: ReferenceMultiHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def global_outputs(self, view: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.backbone(view)
        return [self.head.branch(t, tokens[:, t]) for t in range(1 + PARTS)]

    def local_outputs(self, view: torch.Tensor, stripe: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.backbone.forward_local(view, stripe)
        return self.head.branch(0, tokens[:, 0]), self.head.branch(1 + stripe, tokens[:, 1])


def original_param_groups(model: nn.Module) -> list[dict]:
    """The original's AdamW groups: 0 = not a bias and not 1-D (scheduled weight decay), 1 = the rest (none)."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (not_regularized if name.endswith(".bias") or param.ndim == 1 else regularized).append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def reference_pretraining_step(
    student: ReferencePassDINO,
    teacher: ReferencePassDINO,
    centers: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    global_views: list[torch.Tensor],
    local_views: list[torch.Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    teacher_temp: float,
    epoch: int,
    student_temp: float = 0.1,
    center_momentum: float = 0.9,
    clip_grad: float = 3.0,
    freeze_last_layer: int = 1,
) -> tuple[float, list[torch.Tensor]]:
    """One iteration of the original ``train_one_epoch`` as docs/recipes.md section 1 states it, on the original
    layout; ``local_views`` come stripe by stripe. Returns the loss and the new centers."""
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if index == 0:
            group["weight_decay"] = weight_decay
    with torch.no_grad():
        teacher_out = [teacher.global_outputs(view) for view in global_views]
    student_global = [student.global_outputs(view) for view in global_views]
    crops = len(local_views) // PARTS
    student_local = [student.local_outputs(view, index // crops) for index, view in enumerate(local_views)]

    def term(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return -(target * F.log_softmax(output / student_temp, dim=-1)).sum(-1).mean()

    terms = []
    for i in range(2):
        targets = [F.softmax((teacher_out[i][t] - centers[t]) / teacher_temp, dim=-1) for t in range(1 + PARTS)]
        for j in range(2):
            if j != i:
                terms += [term(targets[t], student_global[j][t]) for t in range(1 + PARTS)]
        for index, (cls_out, part_out) in enumerate(student_local):
            terms += [term(targets[0], cls_out), term(targets[1 + index // crops], part_out)]
    loss = torch.stack(terms).mean()
    new_centers = [
        centers[t] * center_momentum + torch.cat([out[t] for out in teacher_out]).mean(0, keepdim=True)
        * (1 - center_momentum)
        for t in range(1 + PARTS)
    ]
    optimizer.zero_grad()
    loss.backward()
    for param in student.parameters():
        if param.grad is not None:
            coefficient = clip_grad / (param.grad.norm(2) + 1e-6)
            if coefficient < 1:
                param.grad.mul_(coefficient)
    if epoch < freeze_last_layer:
        for name, param in student.named_parameters():
            if "last_layer" in name:
                param.grad = None
    optimizer.step()
    with torch.no_grad():
        for student_param, teacher_param in zip(student.parameters(), teacher.parameters(), strict=True):
            teacher_param.mul_(momentum).add_((1 - momentum) * student_param.detach())
    return loss.item(), new_centers


def original_pretraining_checkpoint(
    student: ReferencePassDINO, teacher: ReferencePassDINO, centers: list[torch.Tensor],
    optimizer: torch.optim.Optimizer, epoch: int, arch: str = "vit_tiny",
) -> dict:
    """``checkpoint.pth`` exactly as ``main_pass.py`` saves it (student DDP-wrapped, so ``module.``-prefixed)."""
    return {
        "student": {f"module.{k}": v.clone() for k, v in student.state_dict().items()},
        "teacher": {k: v.clone() for k, v in teacher.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "args": argparse.Namespace(arch=arch, out_dim=centers[0].shape[-1], local_crops_number=9),
        "dino_loss": {name: c.clone() for name, c in zip(("center_cls", "center_pt1", "center_pt2", "center_pt3"),
                                                          centers, strict=True)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                        "_growth_tracker": 0},
    }


def reference_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Batch-hard triplet, one anchor at a time: farthest positive, closest negative (Euclidean); soft margin
    ``log(1 + exp(d_ap - d_an))`` when ``margin`` is None."""
    losses = []
    for anchor in range(len(labels)):
        same = [j for j in range(len(labels)) if labels[j] == labels[anchor] and j != anchor]
        other = [j for j in range(len(labels)) if labels[j] != labels[anchor]]
        positives = [torch.dist(features[anchor], features[j]) for j in same]
        negatives = [torch.dist(features[anchor], features[j]) for j in other]
        gap = max(positives) - min(negatives)
        losses.append(torch.log1p(torch.exp(gap)) if margin is None else torch.clamp(gap + margin, min=0))
    return torch.stack(losses).mean()


def original_finetuning_groups(
    model: ReferenceReID, lr: float, weight_decay: float, bias_lr_factor: float, weight_decay_bias: float
) -> list[dict]:
    """The original's SGD groups (docs/recipes.md section 2, optimizer): one per trainable tensor, a name holding "bias"
    at ``bias_lr_factor`` x lr and ``weight_decay_bias``; each group remembers its name and peak."""
    groups = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            bias = "bias" in name
            groups.append({"params": [param], "name": name, "peak": lr * (bias_lr_factor if bias else 1.0),
                           "weight_decay": weight_decay_bias if bias else weight_decay})
    return groups


def original_finetuning_lr(base: float, peak: float, t: int, epochs: int, warmup: int) -> float:
    """docs/recipes.md, disagreement 1: epoch t (0-based) of a group peaking at ``peak``; start 0.01b, floor 0.002b."""
    if t < warmup:
        return 0.01 * base + t * (peak - 0.01 * base) / warmup
    return 0.002 * base + 0.5 * (peak - 0.002 * base) * (1 + math.cos(math.pi * t / epochs))


def reference_finetuning_step(
    model: ReferenceReID, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
    learning_rates: list[float],
) -> tuple[float, float]:
    """One iteration of the original ``do_train`` as docs/recipes.md section 2 states it, train mode, fp32: group lrs,
    zero_grad, forward, cross-entropy on the classifier's scores of cat(BN(CLS), BN_k(P_k)/3 summed) plus the
    soft-margin batch-hard triplet on cat(CLS, P_k/3 summed), backward, SGD step. Returns (CE, triplet)."""
    model.train()
    for group, lr in zip(optimizer.param_groups, learning_rates, strict=True):
        group["lr"] = lr
    optimizer.zero_grad()
    tokens = model.base(images)
    necks = model.necks()
    parts = [tokens[:, 1 + k] for k in range(PARTS)]
    before = torch.cat([tokens[:, 0], parts[0] / 3 + parts[1] / 3 + parts[2] / 3], dim=1)
    after_parts = [necks[1 + k](parts[k]) for k in range(PARTS)]
    after = torch.cat([necks[0](tokens[:, 0]), after_parts[0] / 3 + after_parts[1] / 3 + after_parts[2] / 3], dim=1)
    cross_entropy = F.cross_entropy(model.classifier(after), labels)
    triplet = reference_triplet(before, labels, margin=None)
    (cross_entropy + triplet).backward()
    optimizer.step()
    return cross_entropy.item(), triplet.item()


class ReferenceClusterContrast(nn.Module):
    """The original cluster-contrast model (docs/recipes.md section 3, neck and output): the backbone, BatchNorm necks
    ``bottleneck`` (+ ``bottleneck_pt1..3`` with ``multi_neck``), biases frozen, and its one output in train and eval
    mode: each neck's output L2-normalised, fused by ``fusion`` (``cat`` / ``mean``) as it is."""

    def __init__(self, base: ReferencePassViT, multi_neck: bool, fusion: str) -> None:
        super().__init__()
        dim = base.cls_token.shape[-1]
        self.base, self.multi_neck, self.fusion = base, multi_neck, fusion
        if multi_neck:
            self.bottleneck = nn.BatchNorm1d(dim)
            for k in range(1, PARTS + 1):
                setattr(self, f"bottleneck_pt{k}", nn.BatchNorm1d(dim))
        else:
            self.bottleneck = nn.BatchNorm1d(2 * dim if fusion == "cat" else dim)
        with torch.no_grad():
            for k, neck in enumerate(self.necks()):
                neck.bias.requires_grad_(False)
                neck.weight.uniform_(0.5, 1.5)
                neck.running_mean.normal_(0, 0.3)
                neck.running_var.uniform_(0.5, 2.0)
                neck.num_batches_tracked.fill_(7 + k)

    def necks(self) -> list[nn.BatchNorm1d]:
        return [self.bottleneck] + [getattr(self, f"bottleneck_pt{k}") for k in range(1, PARTS + 1) if self.multi_neck]

    def _fuse(self, cls: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
        part = parts[0] / 3.0 + parts[1] / 3.0 + parts[2] / 3.0
        return torch.cat([cls, part], dim=1) if self.fusion == "cat" else (cls + part) / 2.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.base(images)
        cls, parts = tokens[:, 0], [tokens[:, 1 + k] for k in range(PARTS)]
        if self.multi_neck:
            necks = self.necks()
            return self._fuse(F.normalize(necks[0](cls)), [F.normalize(necks[1 + k](parts[k])) for k in range(PARTS)])
        return F.normalize(self.bottleneck(self._fuse(cls, parts)))

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """Names as the original saves them (``model.state_dict()`` of its DataParallel wrapper)."""
        return {f"module.{key.removeprefix('base.')}": value.detach().clone()
                for key, value in self.state_dict().items()}


def original_cluster_contrast_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    """docs/recipes.md section 3, optimiser: one SGD group per trainable tensor, one lr and weight decay for all."""
    params = [{"params": [value]} for _, value in model.named_parameters() if value.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def original_cluster_centroids(features: torch.Tensor, labels) -> torch.Tensor:
    """docs/recipes.md section 3, memory init: the L2-normalised mean of each cluster's features, clusters in order."""
    clusters = sorted({int(label) for label in labels if label != -1})
    return F.normalize(torch.stack([features[[i for i in range(len(labels)) if labels[i] == c]].mean(0)
                                    for c in clusters]), dim=1)


def reference_cluster_contrast_step(
    model: ReferenceClusterContrast, optimizer: torch.optim.Optimizer, memory: torch.Tensor, images: torch.Tensor,
    labels: torch.Tensor, lr: float, temperature: float = 0.05, momentum: float = 0.2, hard: bool = True,
) -> float:
    """One iteration of the original cluster-contrast training (docs/recipes.md section 3, memory): train mode,
    fp32, the epoch's lr on every group, logits of the normalised output against the memory / temperature,
    cross-entropy, backward, the memory update (``hard``: per cluster its member with the lowest cosine to the
    centroid, clusters in order of first appearance; else every member in batch order), SGD step. ``memory`` changes
    in place."""
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs = F.normalize(model(images), dim=1)
    loss = F.cross_entropy(inputs.mm(memory.t()) / temperature, labels)
    optimizer.zero_grad()
    loss.backward()
    with torch.no_grad():
        inputs = inputs.detach()
        if hard:
            members: dict[int, list[torch.Tensor]] = {}
            for feature, label in zip(inputs, labels.tolist(), strict=True):
                members.setdefault(label, []).append(feature)
            for label, features in members.items():
                cosines = [float(feature @ memory[label]) for feature in features]
                hardest = features[cosines.index(min(cosines))]
                memory[label] = memory[label] * momentum + (1 - momentum) * hardest
                memory[label] /= memory[label].norm()
        else:
            for feature, label in zip(inputs, labels.tolist(), strict=True):
                memory[label] = momentum * memory[label] + (1.0 - momentum) * feature
                memory[label] /= memory[label].norm()
    optimizer.step()
    return loss.item()


def reference_cluster_contrast_jaccard(features: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """docs/recipes.md section 3, "Jaccard distance", as plain loops over float64 features taken as they are:
    neighbours ranked by squared Euclidean distance (faiss IndexFlatL2), weights softmax(-(2 - 2 f_i.f_j)) over the
    expanded set."""
    n = len(features)
    squared = (features**2).sum(axis=1)
    ranked = np.argsort(squared[:, None] + squared[None, :] - 2 * features @ features.T, axis=1, kind="stable")
    distance = 2 - 2 * features @ features.T
    lists = ranked[:, :k1]  # exactly k1 entries, the image itself included

    def reciprocal(i: int, length: int) -> set[int]:
        return {j for j in lists[i, :length] if i in lists[j, :length]}

    half = round(k1 / 2) + 1
    weights = np.zeros((n, n))
    for i in range(n):
        own = reciprocal(i, k1)
        expanded = set(own)
        for candidate in own:
            candidate_set = reciprocal(candidate, half)
            if len(candidate_set & own) > 2 / 3 * len(candidate_set):
                expanded |= candidate_set
        members = sorted(expanded)
        logits = -distance[i, members]
        weights[i, members] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    if k2 > 1:
        weights = np.stack([weights[ranked[i, :k2]].mean(axis=0) for i in range(n)])
    shared = np.minimum(weights[:, None, :], weights[None, :, :]).sum(axis=2)
    return np.maximum(1 - shared / (2 - shared), 0)
