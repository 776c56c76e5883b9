"""Every setting of the three training scripts, and the recipes that give each one a value.

A recipe is one released script of the original PASS code (``docs/recipes.md`` lists their settings and
sources), written out setting by setting, or ``cpu_demo``, the CPU-sized run ``make demo`` uses and the default
when ``--recipe`` is not given. A script run is ``--recipe NAME`` plus data paths; a flag given explicitly
replaces the recipe's value, and the run's log, ``results.json`` and model card name every replaced setting.
``--print_config`` prints the resolved settings as JSON and exits before anything is loaded::

    accelerate launch training/finetune.py --recipe market_vit_small_256 --print_config

The batch is the *global* batch of one optimiser step (``global_batch_size``): each process takes
``global_batch_size / (processes x gradient accumulation steps)`` images, so a recipe run on 8 GPUs by the
original gives the same steps on 2 GPUs with ``--gradient_accumulation_steps 4``.

Example:
    >>> recipe = RECIPES["finetune"]["market_vit_small_384"]
    >>> recipe.settings.image_size, recipe.settings.seed, recipe.original
    ((384, 128), 42, 'PASS_transreid/run_pass_vit_small_Market_384.sh')
    >>> resolved = resolve(recipe, {"epochs": 2})
    >>> resolved.overridden
    {'epochs': {'recipe': 120, 'given': 2}}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pass_hub.models.backbone import PRESETS, backbone_architecture
from training.engine.settings import add_settings_flags, given_settings, setting, setting_names, settings_as_json

DEFAULT_RECIPE = "cpu_demo"
PRECISIONS = ("no", "fp16", "bf16")
REID_OPTIMIZERS = ("sgd", "adamw")
NECKS = ("per_token", "single")
FUSIONS = ("cat", "mean")
REID_FEATURES = ("before_neck", "after_neck")
RESIZES = ("bilinear", "bicubic")
PUBLISHED = ("final", "best_test_evaluation")
FROM_INIT = "from_init"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_preset(preset: str, from_init: bool) -> None:
    if from_init and preset == FROM_INIT:
        return
    try:
        backbone_architecture(preset)
    except ValueError as err:
        raise ValueError(f"--preset {preset}: {err}" + (f", or {FROM_INIT}" if from_init else "")) from None


def _check_size(size: tuple[int, int], flag: str) -> None:
    _check(all(side > 0 and side % 16 == 0 for side in size), f"--{flag} {size[0]} {size[1]}: sides must be "
           "positive multiples of 16 (the patch size)")


def _check_pk_batch(global_batch_size: int, num_instances: int) -> None:
    """A batch of P identities x K instances: each count positive first, then the multiple."""
    _check(num_instances >= 1, f"--num_instances must be >= 1, got {num_instances}")
    _check(global_batch_size >= 1, f"--global_batch_size must be >= 1, got {global_batch_size}")
    _check(global_batch_size % num_instances == 0,
           f"--global_batch_size {global_batch_size} is not a multiple of --num_instances {num_instances}")


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PretrainSettings:
    """What a ``training/pretrain.py`` run is: PASS (part-aware DINO) pre-training."""

    data: str = setting("unlabelled images: a dataset spec (image_folder, synthetic ...); the folder goes after "
                        "':' or in --data_dir", group="data")
    image_size: tuple[int, int] = setting("global view size", group="data", metavar=("H", "W"))
    local_image_size: tuple[int, int] = setting("local view size", group="data", metavar=("H", "W"))
    global_crop_scale: tuple[float, float] = setting("area range of the global random-resized crops", group="data",
                                                     metavar=("MIN", "MAX"))
    local_crop_scale: tuple[float, float] = setting("area range of the local crops, inside their stripe",
                                                    group="data", metavar=("MIN", "MAX"))
    local_crops_per_stripe: int = setting("local views per stripe (3 stripes)", group="data")
    colour_jitter: float = setting("strength of the (0.4, 0.4, 0.2, 0.1) colour jitter; 1 is the original's, 0 off",
                                   group="data")
    grayscale: float = setting("probability of a grayscale view", group="data")
    preset: str = setting(f"backbone: {' / '.join(sorted(PRESETS))} or embed_dim=D,depth=L,num_heads=H",
                          group="model")
    part_tokens: bool = setting("[PART] tokens in every view (PASS); --no_part_tokens is plain DINO, the ablation",
                                group="model")
    out_dim: int = setting("prototypes per head", group="model")
    head_hidden_dim: int = setting("hidden width of the heads' MLP", group="model")
    head_bottleneck_dim: int = setting("width before the prototype layer", group="model")
    drop_path_rate: float = setting("student stochastic depth (the teacher has none)", group="model")
    pos_embed_resampling: str = setting(
        "original: the patch position table bicubic-resampled with the +0.1 scale factor on every forward, "
        "global views included (the original pre-training code); as_needed: raw at the trained grid, bilinear "
        "for other grids (the released models' fine-tuning behaviour)", group="model",
        choices=("original", "as_needed"))
    token_init: str = setting(
        "original: cls/part tokens and positions trunc-normal(0.02), CLS position 0; timm: tokens N(0, 1e-6), "
        "position table trunc-normal(0.02)", group="model", choices=("original", "timm"))
    epochs: int = setting("training epochs", group="optimisation")
    global_batch_size: int = setting("images per optimiser step over all processes", group="optimisation")
    lr: float = setting("peak lr per 256 images of global batch (scaled linearly)", group="optimisation")
    min_lr: float = setting("lr at the end of the cosine", group="optimisation")
    warmup_epochs: int = setting("linear lr warm-up from 0", group="optimisation")
    weight_decay: float = setting("weight decay at the start (cosine to --weight_decay_end)", group="optimisation")
    weight_decay_end: float = setting("weight decay at the end", group="optimisation")
    momentum_teacher: float = setting("teacher EMA momentum at the start (cosine to 1)", group="optimisation")
    clip_grad: float = setting("per-tensor gradient norm limit (0: off)", group="optimisation")
    freeze_last_layer: int = setting("epochs with the heads' prototype layers frozen", group="optimisation")
    student_temp: float = setting("student softmax temperature", group="optimisation")
    teacher_temp: float = setting("teacher softmax temperature after its warm-up", group="optimisation")
    warmup_teacher_temp: float = setting("teacher temperature at epoch 0", group="optimisation")
    warmup_teacher_temp_epochs: int = setting("epochs of teacher-temperature warm-up", group="optimisation")
    center_momentum: float = setting("EMA momentum of the four centers", group="optimisation")
    centering: str = setting(
        "teacher targets: ema centers (the original) or sinkhorn_knopp (DINOv2; balances every micro-batch)",
        group="optimisation", choices=("ema", "sinkhorn_knopp"))
    mixed_precision: str = setting("autocast precision (fp16 falls back to fp32 on a CPU)", group="optimisation",
                                   choices=PRECISIONS)
    seed: int = setting("seed of weights, views and data order", group="optimisation")

    def __post_init__(self) -> None:
        _check_preset(self.preset, from_init=False)
        _check_size(self.image_size, "image_size")
        _check_size(self.local_image_size, "local_image_size")
        for name in ("epochs", "global_batch_size", "local_crops_per_stripe", "out_dim", "head_hidden_dim",
                     "head_bottleneck_dim"):
            _check(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "warmup_teacher_temp_epochs"):  # warm-ups are parts of the schedule
            _check(0 <= getattr(self, name) <= self.epochs,
                   f"--{name} {getattr(self, name)} must lie in [0, --epochs {self.epochs}]")
        _check(self.freeze_last_layer >= 0, f"--freeze_last_layer must be >= 0, got {self.freeze_last_layer}")
        _check(0 <= self.grayscale <= 1 and self.colour_jitter >= 0, "--grayscale must be in [0, 1] and "
               "--colour_jitter >= 0")
        _check(self.lr > 0, f"--lr must be > 0, got {self.lr}")


# Settings both ReID scripts have, with one help text.
_SHARED: dict[str, dict[str, Any]] = {
    "neck": dict(help="per_token: a BatchNorm neck per token (CLS, PART1-3); single: one on the fused feature",
                 group="model", choices=NECKS),
    "feature_fusion": dict(help="CLS and mean PART combined by cat (2D values) or mean (D)", group="model",
                           choices=FUSIONS),
    "normalize_neck_outputs": dict(help="L2-normalise each neck's output before fusing (per_token necks)",
                                   group="model"),
    "reid_feature": dict(help="test-time feature: before_neck (the original fine-tuning's) or after_neck",
                         group="model", choices=REID_FEATURES),
    "cudnn_benchmark": dict(help="torch.backends.cudnn.benchmark", group="optimisation"),
    "cudnn_deterministic": dict(help="torch.backends.cudnn.deterministic", group="optimisation"),
    "eval_every": dict(help="evaluate every N epochs (0: at the end only)", group="evaluation and publishing"),
    "flip_test": dict(help="average test embeddings with mirrored images", group="evaluation and publishing"),
    "test_resize": dict(help="interpolation of the test-time resize (saved in the published processor)",
                        group="evaluation and publishing", choices=RESIZES),
    "publish": dict(
        help="final: the last weights; best_test_evaluation: the weights of the best test-split evaluation, which "
        "leaks the test set into model selection (the card says so)", group="evaluation and publishing",
        choices=PUBLISHED),
}


def _shared(name: str) -> Any:
    return setting(**_SHARED[name])


@dataclass(frozen=True)
class FinetuneSettings:
    """What a ``training/finetune.py`` run is: supervised ReID fine-tuning (TransReID-style)."""

    dataset: str = setting("labelled dataset: a spec or loader name (market1501, msmt17, synthetic ...)",
                           group="data")
    image_size: tuple[int, int] = setting("training and test input", group="data", metavar=("H", "W"))
    num_instances: int = setting("K images per identity in a P x K batch", group="data")
    preset: str = setting(f"backbone the recipe fine-tunes, {' / '.join(sorted(PRESETS))} or embed_dim=D,depth=L,"
                          "num_heads=H; --init must hold it (from_init: whatever --init holds)", group="model")
    drop_path_rate: float = setting("stochastic depth", group="model")
    neck: str = _shared("neck")
    feature_fusion: str = _shared("feature_fusion")
    normalize_neck_outputs: bool = _shared("normalize_neck_outputs")
    reid_feature: str = _shared("reid_feature")
    epochs: int = setting("training epochs (the lr schedule is per epoch)", group="optimisation")
    global_batch_size: int = setting("images per optimiser step over all processes (P x K)", group="optimisation")
    optimizer: str = setting("sgd (the original) or adamw (learns far faster in short CPU runs from scratch)",
                             group="optimisation", choices=REID_OPTIMIZERS)
    lr: float = setting("base learning rate b (not rescaled with the batch)", group="optimisation")
    weight_decay: float = setting("weight decay (with sgd of every tensor whose name holds no 'bias'; with adamw "
                                  "of weights, none on biases and norms)", group="optimisation")
    weight_decay_bias: float = setting("sgd: weight decay of the tensors whose name holds 'bias' (the original's "
                                       "WEIGHT_DECAY_BIAS)", group="optimisation")
    momentum: float = setting("SGD momentum", group="optimisation")
    bias_lr_factor: float = setting("sgd: biases peak at this x b (their start and floor are not scaled)",
                                    group="optimisation")
    warmup_epochs: int = setting("epochs of linear warm-up from --warmup_start_factor x b", group="optimisation")
    warmup_start_factor: float = setting("lr of epoch 0, as a fraction of b", group="optimisation")
    final_lr_factor: float = setting("floor of the cosine, as a fraction of b", group="optimisation")
    label_smoothing: float = setting("label smoothing of the identity cross-entropy", group="optimisation")
    triplet_margin: float | None = setting("hard triplet margin; none for the soft margin log(1 + exp(d_ap - d_an))",
                                           group="optimisation")
    triplet_weight: float = setting("weight of the triplet loss", group="optimisation")
    ce_weight: float = setting("weight of the cross-entropy", group="optimisation")
    mixed_precision: str = setting("autocast precision (fp16 falls back to fp32 on a CPU)", group="optimisation",
                                   choices=PRECISIONS)
    seed: int = setting("seed of weights, augmentation and batches", group="optimisation")
    cudnn_benchmark: bool = _shared("cudnn_benchmark")
    cudnn_deterministic: bool = _shared("cudnn_deterministic")
    eval_every: int = _shared("eval_every")
    flip_test: bool = _shared("flip_test")
    test_resize: str = _shared("test_resize")
    publish: str = _shared("publish")

    def __post_init__(self) -> None:
        _check_preset(self.preset, from_init=True)
        _check_size(self.image_size, "image_size")
        _check(self.num_instances >= 2, f"--num_instances must be >= 2 (a triplet needs a positive), got "
               f"{self.num_instances}")
        _check_pk_batch(self.global_batch_size, self.num_instances)
        # A warm-up longer than the run is allowed: the per-epoch schedule is then all warm-up.
        _check(self.epochs >= 1 and self.warmup_epochs >= 0,
               f"need --epochs >= 1 and --warmup_epochs >= 0, got {self.epochs} / {self.warmup_epochs}")
        for name, neutral in (("bias_lr_factor", 1), ("weight_decay_bias", 0)):
            _check(self.optimizer == "sgd" or getattr(self, name) == neutral,
                   f"--{name} {getattr(self, name)} applies to sgd only; use {neutral} with --optimizer adamw")
        _check(self.lr > 0 and self.eval_every >= 0, "--lr must be > 0 and --eval_every >= 0")


@dataclass(frozen=True)
class ClusterContrastSettings:
    """What a ``training/usl.py`` run is: cluster-contrast USL, or UDA from a model fine-tuned on a source set."""

    dataset: str = setting("target dataset (its identity labels are never used): a spec or loader name",
                           group="data")
    source_dataset: str | None = setting("UDA: the labelled dataset --init was fine-tuned on (none for USL); "
                                         "named in the card", group="data")
    image_size: tuple[int, int] = setting("training and test input", group="data", metavar=("H", "W"))
    num_instances: int = setting("K images per pseudo-identity", group="data")
    sampler: str = setting(
        "camera_aware: per cluster an anchor and K-1 members from other cameras (the original); pk: K random "
        "members of P clusters", group="data", choices=("camera_aware", "pk"))
    random_erasing: str = setting(
        "cluster_contrast: area 2-40%, uniform aspect 0.3-3.33, filled with (0.485, 0.456, 0.406) (the original); "
        "transreid: area 2-33%, log-uniform aspect, per-pixel noise (finetune.py's)", group="data",
        choices=("cluster_contrast", "transreid"))
    preset: str = setting(f"backbone the recipe trains, {' / '.join(sorted(PRESETS))} or embed_dim=D,depth=L,"
                          "num_heads=H; --init must hold it (from_init: whatever --init holds)", group="model")
    drop_path_rate: float = setting("stochastic depth", group="model")
    neck: str = _shared("neck")
    feature_fusion: str = _shared("feature_fusion")
    normalize_neck_outputs: bool = _shared("normalize_neck_outputs")
    reid_feature: str = setting("feature clustered, trained against the memory and tested: after_neck (the "
                                "original: the neck output) or before_neck", group="model", choices=REID_FEATURES)
    eps: float = setting("DBSCAN radius on Jaccard distances", group="clustering and memory")
    min_samples: int = setting("DBSCAN neighbours of a core point, itself included", group="clustering and memory")
    k1: int = setting("k-reciprocal neighbourhood size", group="clustering and memory")
    k2: int = setting("neighbours of the local query expansion", group="clustering and memory")
    jaccard: str = setting(
        "cluster_contrast: k1 neighbours counting the image itself, softmax(-squared distance) weights (the "
        "original's clustering); reranking: k1 + 1 neighbours, exp(-d / row max) weights (Zhong et al., as "
        "pass-hub eval --rerank)", group="clustering and memory", choices=("cluster_contrast", "reranking"))
    camera_centering: bool = setting("cluster features minus their camera's mean feature (not in the original; "
                                     "helps when cameras differ more than people)", group="clustering and memory")
    temperature: float = setting("softmax temperature of the cluster-contrast loss", group="clustering and memory")
    memory_momentum: float = setting("weight of the old centroid in the memory update", group="clustering and memory")
    memory_update: str = setting(
        "hardest: per cluster in the batch, its member least similar to the centroid moves it (the original's "
        "--use-hard, every released script); every_instance: each member of the batch, one after the other (the "
        "original without --use-hard)", group="clustering and memory", choices=("hardest", "every_instance"))
    epochs: int = setting("epochs (one clustering each)", group="optimisation")
    iters_per_epoch: int = setting("optimiser steps per epoch", group="optimisation")
    global_batch_size: int = setting("images per optimiser step over all processes", group="optimisation")
    optimizer: str = setting("sgd (the original) or adamw", group="optimisation", choices=REID_OPTIMIZERS)
    lr: float = setting("learning rate", group="optimisation")
    weight_decay: float = setting("weight decay (every trainable tensor)", group="optimisation")
    momentum: float = setting("SGD momentum", group="optimisation")
    lr_step_epochs: int = setting("lr x0.1 every this many epochs", group="optimisation")
    mixed_precision: str = setting("autocast precision", group="optimisation", choices=PRECISIONS)
    seed: int = setting("seed of weights, augmentation and batches", group="optimisation")
    cudnn_benchmark: bool = _shared("cudnn_benchmark")
    cudnn_deterministic: bool = _shared("cudnn_deterministic")
    eval_every: int = _shared("eval_every")
    flip_test: bool = _shared("flip_test")
    test_resize: str = _shared("test_resize")
    publish: str = _shared("publish")

    def __post_init__(self) -> None:
        _check_preset(self.preset, from_init=True)
        _check_size(self.image_size, "image_size")
        _check_pk_batch(self.global_batch_size, self.num_instances)
        for name in ("epochs", "iters_per_epoch", "lr_step_epochs", "min_samples", "k1", "k2"):
            _check(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        _check(self.eps > 0 and self.temperature > 0 and 0 <= self.memory_momentum < 1,
               "--eps and --temperature must be > 0 and --memory_momentum in [0, 1)")
        _check(self.lr > 0 and self.eval_every >= 0, "--lr must be > 0 and --eval_every >= 0")


SETTINGS = {"pretrain": PretrainSettings, "finetune": FinetuneSettings, "usl": ClusterContrastSettings}


# ------------------------------------------------------------------------------------------------ recipes
@dataclass(frozen=True)
class Recipe:
    """One named set of values for every setting of a script.

    Attributes:
        name: ``--recipe`` value.
        script: ``pretrain``, ``finetune`` or ``usl``.
        original: The released original script it reproduces (``cpu_demo``: none).
        settings: A value for every setting.
        init: Default ``--init`` (a released file name, a preset for random init); None: the user must give one.
        needs: What the user must supply, in words (shown when it is missing and in the README table).
        launch: How the original ran, for the command line (``--multi_gpu --num_processes 8``).
    """

    name: str
    script: str
    original: str
    settings: Any
    init: str | None = None
    needs: str = ""
    launch: str = ""

    def command(self, paths: str) -> str:
        """The ``accelerate launch`` line of this recipe, ``paths`` being its data (and ``--init``) flags."""
        launch = f"accelerate launch {self.launch} " if self.launch else "accelerate launch "
        return f"{launch}training/{self.script}.py --recipe {self.name} {paths}".rstrip()


_PRETRAIN_VIT_S = PretrainSettings(
    data="image_folder", image_size=(256, 128), local_image_size=(128, 64), global_crop_scale=(0.4, 1.0),
    local_crop_scale=(0.1, 0.8), local_crops_per_stripe=3, colour_jitter=1.0, grayscale=0.2,
    preset="pass_vit_small", part_tokens=True, out_dim=65536, head_hidden_dim=2048, head_bottleneck_dim=256,
    drop_path_rate=0.1, pos_embed_resampling="original", token_init="original",
    epochs=100, global_batch_size=1024, lr=5e-4, min_lr=1e-6, warmup_epochs=10, weight_decay=0.04,
    weight_decay_end=0.4, momentum_teacher=0.996, clip_grad=3.0, freeze_last_layer=1, student_temp=0.1,
    teacher_temp=0.04, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=0, center_momentum=0.9,
    centering="ema", mixed_precision="fp16", seed=0,
)
# Sized for minutes on a CPU (make demo). Colour jitter off: SynthPerson identities differ mainly in clothing
# colour. Teacher momentum 0.9: with 0.99 over ~100 steps the exported teacher is still half its random init.
_PRETRAIN_CPU = dataclasses.replace(
    _PRETRAIN_VIT_S, data="synthetic", image_size=(128, 64), local_image_size=(64, 32), colour_jitter=0.0,
    grayscale=0.0, preset="pass_vit_tiny", out_dim=4096, pos_embed_resampling="as_needed", token_init="timm",
    epochs=6, global_batch_size=32, lr=4e-3, warmup_epochs=1, momentum_teacher=0.9, mixed_precision="no",
)
LUPERSON = "LUPerson (unlabelled crops, --data image_folder --data_dir DIR)"

_MARKET_VIT_S_256 = FinetuneSettings(
    dataset="market1501", image_size=(256, 128), num_instances=4, preset="pass_vit_small", drop_path_rate=0.1,
    neck="per_token", feature_fusion="cat", normalize_neck_outputs=False, reid_feature="before_neck",
    epochs=120, global_batch_size=64, optimizer="sgd", lr=4e-4, weight_decay=1e-4, weight_decay_bias=1e-4,
    momentum=0.9, bias_lr_factor=2.0,
    warmup_epochs=20, warmup_start_factor=0.01, final_lr_factor=0.002, label_smoothing=0.0, triplet_margin=None,
    triplet_weight=1.0, ce_weight=1.0, mixed_precision="fp16", seed=42, cudnn_benchmark=True,
    cudnn_deterministic=True, eval_every=120, flip_test=False, test_resize="bilinear", publish="final",
)
# AdamW: from scratch, a few hundred steps of the original SGD stay near chance on SynthPerson. No warm-up: the
# per-epoch schedule would spend a whole epoch of 16 steps at 0.01x lr (random init, 160 steps: 3.9% mAP with one
# warm-up epoch, 7.2% without; 13 epochs = 208 steps without: 10.0%).
_FINETUNE_CPU = dataclasses.replace(
    _MARKET_VIT_S_256, dataset="synthetic", image_size=(128, 64), preset="pass_vit_tiny", epochs=13,
    optimizer="adamw", lr=1e-3, weight_decay=0.05, weight_decay_bias=0.0, bias_lr_factor=1.0, warmup_epochs=0,
    mixed_precision="no", seed=0,
    cudnn_benchmark=False, cudnn_deterministic=False, eval_every=5,
)

_USL_MARKET = ClusterContrastSettings(
    dataset="market1501", source_dataset=None, image_size=(256, 128), num_instances=8, sampler="camera_aware",
    random_erasing="cluster_contrast", preset="pass_vit_small", drop_path_rate=0.3, neck="single",
    feature_fusion="cat", normalize_neck_outputs=False, reid_feature="after_neck", eps=0.6, min_samples=4, k1=30,
    k2=6, jaccard="cluster_contrast", camera_centering=False, temperature=0.05, memory_momentum=0.2,
    memory_update="hardest", epochs=50,
    iters_per_epoch=200, global_batch_size=256, optimizer="sgd", lr=3.5e-4, weight_decay=5e-4, momentum=0.9,
    lr_step_epochs=20, mixed_precision="no", seed=1, cudnn_benchmark=True, cudnn_deterministic=True, eval_every=10,
    flip_test=False, test_resize="bicubic", publish="best_test_evaluation",
)
_USL_CPU = dataclasses.replace(
    _USL_MARKET, dataset="synthetic", image_size=(128, 64), sampler="pk", random_erasing="transreid",
    preset="pass_vit_tiny", drop_path_rate=0.1, neck="per_token", jaccard="reranking", epochs=10, iters_per_epoch=20,
    global_batch_size=64, seed=0, cudnn_benchmark=False, cudnn_deterministic=False, eval_every=0,
    test_resize="bilinear", publish="final",
)
PASS_S, PASS_B = "pass_vit_small_full.pth", "pass_vit_base_full.pth"
WEIGHTS = "the released PASS weights (--init {}, from the PASS repository's download links)"


def _finetune(name: str, original: str, preset: str, dataset: str, size: int, seed: int) -> Recipe:
    settings = dataclasses.replace(_MARKET_VIT_S_256, preset=preset, dataset=dataset, image_size=(size, 128),
                                   seed=seed)
    init = PASS_S if preset == "pass_vit_small" else PASS_B
    data = "Market-1501" if dataset == "market1501" else "MSMT17 V1"
    return Recipe(name, "finetune", f"PASS_transreid/{original}", settings, init=init,
                  needs=f"{data} (--data_dir DIR) and {WEIGHTS.format(init)}")


def _cluster(name: str, original: str, init: str | None, needs: str, gpus: int, **changes: Any) -> Recipe:
    # The original ran one DataParallel process over `gpus` GPUs: as many processes split the batch alike.
    return Recipe(name, "usl", f"PASS_cluster_contrast_reid/{original}", dataclasses.replace(_USL_MARKET, **changes),
                  init=init, needs=needs, launch=f"--multi_gpu --num_processes {gpus}")


RECIPES: dict[str, dict[str, Recipe]] = {
    "pretrain": {
        DEFAULT_RECIPE: Recipe(DEFAULT_RECIPE, "pretrain", "none: sized for minutes on a CPU", _PRETRAIN_CPU,
                               needs="nothing (the built-in SynthPerson pool)"),
        "pass_vit_small_lup": Recipe("pass_vit_small_lup", "pretrain", "PASS/script/vit-s_full_lup-pass.sh",
                                     _PRETRAIN_VIT_S, needs=LUPERSON, launch="--multi_gpu --num_processes 8"),
        "pass_vit_base_lup": Recipe(
            "pass_vit_base_lup", "pretrain", "PASS/script/vit-b_full_lup-pass.sh",
            dataclasses.replace(_PRETRAIN_VIT_S, preset="pass_vit_base", global_batch_size=512), needs=LUPERSON,
            launch="--multi_gpu --num_processes 8"),
    },
    "finetune": {
        DEFAULT_RECIPE: Recipe(DEFAULT_RECIPE, "finetune", "none: sized for minutes on a CPU", _FINETUNE_CPU,
                               init="pass_vit_tiny", needs="nothing (SynthPerson; random init unless --init)"),
        **{recipe.name: recipe for recipe in (
            _finetune("market_vit_small_256", "run_pass_vit_small_Market.sh", "pass_vit_small", "market1501", 256, 42),
            _finetune("market_vit_small_384", "run_pass_vit_small_Market_384.sh", "pass_vit_small", "market1501",
                      384, 42),
            _finetune("msmt17_vit_small_256", "run_pass_vit_small_MSMT17.sh", "pass_vit_small", "msmt17", 256, 1234),
            _finetune("msmt17_vit_small_384", "run_pass_vit_small_MSMT17_384.sh", "pass_vit_small", "msmt17", 384,
                      1234),
            _finetune("market_vit_base_256", "run_pass_vit_base_Market.sh", "pass_vit_base", "market1501", 256, 42),
            _finetune("market_vit_base_384", "run_pass_vit_base_Market_384.sh", "pass_vit_base", "market1501", 384,
                      1234),
            _finetune("msmt17_vit_base_256", "run_pass_vit_base_MSMT17.sh", "pass_vit_base", "msmt17", 256, 42),
            _finetune("msmt17_vit_base_384", "run_pass_vit_base_MSMT17_384.sh", "pass_vit_base", "msmt17", 384, 42),
        )},
    },
    "usl": {
        DEFAULT_RECIPE: Recipe(DEFAULT_RECIPE, "usl", "none: sized for minutes on a CPU", _USL_CPU,
                               init="pass_vit_tiny", needs="nothing (SynthPerson; random init unless --init)"),
        **{recipe.name: recipe for recipe in (
            _cluster("market_usl_vit_small", "market_usl_cat_singleneck.sh", PASS_S,
                     f"Market-1501 (--data_dir DIR) and {WEIGHTS.format(PASS_S)}", gpus=4),
            _cluster("msmt17_usl_vit_small", "msmt_usl_mean_singleneck.sh", PASS_S,
                     f"MSMT17 V1 (--data_dir DIR) and {WEIGHTS.format(PASS_S)}", gpus=2,
                     dataset="msmt17", feature_fusion="mean", eps=0.7, eval_every=50),
            _cluster("msmt17_to_market_vit_small", "market_uda_cat.sh", None,
                     "Market-1501 (--data_dir DIR) and a model fine-tuned on MSMT17 by finetune.py --recipe "
                     "msmt17_vit_small_256 (--init FOLDER)", gpus=4,
                     source_dataset="msmt17", neck="per_token", normalize_neck_outputs=True),
            _cluster("market_to_msmt17_vit_small", "msmt_uda_mean.sh", None,
                     "MSMT17 V1 (--data_dir DIR) and a model fine-tuned on Market-1501 by finetune.py --recipe "
                     "market_vit_small_256 --feature_fusion mean (--init FOLDER; no such source script was "
                     "released, its path implies mean fusion)", gpus=2,
                     dataset="msmt17", source_dataset="market1501", neck="per_token", feature_fusion="mean",
                     normalize_neck_outputs=True, eps=0.7),
        )},
    },
}


# ------------------------------------------------------------------------------------- resolving a run
def loader_name(spec: str) -> str:
    """The loader of a dataset spec: what a recipe fixes (the folder or options after ':' are the user's)."""
    return spec.split(":", 1)[0]


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe with the settings given on the command line applied.

    Attributes:
        recipe: The recipe.
        settings: Its settings with the explicit flags applied.
        overridden: ``{name: {"recipe": value, "given": value}}`` for every setting whose value was replaced.
    """

    recipe: Recipe
    settings: Any
    overridden: dict[str, dict[str, Any]]

    def describe(self) -> str:
        """One line for logs and model cards: the recipe, what it reproduces, and what was overridden."""
        text = f"recipe `{self.recipe.name}` ({self.recipe.original})"
        if not self.overridden:
            return text + ", no setting overridden"
        changes = ", ".join(
            f"{name} {_text(values['recipe'])} -> {_text(values['given'])}"
            + (f" (from {values['by']})" if "by" in values else "")
            for name, values in self.overridden.items()
        )
        return text + f" with {len(self.overridden)} setting(s) overridden: {changes}"

    def with_settings(self, settings: Any, source: str) -> ResolvedRecipe:
        """These settings replaced by ``settings`` (e.g. the architecture a checkpoint fixes); each changed value
        is reported as overridden by ``source``."""
        overridden = dict(self.overridden)
        for name in setting_names(type(settings)):
            value, before = getattr(settings, name), getattr(self.settings, name)
            if value != before:
                recipe_value = overridden.get(name, {"recipe": getattr(self.recipe.settings, name)})["recipe"]
                overridden[name] = {"recipe": recipe_value, "given": value, "by": source}
        return ResolvedRecipe(self.recipe, settings, overridden)

    def to_json(self, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "script": f"training/{self.recipe.script}.py",
            "recipe": self.recipe.name,
            "original": self.recipe.original,
            "settings": settings_as_json(self.settings),
            "overridden": self.overridden,
            "inputs": inputs or {},
        }


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return "none" if value is None else str(value)


def resolve(recipe: Recipe, given: dict[str, Any]) -> ResolvedRecipe:
    """``recipe`` with the ``given`` settings applied; ``ValueError`` naming a bad value or an unknown setting.

    A dataset given as ``loader:folder`` overrides the recipe only if its loader differs.
    """
    unknown = sorted(set(given) - set(setting_names(type(recipe.settings))))
    if unknown:
        raise ValueError(f"not a setting of training/{recipe.script}.py: {', '.join(unknown)}")
    settings = dataclasses.replace(recipe.settings, **given)
    overridden = {}
    for name, value in given.items():
        before = getattr(recipe.settings, name)
        same = loader_name(value) == loader_name(before) if name in ("data", "dataset") else value == before
        if not same:
            overridden[name] = {"recipe": before, "given": value}
    return ResolvedRecipe(recipe, settings, overridden)


def parse_script_args(
    parser: argparse.ArgumentParser, script: str, argv: list[str] | None, inputs: tuple[str, ...] = ()
) -> argparse.Namespace:
    """Parse a script's command line: ``--recipe``, ``--print_config``, one flag per setting, and the script's own.

    Every setting lands on the namespace as an attribute (``args.lr``), with ``args.settings`` (the settings
    object), ``args.resolved`` (:class:`ResolvedRecipe`) and ``args.recipe`` (its name). ``inputs`` name the
    namespace attributes that say where data and weights are (``init``, ``data_dir``): an unset ``init`` takes the
    recipe's. ``--print_config`` prints :meth:`ResolvedRecipe.to_json` and exits.
    """
    table = RECIPES[script]
    settings_class = SETTINGS[script]
    parser.add_argument("--recipe", choices=list(table), default=DEFAULT_RECIPE,
                        help=f"the settings of one released original script (default: {DEFAULT_RECIPE}, minutes on a "
                        "CPU); flags given explicitly override it: " + ", ".join(table))
    parser.add_argument("--print_config", action="store_true",
                        help="print the resolved settings as JSON and exit before loading anything")
    add_settings_flags(parser, settings_class, shown=table[DEFAULT_RECIPE].settings, shown_name=DEFAULT_RECIPE)
    args = parser.parse_args(argv)
    recipe = table[args.recipe]
    try:
        resolved = resolve(recipe, given_settings(settings_class, args))
    except ValueError as err:  # one line: the full usage would bury it
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if "init" in inputs and args.init is None:
        args.init = recipe.init
    for name in setting_names(settings_class):
        setattr(args, name, getattr(resolved.settings, name))
    args.settings, args.resolved = resolved.settings, resolved
    if args.print_config:
        print(json.dumps(resolved.to_json({name: getattr(args, name) for name in inputs}), indent=2))
        raise SystemExit(0)
    return args
