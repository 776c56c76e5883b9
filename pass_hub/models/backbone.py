"""The part-aware Vision Transformer of PASS: the one backbone behind every pass-hub entry point.

Token layout: ``[CLS, PART1, PART2, PART3, patch_0 ... patch_{N-1}]`` (PART1 = top, PART3 = bottom of the
person), each token with its own learned position vector added to it. This is timm's
``VisionTransformer(class_token=True, reg_tokens=3, no_embed_class=False)`` with the register tokens acting
as [PART] tokens, so the block parameter names are timm's (and the original PASS code's).

What this class adds to timm's ViT:

* ``global_pool="pass"``: the ReID embedding ``cat(CLS, mean(PART1..3))`` of size ``2 * embed_dim``
  (``"pass_mean"``: ``(CLS + mean(PART1..3)) / 2``, of size ``embed_dim``, the original's ``mean`` fusion);
* position tables resampled with a configurable mode that keeps the prefix positions (bilinear, as the
  original fine-tuning code does when it moves from 16x8 to 24x8 patches);
* :meth:`PassVisionTransformer.forward_local`: the pre-training forward of a local view, whose tokens are
  ``[CLS, PART_k, patches]``;
* :meth:`PassVisionTransformer.forward_tokens`: hidden states of every block and real attention maps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer, global_pool_nlc, init_weights_vit_timm
from torch import nn

PASS_POOL = "pass"
# timm global_pool names of the two ways the original combines CLS with the mean [PART] token.
PASS_POOLS = {PASS_POOL: "cat", "pass_mean": "mean"}
FUSIONS = tuple(PASS_POOLS.values())
POS_EMBED_RESAMPLING = ("as_needed", "original")

# Architecture hyper-parameters of the presets; every entry point (timm factories, PassViTConfig presets,
# checkpoint conversion) reads them from here.
PRESETS: dict[str, dict] = {
    "pass_vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "pass_vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "pass_vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}
REID_IMAGE_SIZE = (256, 128)
ARCHITECTURE_KEYS = ("embed_dim", "depth", "num_heads")


def backbone_architecture(name: str) -> dict[str, int]:
    """``embed_dim``, ``depth`` and ``num_heads`` of a preset (``pass_vit_small`` or ``small``) or of a written-out
    architecture ``"embed_dim=D,depth=L,num_heads=H"`` (what :func:`architecture_name` gives for any other ViT).

    Example:
        >>> backbone_architecture("small"), backbone_architecture("embed_dim=48,depth=2,num_heads=2")
        ({'embed_dim': 384, 'depth': 12, 'num_heads': 6}, {'embed_dim': 48, 'depth': 2, 'num_heads': 2})
    """
    key = name if name in PRESETS else f"pass_vit_{name}"
    if key in PRESETS:
        return dict(PRESETS[key])
    fields = dict(item.partition("=")[::2] for item in name.replace(" ", "").split(","))
    if set(fields) != set(ARCHITECTURE_KEYS) or not all(value.isdigit() for value in fields.values()):
        raise ValueError(f"unknown backbone {name!r}: expected one of {sorted(PRESETS)} or "
                         "'embed_dim=D,depth=L,num_heads=H'")
    arch = {key: int(fields[key]) for key in ARCHITECTURE_KEYS}
    if min(arch.values()) < 1 or arch["embed_dim"] % arch["num_heads"]:
        raise ValueError(f"backbone {name!r}: need positive values and embed_dim divisible by num_heads")
    return arch


def architecture_name(embed_dim: int, depth: int, num_heads: int) -> str:
    """The preset of this ViT shape, or the shape written out for :func:`backbone_architecture`.

    Example:
        >>> architecture_name(192, 12, 3), architecture_name(48, 2, 2)
        ('pass_vit_tiny', 'embed_dim=48,depth=2,num_heads=2')
    """
    arch = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
    found = next((name for name, preset in PRESETS.items() if preset == arch), None)
    return found or ",".join(f"{key}={value}" for key, value in arch.items())


class TokenOutputs(NamedTuple):
    """Result of :meth:`PassVisionTransformer.forward_tokens`."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


def attention_with_probs(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused multi-head self-attention of a timm ``Attention`` module that also returns its probabilities.

    The fused kernel does not expose the attention matrix, which part-attention pictures need.

    Returns:
        The module's output (B, N, C) and the attention probabilities (B, heads, N, N).
    """
    batch, length, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = attn.norm((attn.attn_drop(probs) @ v).transpose(1, 2).reshape(batch, length, attn.attn_dim))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), probs


def block_with_attention(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm pre-norm ``Block`` forward that also returns the attention probabilities of its attention."""
    attn_out, probs = attention_with_probs(block.attn, block.norm1(x))
    x = x + block.drop_path1(block.ls1(attn_out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, probs


class PassVisionTransformer(VisionTransformer):
    """ViT with a CLS token and ``num_parts`` [PART] tokens (PASS, ECCV 2022).

    Args:
        num_parts: Number of [PART] tokens (3 in PASS: top, middle, bottom).
        pos_embed_interpolation: ``F.interpolate`` mode used when the patch grid differs from the one the
            position table was learned for. The prefix (CLS and PART) positions are never resampled.
        pos_embed_resampling: ``"as_needed"``: the patch position table as learned at its own grid, resampled
            with ``pos_embed_interpolation`` for other grids; ``"original"``: what the original pre-training
            code does on every forward, whatever the grid (:func:`original_pretraining_pos_embed`).
        global_pool: ``"pass"`` for the ReID embedding ``cat(CLS, mean(PARTs))`` (2 x embed_dim), ``"pass_mean"``
            for ``(CLS + mean(PARTs)) / 2`` (embed_dim), or any pooling timm's ViT supports.
        **kwargs: Passed to timm's ``VisionTransformer``.

    Example:
        >>> model = PassVisionTransformer(img_size=(256, 128), embed_dim=64, depth=2, num_heads=2, num_classes=0)
        >>> model(torch.randn(2, 3, 256, 128)).shape
        torch.Size([2, 128])
    """

    def __init__(
        self,
        *,
        num_parts: int = 3,
        pos_embed_interpolation: str = "bilinear",
        pos_embed_resampling: str = "as_needed",
        global_pool: str = PASS_POOL,
        num_classes: int = 0,
        **kwargs,
    ) -> None:
        for fixed in ("class_token", "reg_tokens", "no_embed_class"):
            if fixed in kwargs:
                raise ValueError(f"PassVisionTransformer fixes {fixed!r}; use num_parts to set the [PART] tokens")
        if pos_embed_resampling not in POS_EMBED_RESAMPLING:
            raise ValueError(f"pos_embed_resampling={pos_embed_resampling!r}; expected one of {POS_EMBED_RESAMPLING}")
        super().__init__(
            class_token=True,
            reg_tokens=num_parts,
            no_embed_class=False,
            global_pool="token" if global_pool in PASS_POOLS else global_pool,
            num_classes=num_classes,
            **kwargs,
        )
        self.num_parts = num_parts
        self.pos_embed_interpolation = pos_embed_interpolation
        self.pos_embed_resampling = pos_embed_resampling
        if global_pool in PASS_POOLS:
            self.reset_classifier(num_classes, global_pool)

    # ------------------------------------------------------------------ heads
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is None and self.global_pool in PASS_POOLS:
            global_pool = self.global_pool
        if global_pool in PASS_POOLS:
            self.num_classes = num_classes
            self.global_pool = global_pool
            self.attn_pool = None
            self.head_hidden_size = (2 if PASS_POOLS[global_pool] == "cat" else 1) * self.embed_dim
            device, dtype = self.cls_token.device, self.cls_token.dtype
            self.head = (
                nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype)
                if num_classes > 0
                else nn.Identity()
            )
            if num_classes > 0 and device.type != "meta":
                init_weights_vit_timm(self.head)
            self.head.train(self.training)
            return
        super().reset_classifier(num_classes, global_pool)
        self.head_hidden_size = self.embed_dim

    # Written for TorchScript too (``torch.jit.script(model)``): no super(), no module-level dicts or strings.
    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "pass":  # PASS_POOL (TorchScript reads no globals)
            return pool_parts(x, self.num_parts, "cat")
        if pool_type == "pass_mean":
            return pool_parts(x, self.num_parts, "mean")
        if self.attn_pool is not None:
            return self.attn_pool(x)
        return global_pool_nlc(x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens)

    # -------------------------------------------------------- position table
    def pos_embed_for_grid(self, grid: list[int]) -> torch.Tensor:
        """The (1, 1 + num_parts + h*w, D) position table for a patch grid; prefix positions kept as learned."""
        if self.pos_embed_resampling == "original":
            return original_pretraining_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size,
                                                  self.num_prefix_tokens)
        return resample_abs_pos_embed(
            self.pos_embed,
            new_size=grid,
            old_size=self.patch_embed.grid_size,
            num_prefix_tokens=self.num_prefix_tokens,
            interpolation=self.pos_embed_interpolation,
            antialias=False,
        )

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            batch, height, width, dim = x.shape
            pos_embed = self.pos_embed_for_grid([height, width])
            x = x.view(batch, -1, dim)
        elif self.pos_embed_resampling == "original":  # resampled even at the trained grid
            pos_embed = self.pos_embed_for_grid(list(self.patch_embed.grid_size))
        else:
            pos_embed = self.pos_embed
        prefix = torch.cat([self.cls_token, self.reg_token], dim=1).expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([prefix, x], dim=1) + pos_embed)

    # --------------------------------------------------------------- forwards
    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_tokens(
        self,
        x: torch.Tensor,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TokenOutputs:
        """Token forward with optional per-block hidden states and attention maps.

        ``hidden_states`` holds the embedding output and the output of every block (before the final norm);
        ``attentions`` the (B, heads, T, T) softmax of every block, computed unfused.
        """
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        if not (output_hidden_states or output_attentions):
            return TokenOutputs(self.norm(self._run_blocks(x)), None, None)
        hidden_states, attentions = [x], []
        for block in self.blocks:
            if output_attentions:
                x, probs = block_with_attention(block, x)
                attentions.append(probs)
            elif self.grad_checkpointing and self.training:  # timm's set_grad_checkpointing
                x = checkpoint(block, x)
            else:
                x = block(x)  # a transformers PassViTLayer checkpoints itself when enabled
            hidden_states.append(x)
        return TokenOutputs(
            self.norm(x),
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )

    def forward_local(self, x: torch.Tensor, part_index: int | torch.Tensor | None) -> torch.Tensor:
        """Pre-training forward of local views: tokens ``[CLS, PART_k, patches]`` (spec §3).

        Each crop carries only the [PART] token of the stripe it was cut from; CLS and PART_k keep their
        own position vectors and the patch positions are resampled to the crop's grid. Crops from different
        stripes can share one batch because their sequences have the same length.

        Args:
            x: (B, C, h, w) crops, any size divisible by the patch size.
            part_index: Stripe of each crop, an int or a (B,) integer tensor with values in [0, num_parts);
                None for no [PART] token at all, ``[CLS, patches]`` (the DINO ablation, for any view).

        Returns:
            (B, 2 + h*w/p^2, D) tokens after the final norm; ``[:, 0]`` is CLS and ``[:, 1]`` is PART_k
            (``(B, 1 + h*w/p^2, D)`` when ``part_index`` is None).
        """
        batch = x.shape[0]
        patches = self.patch_embed.proj(x)
        grid = tuple(patches.shape[-2:])
        patches = self.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        pos_embed = self.pos_embed_for_grid(grid)
        prefix = self.num_prefix_tokens
        tokens = [(self.cls_token + pos_embed[:, :1]).expand(batch, -1, -1)]
        if part_index is not None:
            index = torch.as_tensor(part_index, device=x.device, dtype=torch.long).expand(batch)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_parts):
                raise ValueError(f"part_index must lie in [0, {self.num_parts}); got {index.tolist()}")
            tokens.append((self.reg_token + pos_embed[:, 1:prefix])[0, index].unsqueeze(1))
        x = torch.cat([*tokens, patches + pos_embed[:, prefix:]], dim=1)
        x = self.norm_pre(self.pos_drop(x))
        return self.norm(self._run_blocks(x))


def original_pretraining_pos_embed(
    pos_embed: torch.Tensor, grid: list[int], trained_grid: list[int], num_prefix_tokens: int
) -> torch.Tensor:
    """The position table the original pre-training code adds to a view with a ``grid`` of patches.

    It resamples the patch table bicubically on every forward with the scale factors
    ``((h + 0.1) / H, (w + 0.1) / W)`` (``H x W`` the trained grid), and uses those factors for the sampling
    coordinates: the output has ``h x w`` entries, but even at the trained grid it is a slight resample rather
    than the table itself. The prefix (CLS, PART) positions are kept.

    Example:
        >>> table = torch.randn(1, 4 + 16 * 8, 8)
        >>> same_grid = original_pretraining_pos_embed(table, (16, 8), (16, 8), num_prefix_tokens=4)
        >>> same_grid.shape, torch.equal(same_grid[:, :4], table[:, :4]), torch.equal(same_grid, table)
        (torch.Size([1, 132, 8]), True, False)
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    table = patches.reshape(1, trained_grid[0], trained_grid[1], dim).permute(0, 3, 1, 2)
    scale = [(grid[0] + 0.1) / trained_grid[0], (grid[1] + 0.1) / trained_grid[1]]
    table = F.interpolate(table.float(), scale_factor=scale, mode="bicubic", align_corners=False,
                          recompute_scale_factor=False).to(pos_embed.dtype)
    if table.shape[-2] != grid[0] or table.shape[-1] != grid[1]:
        raise ValueError("the resampled position table does not have the grid's size")
    return torch.cat([prefix, table.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def fuse_tokens(cls: torch.Tensor, parts: torch.Tensor, fusion: str = "cat") -> torch.Tensor:
    """Combine a CLS feature with the mean [PART] feature: ``cat`` (2D values) or ``mean`` (D values)."""
    if fusion == "cat":
        return torch.cat([cls, parts], dim=-1)
    if fusion == "mean":
        return (cls + parts) / 2
    raise ValueError("fusion must be 'cat' or 'mean', got " + fusion)


def pool_parts(tokens: torch.Tensor, num_parts: int = 3, fusion: str = "cat") -> torch.Tensor:
    """The PASS ReID embedding ``cat(CLS, mean(PART_1..PART_n))`` (or their ``mean``) from (B, T, D) tokens."""
    return fuse_tokens(tokens[:, 0], tokens[:, 1 : 1 + num_parts].mean(dim=1), fusion)


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation (the ReID test-time feature)."""
    return F.normalize(features, dim=-1)
