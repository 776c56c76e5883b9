"""Read every PASS weight layout safely and convert it to a pass-hub folder.

Layouts (spec §2):

* ``pretraining``: the DINO-style ``checkpoint.pth`` (``student`` / ``teacher`` / ``optimizer`` / ``args`` ...);
  the backbone kept is the **teacher**'s (``backbone.<key>``);
* ``original_backbone``: the flat backbone (``pass_vit_small_full.pth``) with separate ``part_token1..3``,
  ``cls_pos``, ``part1_pos..part3_pos`` and a patch-only ``pos_embed``;
* ``original_reid``: the fine-tuned ReID model (``transformer_120.pth``): ``base.<backbone key>``, BatchNorm
  necks ``bottleneck``, ``bottleneck_1..3`` and ``classifier.weight``;
* ``original_usl``: the cluster-contrast (USL / UDA) model (``checkpoint.pth.tar`` / ``model_best.pth.tar``, its
  ``state_dict``): the backbone keys at the top and BatchNorm necks ``bottleneck`` (the CLS neck, or the one neck
  on the fused feature) and ``bottleneck_pt1..3``, each neck's output L2-normalised; no classifier;
* ``pass_hub``: a pass-hub folder's weights (``vit.<key>`` or ``pass_vit.vit.<key>`` plus the ReID head);
* ``timm``: a ``PassVisionTransformer`` state dict.

Any of them may be nested under ``model`` or ``state_dict`` and carry a DDP ``module.`` prefix.
The original layout converts exactly: ``reg_token = cat(part_token1..3)`` and
``pos_embed = cat(cls_pos, part1_pos..part3_pos, pos_embed)``.

Example:
    >>> from pass_hub import convert_checkpoint
    >>> convert_checkpoint("pass_vit_small_full.pth", "out/pass-vit-s16")  # doctest: +SKIP
    PosixPath('out/pass-vit-s16')
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backbone import PRESETS

if TYPE_CHECKING:
    from .configuration_pass_vit import PassViTConfig
    from .modeling_pass_vit import PassViTForReID, PassViTModel

# Globals a PASS checkpoint pickle legitimately contains besides tensors and builtin containers: the ``args`` of a
# pre-training checkpoint, and the numpy scalars its optimizer state holds (the original writes each step's lr and
# weight decay from numpy schedules), under numpy 2's module name and numpy 1's (the original's files).
try:
    from numpy._core.multiarray import scalar as _NUMPY_SCALAR  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _NUMPY_SCALAR
SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    *(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
]

ORIGINAL_PREFIX_KEYS = ("cls_pos", "part1_pos", "part2_pos", "part3_pos")
ORIGINAL_PART_TOKENS = ("part_token1", "part_token2", "part_token3")
REID_HEAD_PREFIXES = ("cls_neck.", "part_necks.", "fused_neck.", "classifier.")
# The original ReID models' names: (backbone prefix, name of PART neck k = 1..P).
ORIGINAL_REID_LAYOUTS = {"original_reid": ("base.", "bottleneck_{}"), "original_usl": ("", "bottleneck_pt{}")}
# Classifier heads of the underlying ViT that PASS never uses (the original ``base.fc``).
UNUSED_HEAD_PREFIXES = ("fc.", "head.")


@dataclass
class ExtractedWeights:
    """Weights of a checkpoint mapped to pass-hub names.

    Attributes:
        backbone: ``PassVisionTransformer`` state dict.
        reid_head: ``PassViTForReID`` head entries (``cls_neck.*``, ``part_necks.<k>.*``, ``classifier.weight``);
            empty for a backbone-only checkpoint.
        source_format: One of ``pretraining``, ``original_backbone``, ``original_reid``, ``original_usl``,
            ``pass_hub``, ``timm``.
        metadata: Non-weight entries worth keeping (e.g. the pre-training ``epoch``).
    """

    backbone: dict[str, torch.Tensor]
    reid_head: dict[str, torch.Tensor] = field(default_factory=dict)
    source_format: str = "timm"
    metadata: dict[str, Any] = field(default_factory=dict)

    def head_layout(self, hidden_size: int) -> dict[str, Any]:
        """The ``PassViTConfig`` head values of ``reid_head`` (:func:`reid_head_layout`); the original
        cluster-contrast model's PART necks also L2-normalise their outputs."""
        layout = reid_head_layout(self.reid_head, hidden_size)
        if self.source_format == "original_usl" and layout["neck"] == "per_token":
            layout["normalize_neck_outputs"] = True
        return layout


class CheckpointError(ValueError):
    """A model file or folder that cannot be read. The message is one line: the path, what it is not or what is
    wrong with it, and where it helps what was expected.

    Example:
        >>> try:
        ...     load_checkpoint_file(__file__)  # this module's source, not a checkpoint
        ... except CheckpointError as err:
        ...     print(str(err).split(": ", 1)[1].split(";")[0])
        not a PyTorch checkpoint (neither a zip archive nor a pickle
    """


def one_line(error: BaseException) -> str:
    """The first non-blank line of an error's message (libraries write several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# How the files torch.save writes begin: a zip archive (torch >= 1.6), or a pickle (the legacy format: protocol 2+).
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def read_folder_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model folder, parsed; ``CheckpointError`` names it when it is not a JSON object."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON config ({one_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def load_pass_hub_folder(spec: str | Path) -> PassViTModel | PassViTForReID:
    """The model of a pass-hub folder or cached hub id: a ``PassViTForReID`` when its config lists it, otherwise a
    ``PassViTModel``.

    Raises:
        CheckpointError: a local folder whose ``config.json`` is not JSON or not a PASS config, without weights, or
            whose weights do not fit its config (one line naming the folder). A hub id that is not cached raises
            transformers' ``OSError``.
    """
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from .configuration_pass_vit import PassViTConfig
    from .modeling_pass_vit import PassViTForReID, PassViTModel

    local = Path(spec).is_dir()
    if local:
        read_folder_config(spec)
        if not any((Path(spec) / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
            raise CheckpointError(f"{spec}: a config.json without weights (no model.safetensors or pytorch_model.bin)")
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError, KeyError) as err:
        if not local:
            raise
        raise CheckpointError(f"{spec}: its config.json is not a model config ({one_line(err)})") from None
    if not isinstance(config, PassViTConfig):
        raise CheckpointError(f"{spec} holds a {config.model_type!r} model, not a PASS ({PassViTConfig.model_type!r}) "
                              "one")
    model_class = PassViTForReID if "PassViTForReID" in (config.architectures or ()) else PassViTModel
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its loading report becomes one error below
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(spec, config=config, output_loading_info=True)
    except (OSError, RuntimeError, ValueError) as err:
        detail = one_line(err)
        if local:  # name the keys that do not fit, in our words (transformers points at a report)
            try:
                check_state_dict(model_class(config).state_dict(), load_checkpoint_file(spec), str(spec))
            except ValueError as mismatch:
                detail = str(mismatch).split("; ", 1)[-1]
        raise CheckpointError(f"{spec}: its weights do not fit its config.json ({detail})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    # A key the weights lack would be left at its random initialisation: refused, not warned about.
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{spec}: its weights lack {len(missing)} key(s) of its config.json's model "
                              f"(first: {missing[0]})")
    return model


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a ``.pth`` / ``.bin`` / ``.safetensors`` file (or a folder holding ``model.safetensors``) safely.

    Pickles are read with ``torch.load(weights_only=True)``; the only non-tensor classes allowed are
    ``argparse.Namespace`` (the ``args`` of a pre-training checkpoint) and numpy scalars. A pickle that wants more is
    refused; anything that is not a checkpoint at all (empty, cut short, another format) is named as such.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: anything else that is wrong, in one line naming ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            read_folder_config(path)
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: a folder without model.safetensors or pytorch_model.bin")
        path = found
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file (0 bytes), not a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # the Rust library's SafetensorError, and OSError on short reads
            raise CheckpointError(f"{path}: not a readable .safetensors file, cut short or of another format "
                                  f"({one_line(err)})") from None
    with path.open("rb") as file:
        head = file.read(16)
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with "
                              f"{head[:12]!r})")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if not wanted:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, cut short or damaged "
                                  f"({one_line(err)})") from None
        raise CheckpointError(
            f"{path}: refusing to unpickle objects outside the allow-list (it asks for "
            f"{', '.join(sorted(set(wanted)))}). PASS checkpoints hold only tensors, containers, numpy scalars and "
            "argparse.Namespace; a pickle that wants more could run arbitrary code."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, cut short or damaged "
                              f"({one_line(err)})") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(checkpoint).__name__}")
    return dict(checkpoint)


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _strip_ddp(state: Mapping[str, Any]) -> dict[str, Any]:
    if state and all(k.startswith("module.") for k in state):
        return _strip(state, "module.")
    return dict(state)


def _unwrap(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Find the state dict inside a checkpoint. Returns (state, "pretraining" or None, metadata)."""
    state: Mapping[str, Any] = checkpoint
    while True:
        if "teacher" in state and isinstance(state["teacher"], Mapping):
            metadata = {k: state[k] for k in ("epoch",) if k in state}
            teacher = _strip_ddp(state["teacher"])
            backbone = _strip(teacher, "backbone.")
            if not backbone:
                raise ValueError(
                    "the pre-training checkpoint's 'teacher' has no 'backbone.*' keys "
                    f"(first keys: {sorted(teacher)[:5]})"
                )
            return backbone, "pretraining", metadata
        nested = next((k for k in ("model", "state_dict") if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            return _strip_ddp(state), None, {}
        state = state[nested]


def original_backbone_pieces(key: str, num_parts: int = 3) -> list[str]:
    """The original PASS name(s) of one pass-hub backbone key, in order along dim 1: ``reg_token`` holds
    ``part_token1..P``, ``pos_embed`` holds ``cls_pos``, ``part1_pos..partP_pos`` and the patch ``pos_embed``.

    Example:
        >>> original_backbone_pieces("pos_embed"), original_backbone_pieces("blocks.0.attn.qkv.weight")
        (['cls_pos', 'part1_pos', 'part2_pos', 'part3_pos', 'pos_embed'], ['blocks.0.attn.qkv.weight'])
    """
    parts = range(1, num_parts + 1)
    if key == "reg_token":
        return [f"part_token{k}" for k in parts]
    if key == "pos_embed":
        return ["cls_pos", *(f"part{k}_pos" for k in parts), "pos_embed"]
    return [key]


def split_as_original(key: str, tensor: torch.Tensor, num_parts: int = 3) -> list[torch.Tensor]:
    """Views of a pass-hub backbone tensor, one per original tensor it holds (:func:`original_backbone_pieces`):
    the original's prefix tokens and positions are one row each, its patch table the rest."""
    pieces = len(original_backbone_pieces(key, num_parts))
    if pieces == 1:
        return [tensor]
    return list(tensor.split([1] * (pieces - 1) + [tensor.shape[1] - pieces + 1], dim=1))


def _original_to_backbone(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    missing = [k for k in (*ORIGINAL_PART_TOKENS, *ORIGINAL_PREFIX_KEYS, "pos_embed") if k not in state]
    if missing:
        raise ValueError(f"{source}: original PASS backbone is missing {missing}")
    backbone = {k: v for k, v in state.items() if k not in (*ORIGINAL_PART_TOKENS, *ORIGINAL_PREFIX_KEYS)}
    backbone["reg_token"] = torch.cat([state[k] for k in ORIGINAL_PART_TOKENS], dim=1)
    backbone["pos_embed"] = torch.cat([*(state[k] for k in ORIGINAL_PREFIX_KEYS), state["pos_embed"]], dim=1)
    return backbone


def _original_reid_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The necks and classifier of an original ReID model in pass-hub names: ``bottleneck`` is the CLS neck when
    PART necks (``bottleneck_1..P`` fine-tuned, ``bottleneck_pt1..P`` cluster-contrast) exist, and the one neck on
    the fused feature when they do not."""
    necks = {name: re.fullmatch(r"bottleneck(?:_(?:pt)?(\d+))?\.(\w+)", name) for name in state}
    single = not any(match and match.group(1) for match in necks.values())
    head = {}
    for name, value in state.items():
        if necks[name]:
            index, buffer = necks[name].groups()
            if index is not None:
                head[f"part_necks.{int(index) - 1}.{buffer}"] = value
            else:
                head[f"{'fused_neck' if single else 'cls_neck'}.{buffer}"] = value
        elif name == "classifier.weight":
            head[name] = value
    return head


def original_reid_pieces(key: str, num_parts: int = 3, layout: str = "original_reid") -> list[str]:
    """The original ReID model's name(s) of one ``PassViTForReID`` key (several: pieces along dim 1), in the
    fine-tuned model's names (``layout="original_reid"``) or the cluster-contrast model's (``"original_usl"``).

    Example:
        >>> original_reid_pieces("pass_vit.vit.reg_token"), original_reid_pieces("part_necks.0.weight")
        (['base.part_token1', 'base.part_token2', 'base.part_token3'], ['bottleneck_1.weight'])
        >>> original_reid_pieces("part_necks.2.running_mean", layout="original_usl")
        ['bottleneck_pt3.running_mean']
    """
    prefix, part_neck = ORIGINAL_REID_LAYOUTS[layout]
    if key.startswith("pass_vit.vit."):
        return [prefix + piece for piece in original_backbone_pieces(key.removeprefix("pass_vit.vit."), num_parts)]
    part = re.fullmatch(r"part_necks\.(\d+)\.(\w+)", key)
    if part:
        return [f"{part_neck.format(int(part.group(1)) + 1)}.{part.group(2)}"]
    return [re.sub(r"^(cls_neck|fused_neck)\.", "bottleneck.", key)]


def reid_model_to_original(
    state: Mapping[str, torch.Tensor], num_parts: int = 3, layout: str = "original_reid"
) -> dict[str, torch.Tensor]:
    """A ``PassViTForReID`` state dict in an original ReID model's names (:func:`original_reid_pieces`): what the
    original ``test.py`` of that code loads. Split tensors are views."""
    out = {}
    for key, tensor in state.items():
        inner = key.removeprefix("pass_vit.vit.")
        views = split_as_original(inner, tensor, num_parts) if inner != key else [tensor]
        out.update(zip(original_reid_pieces(key, num_parts, layout), views, strict=True))
    return out


def reid_head_layout(head: Mapping[str, torch.Tensor], hidden_size: int) -> dict[str, Any]:
    """The ``neck`` and, where the shapes tell it, the ``feature_fusion`` of a ReID head in pass-hub names.

    A fused feature is 2D wide with ``cat`` and D with ``mean``: the single neck's width or the classifier's input
    says which; per-token necks without a classifier do not (the entry is then absent).
    """
    layout: dict[str, Any] = {"neck": "single" if "fused_neck.weight" in head else "per_token"}
    fused = head.get("fused_neck.weight")
    width = fused.shape[0] if fused is not None else None
    if width is None and "classifier.weight" in head:
        width = head["classifier.weight"].shape[1]
    if width is not None:
        layout["feature_fusion"] = "cat" if width == 2 * hidden_size else "mean"
    return layout


def _drop_unused_heads(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in backbone.items() if not k.startswith(UNUSED_HEAD_PREFIXES)}


def extract_weights(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> ExtractedWeights:
    """Map any supported layout (module docstring) to pass-hub names, or raise ``ValueError`` naming keys."""
    state, wrapper_format, metadata = _unwrap(checkpoint)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if wrapper_format == "pretraining":
        if "part_token1" in tensors:
            return ExtractedWeights(_original_to_backbone(tensors, source), {}, "pretraining", metadata)
        return ExtractedWeights(_drop_unused_heads(tensors), {}, "pretraining", metadata)
    for prefix in ("pass_vit.vit.", "vit."):
        if any(k.startswith(prefix) for k in tensors):
            head = {k: v for k, v in tensors.items() if k.startswith(REID_HEAD_PREFIXES)}
            return ExtractedWeights(_strip(tensors, prefix), head, "pass_hub")
    if "base.cls_token" in tensors:
        backbone = _drop_unused_heads(_strip(tensors, "base."))
        if "part_token1" in backbone:
            backbone = _original_to_backbone(backbone, source)
        return ExtractedWeights(backbone, _original_reid_head(tensors), "original_reid")
    if "part_token1" in tensors:
        necks = {k: v for k, v in tensors.items() if k.startswith("bottleneck")}
        backbone = _original_to_backbone(_drop_unused_heads({k: v for k, v in tensors.items() if k not in necks}),
                                         source)
        if necks:
            return ExtractedWeights(backbone, _original_reid_head(necks), "original_usl")
        return ExtractedWeights(backbone, {}, "original_backbone")
    if "reg_token" in tensors and "cls_token" in tensors:
        return ExtractedWeights(_drop_unused_heads(tensors), {}, "timm")
    raise ValueError(
        f"{source}: unrecognised checkpoint layout; expected PASS backbone keys such as 'cls_token' and "
        f"'part_token1', found {sorted(state)[:8]}{' ...' if len(state) > 8 else ''}"
    )


def infer_grid(num_patches: int, height_to_width: int = 2) -> tuple[int, int]:
    """Patch grid of a position table, assuming the ReID aspect ratio (height twice the width), like the original."""
    width = round((num_patches / height_to_width) ** 0.5)
    if width < 1 or width * width * height_to_width != num_patches:
        raise ValueError(
            f"cannot infer the patch grid of a position table with {num_patches} patches assuming height = "
            f"{height_to_width} x width; pass the architecture explicitly"
        )
    return (height_to_width * width, width)


def infer_backbone_args(
    backbone: Mapping[str, torch.Tensor],
    arch: str | None = None,
    num_heads: int | None = None,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """``PassVisionTransformer`` arguments from tensor shapes.

    The tensors do not hold the number of attention heads: it is ``num_heads`` when given, the preset's for
    ``arch``, else width / 64 (the ViT convention of every PASS model). A width that 64 does not divide is refused
    rather than guessed: ``ValueError`` asks for ``num_heads``.
    """
    required = ("cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight")
    missing = [k for k in required if k not in backbone]
    if missing:
        raise ValueError(f"{source}: cannot infer the architecture: missing {missing}")
    dim = backbone["cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k))}
    proj = backbone["patch_embed.proj.weight"]
    num_parts = backbone["reg_token"].shape[1]
    patch = proj.shape[-1]
    grid = infer_grid(backbone["pos_embed"].shape[1] - 1 - num_parts)
    args: dict[str, Any] = dict(
        img_size=[grid[0] * patch, grid[1] * patch],
        patch_size=patch,
        in_chans=proj.shape[1],
        embed_dim=dim,
        depth=max(blocks) + 1 if blocks else 0,
        num_heads=num_heads,
        mlp_ratio=backbone["blocks.0.mlp.fc1.weight"].shape[0] / dim if blocks else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in backbone,
        num_parts=num_parts,
    )
    if arch is not None:
        key = arch if arch in PRESETS else f"pass_vit_{arch}"
        if key not in PRESETS:
            raise ValueError(f"unknown --arch {arch!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[key]
        if preset["embed_dim"] != dim or preset["depth"] != args["depth"]:
            raise ValueError(
                f"--arch {arch} expects embed_dim={preset['embed_dim']}, depth={preset['depth']}; "
                f"the checkpoint has embed_dim={dim}, depth={args['depth']}"
            )
        args["num_heads"] = num_heads or preset["num_heads"]
    elif num_heads is None:
        if dim % 64:
            raise ValueError(
                f"{source}: its tensors do not say how many attention heads the ViT has, and its width {dim} is not "
                "a multiple of 64 (64 values per head, the convention of every PASS model); give the number with "
                "num_heads= (--num_heads on the command line)"
            )
        args["num_heads"] = dim // 64
    if dim % args["num_heads"]:
        raise ValueError(f"{source}: width {dim} does not split into {args['num_heads']} attention heads")
    return args


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise ``ValueError`` naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(found)
        if tuple(found[k].shape) != tuple(expected[k].shape)
    )
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:12])}{' ...' if len(items) > 12 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", misshaped))
        if items
    ]
    if problems:
        raise ValueError(f"{source}: weights do not fit the model; " + "; ".join(problems))


def config_from_weights(weights: ExtractedWeights, args: Mapping[str, Any], **overrides: Any) -> PassViTConfig:
    """The ``PassViTConfig`` of extracted weights: the backbone of :func:`infer_backbone_args` ``args`` and, for a
    ReID model, its head (identities = classifier rows, none without a classifier; neck and fusion from the
    shapes) with the ReID mean/std 0.5. ``overrides`` replace any value."""
    from .configuration_pass_vit import REID_MEAN, REID_STD, PassViTConfig

    values: dict[str, Any] = dict(
        hidden_size=args["embed_dim"],
        num_hidden_layers=args["depth"],
        num_attention_heads=args["num_heads"],
        mlp_ratio=args["mlp_ratio"],
        qkv_bias=args["qkv_bias"],
        image_size=tuple(args["img_size"]),
        patch_size=args["patch_size"],
        num_channels=args["in_chans"],
        num_part_tokens=args["num_parts"],
    )
    if weights.reid_head:
        classifier = weights.reid_head.get("classifier.weight")
        values.update(weights.head_layout(args["embed_dim"]), image_mean=REID_MEAN,
                      image_std=REID_STD, num_labels=0 if classifier is None else classifier.shape[0])
    return PassViTConfig(**{**values, **overrides})


def model_from_weights(
    weights: ExtractedWeights, args: Mapping[str, Any], source: str, **overrides: Any
) -> PassViTModel | PassViTForReID:
    """The pass-hub model of extracted weights (:func:`config_from_weights`), loaded strictly: a
    ``PassViTForReID`` with its necks and classifier for a ReID model, a ``PassViTModel`` for a backbone.

    Raises:
        ValueError: naming every missing, unexpected and mis-shaped key.
    """
    from .modeling_pass_vit import PassViTForReID, PassViTModel

    config = config_from_weights(weights, args, **overrides)
    if weights.reid_head:
        model = PassViTForReID(config)
        backbone = model.pass_vit.vit
        head_expected = {k: v for k, v in model.state_dict().items() if not k.startswith("pass_vit.")}
        check_state_dict(head_expected, weights.reid_head, source)
        model.load_state_dict(weights.reid_head, strict=False)
    else:
        model = PassViTModel(config)
        backbone = model.vit
    check_state_dict(backbone.state_dict(), weights.backbone, source)
    backbone.load_state_dict(weights.backbone, strict=True)
    return model


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    arch: str | None = None,
    *,
    num_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an original PASS checkpoint (any layout above) into a pass-hub folder.

    The folder holds ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` + ``README.md`` and
    loads with ``AutoModel.from_pretrained`` and ``timm.create_model("local-dir:...", pretrained=True)``.
    A fine-tuned ReID checkpoint becomes a ``PassViTForReID`` folder (mean/std 0.5), a backbone a
    ``PassViTModel`` folder (ImageNet mean/std).

    Args:
        src: The checkpoint file.
        out_dir: Output folder, written atomically.
        arch: Preset name (``pass_vit_small`` ...) to check the checkpoint against; inferred when None.
        num_heads: Attention heads, when neither the preset nor D/64 is right.
        overwrite: Replace an existing ``out_dir``.
    """
    from .hub import save_hub_folder
    from .model_card import render_model_card

    source = str(src)
    folder = Path(src).is_dir() and (Path(src) / "config.json").is_file()
    # A pass-hub folder is read with its config: weights that do not fit it are refused, not re-inferred.
    state = load_pass_hub_folder(src).state_dict() if folder else load_checkpoint_file(src)
    weights = extract_weights(state, source=source)
    args = infer_backbone_args(weights.backbone, arch=arch, num_heads=num_heads, source=source)
    model = model_from_weights(weights, args, source)
    config = model.config
    card = render_model_card(
        config,
        kind="reid" if weights.reid_head else "backbone",
        summary=f"Converted from the original PASS checkpoint `{Path(src).name}` ({weights.source_format} layout).",
    )
    return save_hub_folder(model, out_dir, model_card=card, overwrite=overwrite)
