"""Where a ReID run starts (``finetune.py --init``, ``usl.py --init``), read from any PASS source.

``--init`` may name:

* a preset (``pass_vit_small``, ``tiny`` ...): random initialisation;
* a backbone file: the released ``pass_vit_small_full.pth``, an original pre-training ``checkpoint.pth`` (its
  teacher), any layout ``pass-hub convert`` reads;
* an original fine-tuned model, ``transformer_N.pth`` as the original ``do_train`` saves it: ``base.*``, the
  BatchNorm necks ``bottleneck`` (and ``bottleneck_1..3``) and ``classifier.weight``;
* an original cluster-contrast model, ``checkpoint.pth.tar`` / ``model_best.pth.tar`` as the original USL / UDA
  script saves it: its ``state_dict`` holds the backbone and the necks ``bottleneck`` (and ``bottleneck_pt1..3``);
* a pass-hub folder (``PassViTModel`` or ``PassViTForReID``) or a cached hub id.

Files are read with the safe loader of ``pass-hub convert``; the architecture comes from the tensors (or the
folder's config), and the number of attention heads from ``num_heads`` where width / 64 is not it. A ReID model's
necks and classifier are kept only when the run's identities and head layout are the checkpoint's (the same
model, trained further); otherwise the backbone is kept and the head starts fresh, as the original does.

Example:
    >>> from training.engine.recipes import RECIPES
    >>> settings = RECIPES["finetune"]["cpu_demo"].settings
    >>> start = load_finetuning_start("pass_vit_tiny")  # a preset: random init
    >>> model = start.model(settings, num_labels=10)
    >>> start.describe(), model.config.num_labels, model.config.image_size
    ('pass_vit_tiny (preset: random initialisation)', 10, (128, 64))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import pass_hub
from pass_hub.models.backbone import architecture_name, backbone_architecture
from pass_hub.models.convert import (
    CheckpointError,
    ExtractedWeights,
    check_state_dict,
    extract_weights,
    infer_backbone_args,
    load_checkpoint_file,
    load_pass_hub_folder,
    one_line,
    reid_head_layout,
)
from pass_hub.models.timm_models import checkpoint_filter_fn, grid_change
from training.engine.recipes import FROM_INIT
from training.engine.transforms import REID_MEAN, REID_STD

# PassViTConfig values that describe the backbone's weights (everything else comes from the run's settings).
BACKBONE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "qkv_bias", "patch_size",
                   "num_channels", "num_part_tokens")
FORMATS = {
    "preset": "preset: random initialisation",
    "original_backbone": "original PASS backbone",
    "pretraining": "original pre-training checkpoint, its teacher",
    "original_reid": "original fine-tuned ReID model",
    "original_usl": "original cluster-contrast (USL / UDA) model",
    "timm": "PASS backbone",
    "pass_hub": "pass-hub weights",
    "pass_hub_backbone": "pass-hub backbone folder",
    "pass_hub_reid": "pass-hub ReID model folder",
}


@dataclass(frozen=True)
class ReidStart:
    """What ``--init`` holds, in pass-hub names.

    Attributes:
        source: The ``--init`` argument.
        source_format: A key of ``FORMATS``.
        backbone_config: ``PassViTConfig`` values of the backbone (``BACKBONE_FIELDS``).
        trained_size: The input size its position table is laid out for.
        backbone: ``PassVisionTransformer`` state dict, or None for a preset (random init).
        head: ``PassViTForReID`` necks and classifier (``cls_neck.*`` / ``part_necks.<k>.*`` / ``fused_neck.*`` /
            ``classifier.weight``); empty for a backbone.
        head_layout: ``neck`` and, where the shapes tell it, ``feature_fusion`` of ``head``.
        base_model: Hub id of the source (card metadata), None for local files and presets.
        default_num_labels: Identities of a run that does not say: None for the source's (fine-tuning it further),
            0 for cluster-contrast (no classifier; :func:`load_usl_start`).
    """

    source: str
    source_format: str
    backbone_config: dict[str, Any]
    trained_size: tuple[int, int]
    backbone: dict[str, torch.Tensor] | None = None
    head: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    head_layout: dict[str, Any] = dataclasses.field(default_factory=dict)
    base_model: str | None = None
    default_num_labels: int | None = None

    @property
    def fine_tuned(self) -> bool:
        """The source is a ReID model (necks, perhaps a classifier): a UDA source, or a model to train further."""
        return bool(self.head)

    @property
    def num_labels(self) -> int | None:
        """Identities of the source's classifier; None without one."""
        classifier = self.head.get("classifier.weight")
        return None if classifier is None else int(classifier.shape[0])

    @property
    def architecture(self) -> str:
        """The backbone as a ``preset`` setting: a preset name or ``embed_dim=D,depth=L,num_heads=H``."""
        config = self.backbone_config
        return architecture_name(config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"])

    def describe(self) -> str:
        """One line for the log: what the source is."""
        ids = f", {self.num_labels} identities" if self.num_labels is not None else ""
        return f"{self.source} ({FORMATS[self.source_format]}{ids})"

    def check_preset(self, settings: Any, recipe: str) -> None:
        """Raise ``ValueError`` when the source is not the backbone ``settings.preset`` names (a ViT-B for a ViT-S
        recipe); ``from_init`` takes any."""
        if settings.preset == FROM_INIT or backbone_architecture(settings.preset) == backbone_architecture(
                self.architecture):
            return
        raise ValueError(
            f"--init {self.source} is {self.architecture}, but --recipe {recipe} trains {settings.preset}; pick the "
            f"recipe for that backbone or pass --preset {self.architecture} (or {FROM_INIT}) to override"
        )

    def settings_for(self, settings: Any, num_labels: int | None = None) -> Any:
        """``settings`` with the source's architecture (``preset``) and, when the run has the source's identities
        (``num_labels``, default the source's), its neck and fusion: the settings under which :meth:`model` keeps
        all it can of the checkpoint."""
        changes: dict[str, Any] = {"preset": self.architecture}
        if self.head and self.run_labels(num_labels) == (self.num_labels or 0):
            changes.update(self.head_layout)
        return dataclasses.replace(settings, **changes)

    def run_labels(self, num_labels: int | None) -> int:
        """The identities of a run that asks for ``num_labels`` (None: ``default_num_labels``, else the source's, 0
        without a classifier)."""
        num_labels = self.default_num_labels if num_labels is None else num_labels
        return (self.num_labels or 0) if num_labels is None else num_labels

    def keeps_head(self, settings: Any, num_labels: int | None = None) -> bool:
        """Whether :meth:`model` keeps the source's necks and classifier: it has them, the run has as many
        identities (``num_labels``, default the source's) and the settings lay the head out as it is."""
        layout_fits = all(getattr(settings, name) == value for name, value in self.head_layout.items())
        return bool(self.head) and self.run_labels(num_labels) == (self.num_labels or 0) and layout_fits

    def model(self, settings: Any, num_labels: int | None = None) -> pass_hub.PassViTForReID:
        """A ``PassViTForReID`` for ``settings`` (input size, drop path, necks, fusion, test feature; ReID mean/std
        0.5) on the source's backbone, with its necks and classifier when :meth:`keeps_head`, fresh ones otherwise.

        Args:
            settings: Fine-tuning or cluster-contrast settings.
            num_labels: Identities of the run (0: no classifier, as cluster-contrast); default the source's.

        Raises:
            ValueError: the weights do not fit (naming the keys), or the settings are inconsistent.
        """
        keep = self.keeps_head(settings, num_labels)
        labels = self.run_labels(num_labels)
        config = pass_hub.PassViTConfig(
            **self.backbone_config,
            image_size=tuple(settings.image_size),
            image_mean=REID_MEAN,
            image_std=REID_STD,
            image_interpolation=settings.test_resize,
            drop_path_rate=settings.drop_path_rate,
            neck=settings.neck,
            feature_fusion=settings.feature_fusion,
            normalize_neck_outputs=settings.normalize_neck_outputs,
            reid_feature=settings.reid_feature,
            label_smoothing=getattr(settings, "label_smoothing", 0.0),
            num_labels=labels,
        )
        model = pass_hub.PassViTForReID(config)
        if self.backbone is not None:
            vit = model.pass_vit.vit
            # The position table moves to the run's grid (bilinear, the original fine-tuning's resize).
            backbone = checkpoint_filter_fn(self.backbone, vit)
            check_state_dict(vit.state_dict(), backbone, self.source)
            vit.load_state_dict(backbone)
        if keep:
            expected = {k: v for k, v in model.state_dict().items() if not k.startswith("pass_vit.")}
            check_state_dict(expected, self.head, self.source)
            model.load_state_dict(self.head, strict=False)
        return model

    def kept(self, settings: Any, num_labels: int | None = None) -> str:
        """What :meth:`model` keeps of the source, in one line for the log."""
        if self.backbone is None:
            return f"--init {self.describe()}"
        grid = self.grid_change(settings)
        moved = f"; its position table resampled from {grid[0]} to {grid[1]} patches" if grid else ""
        if self.keeps_head(settings, num_labels):
            return f"--init {self.describe()}: backbone, necks and classifier kept{moved}"
        labels = self.run_labels(num_labels)
        reason = ""
        if self.head and labels != (self.num_labels or 0):
            reason = f" (the run has {labels} identities, the checkpoint {self.num_labels or 0})"
        elif self.head:
            reason = f" (the checkpoint's head is {self.head_layout}, the run's is not)"
        fresh = "new necks and classifier" if labels else "new necks"
        return f"--init {self.describe()}: backbone kept, {fresh}{reason}{moved}"

    def grid_change(self, settings: Any) -> tuple[str, str] | None:
        """(``"16x8"``, ``"24x8"``) when the run's input puts the patches on another grid than the source's."""
        return grid_change(self.trained_size, settings.image_size, self.backbone_config["patch_size"])


def _from_weights(source: str, weights: ExtractedWeights, num_heads: int | None) -> ReidStart:
    args = infer_backbone_args(weights.backbone, num_heads=num_heads, source=source)
    config = {
        "hidden_size": args["embed_dim"], "num_hidden_layers": args["depth"], "num_attention_heads": args["num_heads"],
        "mlp_ratio": args["mlp_ratio"], "qkv_bias": args["qkv_bias"], "patch_size": args["patch_size"],
        "num_channels": args["in_chans"], "num_part_tokens": args["num_parts"],
    }
    return ReidStart(source, weights.source_format, config, tuple(args["img_size"]), dict(weights.backbone),
                     dict(weights.reid_head), weights.head_layout(args["embed_dim"]))


def _backbone_values(config: pass_hub.PassViTConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in BACKBONE_FIELDS}


def _from_folder(spec: str, exists: bool) -> ReidStart:
    model = load_pass_hub_folder(spec)
    config = model.config
    weights = extract_weights(model.state_dict(), source=spec)
    return ReidStart(
        spec, "pass_hub_reid" if isinstance(model, pass_hub.PassViTForReID) else "pass_hub_backbone",
        _backbone_values(config), tuple(config.image_size),
        dict(weights.backbone), dict(weights.reid_head), _folder_head_layout(weights, config),
        base_model=None if exists else spec,
    )


def _folder_head_layout(weights: ExtractedWeights, config: pass_hub.PassViTConfig) -> dict[str, Any]:
    layout = reid_head_layout(weights.reid_head, config.hidden_size)
    if weights.reid_head and layout["neck"] == "per_token":
        layout["normalize_neck_outputs"] = config.normalize_neck_outputs
    return layout


def load_finetuning_start(path: str | Path, num_heads: int | None = None) -> ReidStart:
    """Read what ``--init path`` names (module docstring).

    Args:
        path: A preset, a checkpoint file, a pass-hub folder or a cached hub id.
        num_heads: Attention heads of a checkpoint whose width 64 does not divide (files only; folders say).

    Raises:
        FileNotFoundError / ValueError: naming the path and what is wrong with it.

    Example (the original fine-tuned model, two steps further, and back in the original's names)::

        start = load_finetuning_start("transformer_120.pth")
        settings = start.settings_for(RECIPES["finetune"]["market_vit_small_256"].settings)
        finetuner = ReidFinetuner.build(settings, start.model(settings), Accelerator(cpu=True))
        finetuner.step(pixel_values, labels, epoch=119)
        torch.save(finetuner.original_state_dict(), "transformer_121.pth")
    """
    spec = str(path)
    try:
        arch = backbone_architecture(spec)
    except ValueError:
        arch = None
    if arch is not None and not Path(spec).exists():
        config = pass_hub.PassViTConfig.from_preset(spec)
        return ReidStart(spec, "preset", _backbone_values(config), tuple(config.image_size))
    location = Path(spec)
    if location.is_file() or (location.is_dir() and not (location / "config.json").is_file()):
        return _from_weights(spec, extract_weights(load_checkpoint_file(location), source=spec), num_heads)
    # A hub id is "name" or "owner/name"; anything else that does not exist is a missing file or folder.
    if not location.exists() and (location.suffix or location.is_absolute() or spec.startswith(".")
                                  or spec.count("/") > 1):
        raise FileNotFoundError(f"{spec}: no such file or folder")
    try:
        return _from_folder(spec, location.exists())
    except OSError as err:
        raise CheckpointError(f"{spec}: not a preset, checkpoint file, pass-hub folder or cached hub id "
                              f"({one_line(err)})") from None


def load_usl_start(path: str | Path, num_heads: int | None = None) -> ReidStart:
    """Read what ``usl.py --init path`` names: anything :func:`load_finetuning_start` reads, the original
    cluster-contrast model (``checkpoint.pth.tar`` / ``model_best.pth.tar``) included. The run learns no
    classifier (``num_labels`` 0 unless given), so the necks of a source without a classifier (an original USL or
    UDA model, a pass-hub cluster-contrast folder) are kept when the settings lay them out alike, and a fine-tuned
    model (a UDA source) gives its backbone only, as the original's ``load_param`` takes it.

    Example (an original USL model, two steps further, and back in the original's names)::

        start = load_usl_start("model_best.pth.tar")
        settings = start.settings_for(RECIPES["usl"]["market_usl_vit_small"].settings)
        trainer = ClusterContrastTrainer.build(settings, start.model(settings), Accelerator(cpu=True))
        trainer.cluster(trainer.extract_cluster_features(train_split))
        trainer.step(pixel_values, pseudo_labels, epoch=0)
        torch.save({"state_dict": trainer.original_state_dict()}, "checkpoint.pth.tar")
    """
    return dataclasses.replace(load_finetuning_start(path, num_heads), default_num_labels=0)
