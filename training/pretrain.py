"""PASS pre-training (part-aware DINO) with accelerate.

    accelerate launch training/pretrain.py                                  # SynthPerson, ViT-tiny, minutes on a CPU
    accelerate launch --multi_gpu --num_processes 8 training/pretrain.py \\
        --data image_folder:/data/LUPerson --preset pass_vit_small --image_size 256 128 --epochs 100 \\
        --batch_size 128 --out_dim 65536 --warmup_epochs 10 --lr 5e-4 --momentum_teacher 0.996 \\
        --mixed_precision fp16                                           # the paper's ViT-S recipe

The student sees 2 global and 3 x C local views, the teacher (an EMA of the student) the global views only;
four heads (CLS, PART1-3) and four centers. At the end the teacher backbone is published as a hub folder.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pass_hub
from pass_hub.atomic import write_json_atomic
from pass_hub.backbone import PRESETS, PassVisionTransformer
from pass_hub.evaluation import evaluate_model
from pass_hub.model_card import render_model_card, results_table
from training import runtime
from training.data import SeededTransformDataset
from training.heads import PartAwareHeads
from training.losses import (
    centered_teacher_targets,
    part_aware_cross_entropy,
    sinkhorn_knopp_targets,
    teacher_collapse_stats,
    updated_centers,
)
from training.optim import clip_gradients_per_tensor, ema_update, set_hyperparameters, weight_decay_groups
from training.pass_pretraining import PartAwareDINO
from training.schedules import cosine_schedule, warmup_then_constant
from training.views import PassViews, ViewConfig

MODEL_FOLDER = "pass-vit-pretrained"
TARGETS_TEXT = {"ema": "centering with an EMA center (the paper)", "sinkhorn_knopp": "Sinkhorn-Knopp (DINOv2)"}
LOGGED = (
    "loss", "teacher_entropy", "teacher_batch_entropy", "lr", "weight_decay", "momentum", "teacher_temp",
    "images_per_second",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    runtime.add_run_arguments(parser, default_output_dir="outputs/pretrain")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic", help="dataset spec (see pass_hub.data.load_dataset_spec)")
    data.add_argument("--split", default=None, help="split to pre-train on (default: 'unlabelled', else 'train')")
    data.add_argument("--image_size", nargs=2, type=int, default=[128, 64], metavar=("H", "W"),
                      help="training input; 128x64 keeps CPU runs short, the paper uses 256 128")
    data.add_argument("--local_crops_per_stripe", type=int, default=3)
    data.add_argument("--colour_jitter", type=float, default=1.0,
                      help="strength of the (0.4, 0.4, 0.2, 0.1) colour jitter; 1 is the paper's, 0 turns it off")
    data.add_argument("--grayscale", type=float, default=0.2, help="probability of a grayscale view")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="pass_vit_tiny")
    model.add_argument("--out_dim", type=int, default=4096, help="prototypes per head (65536 in the paper)")
    model.add_argument("--head_hidden_dim", type=int, default=2048)
    model.add_argument("--head_bottleneck_dim", type=int, default=256)
    model.add_argument("--drop_path_rate", type=float, default=0.1, help="student stochastic depth")
    model.add_argument("--no_part_tokens", action="store_true",
                       help="plain DINO, the ablation: no [PART] token in any view, CLS head and loss terms only")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=4e-3,
                       help="peak lr per 256 images of global batch (scaled linearly); the paper uses 5e-4")
    optim.add_argument("--min_lr", type=float, default=1e-6)
    optim.add_argument("--warmup_epochs", type=float, default=1.0)
    optim.add_argument("--weight_decay", type=float, default=0.04)
    optim.add_argument("--weight_decay_end", type=float, default=0.4)
    optim.add_argument("--momentum_teacher", type=float, default=0.99,
                       help="base teacher EMA momentum (cosine to 1); 0.996 in the paper's long runs")
    optim.add_argument("--clip_grad", type=float, default=3.0, help="per-tensor gradient norm limit (0: off)")
    optim.add_argument("--freeze_last_layer", type=int, default=1, help="epochs with the heads' last layers frozen")
    optim.add_argument("--student_temp", type=float, default=0.1)
    optim.add_argument("--teacher_temp", type=float, default=0.04)
    optim.add_argument("--warmup_teacher_temp", type=float, default=0.04)
    optim.add_argument("--warmup_teacher_temp_epochs", type=float, default=0.0)
    optim.add_argument("--center_momentum", type=float, default=0.9)
    optim.add_argument("--centering", choices=("ema", "sinkhorn_knopp"), default="ema",
                       help="teacher targets: EMA centers (the paper) or Sinkhorn-Knopp (DINOv2), which spreads "
                       "every batch over the prototypes and so cannot collapse (with gradient accumulation, "
                       "every micro-batch)")
    parser.add_argument("--skip_frozen_eval", action="store_true",
                        help="skip the frozen-feature ReID evaluation (run when the data has query/gallery splits)")
    args = parser.parse_args(argv)
    args.epochs = 10 if args.epochs is None else args.epochs
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    return args


def load_images(spec: str, split: str | None):
    from pass_hub.data import load_dataset_spec

    data = load_dataset_spec(spec)
    name = split or ("unlabelled" if "unlabelled" in data else "train")
    if name not in data:
        raise SystemExit(f"--data {spec}: no split {name!r} (has {sorted(data)})")
    if len(data[name]) == 0:
        raise SystemExit(f"--data {spec}: split {name!r} is empty")
    return data, data[name]


def collate_views(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack global views as (2B, ...) view-major and local views as (S*C*B, ...) stripe, crop, sample order."""
    global_views = torch.stack([item["global_views"] for item in items], dim=1)  # (2, B, 3, H, W)
    local_views = torch.stack([item["local_views"] for item in items], dim=1)  # (S*C, B, 3, h, w)
    return {"global_views": global_views.flatten(0, 1), "local_views": local_views.flatten(0, 1)}


def build_backbone(args: argparse.Namespace, drop_path_rate: float) -> PassVisionTransformer:
    return PassVisionTransformer(
        img_size=tuple(args.image_size),
        patch_size=16,
        num_classes=0,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        **PRESETS[args.preset],
    )


def backbone_config(args: argparse.Namespace) -> pass_hub.PassViTConfig:
    return pass_hub.PassViTConfig.from_preset(args.preset, image_size=tuple(args.image_size))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator, output_dir, started = runtime.start_run(args)

    with accelerator.main_process_first():
        dataset_dict, images = load_images(args.data, args.split)
    view_config = ViewConfig(
        image_size=tuple(args.image_size),
        local_crops_per_stripe=args.local_crops_per_stripe,
        colour_jitter=args.colour_jitter,
        grayscale_p=args.grayscale,
    )
    dataset = SeededTransformDataset(images, PassViews(view_config), seed=args.seed)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        collate_fn=collate_views,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG out of data loading
    )
    if len(loader) == 0:
        raise SystemExit(f"{len(images)} images are fewer than one batch of {args.batch_size} per process")

    embed_dim = PRESETS[args.preset]["embed_dim"]

    def new_network(drop_path_rate: float) -> PartAwareDINO:
        backbone = build_backbone(args, drop_path_rate)
        num_parts = 0 if args.no_part_tokens else backbone.num_parts
        heads = PartAwareHeads(embed_dim, args.out_dim, args.head_hidden_dim, args.head_bottleneck_dim, num_parts)
        return PartAwareDINO(backbone, heads, use_parts=not args.no_part_tokens)

    student = new_network(args.drop_path_rate)
    teacher = new_network(0.0)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    centers = CentersState(1 + student.num_parts, args.out_dim)
    state = runtime.TrainingState()
    optimizer = torch.optim.AdamW(weight_decay_groups(student))
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    teacher.to(accelerator.device)
    centers.to(accelerator.device)
    accelerator.register_for_checkpointing(teacher, centers, state)

    steps_per_epoch = len(loader) // args.gradient_accumulation_steps
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    global_batch = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    peak_lr = args.lr * global_batch / 256
    schedule_length = args.epochs * steps_per_epoch  # schedules span the full run even when --max_steps cuts it
    warmup = min(round(args.warmup_epochs * steps_per_epoch), schedule_length)
    lr_schedule = cosine_schedule(peak_lr, args.min_lr, schedule_length, warmup)
    wd_schedule = cosine_schedule(args.weight_decay, args.weight_decay_end, schedule_length)
    momentum_schedule = cosine_schedule(args.momentum_teacher, 1.0, schedule_length)
    temp_schedule = warmup_then_constant(
        args.teacher_temp,
        args.warmup_teacher_temp,
        schedule_length,
        min(round(args.warmup_teacher_temp_epochs * steps_per_epoch), schedule_length),
    )

    checkpointer, resumed = runtime.resume_and_track(accelerator, args, "pass_pretrain")
    accelerator.print(
        f"pre-training {args.preset} on {len(images)} images ({args.data}), {accelerator.num_processes} process(es), "
        f"global batch {global_batch}, {total_steps} steps" + (f", resumed from {resumed}" if resumed else "")
    )

    def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(tensor, "sum") if accelerator.num_processes > 1 else tensor

    def reduced_mean(value: float) -> float:
        return accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean").item()

    unwrapped = accelerator.unwrap_model(student)
    monitor = runtime.RunMonitor(accelerator, args, state, checkpointer, total_steps, LOGGED, "pre-training")
    student.train()
    step_means = runtime.StepMeans()
    for epoch, batch in monitor.batches(loader, steps_per_epoch, dataset, loader):
        step = state.step
        with accelerator.accumulate(student):
            global_views, local_views = batch["global_views"], batch["local_views"]
            crops_per_stripe = args.local_crops_per_stripe * (global_views.shape[0] // 2)
            stripes = torch.arange(view_config.num_stripes, device=local_views.device)
            stripes = stripes.repeat_interleave(crops_per_stripe)
            teacher_temp = float(temp_schedule[step])
            with torch.no_grad(), accelerator.autocast():  # the student's precision (prepare() wraps only it)
                teacher_out = teacher(global_views).float()
                if args.centering == "sinkhorn_knopp":
                    targets = sinkhorn_knopp_targets(teacher_out, teacher_temp, all_reduce_sum=all_reduce_sum)
                else:
                    targets = centered_teacher_targets(teacher_out, centers.centers, teacher_temp)
            out = student(global_views, local_views, stripes)
            loss = part_aware_cross_entropy(
                targets, out.global_out, out.local_cls, out.local_part, student_temp=args.student_temp
            )
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss is {loss.item()} at step {step}; stopping (lower --lr?)")
            set_hyperparameters(optimizer, float(lr_schedule[step]), float(wd_schedule[step]))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if args.clip_grad:
                    accelerator.unscale_gradients(optimizer)
                    clip_gradients_per_tensor(student.parameters(), args.clip_grad)
                if epoch < args.freeze_last_layer:
                    for param in unwrapped.heads.last_layer_parameters():
                        param.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_means.add(loss=loss)
            if args.centering == "ema":
                centers.collect(teacher_out)
        if not accelerator.sync_gradients:
            continue
        if args.centering == "ema":
            centers.update(args.center_momentum, accelerator)
        ema_update(teacher, unwrapped, float(momentum_schedule[step]))
        collapse = teacher_collapse_stats(targets)  # of the last micro-batch
        monitor.step_done(
            {
                "epoch": epoch,
                **step_means.pop(accelerator),
                **{name: reduced_mean(value) for name, value in collapse.items()},
                "lr": float(lr_schedule[step]),
                "weight_decay": float(wd_schedule[step]),
                "momentum": float(momentum_schedule[step]),
                "teacher_temp": float(temp_schedule[step]),
            },
            images=global_batch,
        )
    monitor.close()

    in_sync = runtime.replicas_in_sync(accelerator, [*teacher.parameters(), *unwrapped.parameters(), centers.centers])
    backbone = teacher_as_model(teacher.backbone, args)
    results = {
        "preset": args.preset,
        "data": args.data,
        "images": len(images),
        "steps": state.step,
        "epochs": args.epochs,
        "global_batch": global_batch,
        "final_loss": state.history[-1]["loss"] if state.history else None,
        "replicas_in_sync": in_sync,
        "num_processes": accelerator.num_processes,
    }
    if not args.skip_frozen_eval and {"query", "gallery"} <= set(dataset_dict):
        results["frozen_eval"] = frozen_feature_eval(backbone, dataset_dict, args, accelerator)
    results["wall_time_seconds"] = time.perf_counter() - started
    if accelerator.is_main_process:
        folder = export_teacher(backbone, args, results, output_dir / MODEL_FOLDER)
        results["model"] = str(folder)
        write_json_atomic(output_dir / "results.json", results)
        took = runtime.seconds_to_text(results["wall_time_seconds"])
        accelerator.print(f"done in {took}; teacher backbone in {folder}")
        if "frozen_eval" in results:
            accelerator.print(results_table(results["frozen_eval"]))
    accelerator.end_training()
    return results


class CentersState(torch.nn.Module):
    """The four DINO centers (CLS, PART1-3), kept identical on every process and saved in checkpoints.

    They move once per optimiser step, on the teacher outputs of all its micro-batches, so that gradient
    accumulation uses the centers a batch of the whole size would (``collect`` each micro-batch, then ``update``).
    """

    def __init__(self, token_types: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.zeros(token_types, out_dim))
        self.step_outputs: list[torch.Tensor] = []

    @torch.no_grad()
    def collect(self, teacher_out: torch.Tensor) -> None:
        self.step_outputs.append(teacher_out.detach())

    @torch.no_grad()
    def update(self, momentum: float, accelerator) -> None:
        def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
            return accelerator.reduce(tensor, "mean") if accelerator.num_processes > 1 else tensor

        step_out = torch.cat(self.step_outputs, dim=1)
        self.step_outputs.clear()
        self.centers.copy_(updated_centers(self.centers, step_out, momentum, all_reduce_mean))


def method_name(args: argparse.Namespace) -> str:
    return "DINO (no [PART] tokens)" if args.no_part_tokens else "PASS"


def teacher_as_model(backbone: PassVisionTransformer, args: argparse.Namespace) -> pass_hub.PassViTModel:
    """The teacher backbone inside a ``PassViTModel`` (ImageNet mean/std, the training input size)."""
    model = pass_hub.PassViTModel(backbone_config(args))
    model.vit.load_state_dict(backbone.state_dict())
    return model.eval()


def frozen_feature_eval(model, data, args, accelerator) -> dict[str, dict[str, float]]:
    """mAP / Rank-k / mINP of the raw embedding (no fine-tuning) against a randomly initialised backbone."""
    torch.manual_seed(args.seed)
    random_init = pass_hub.PassViTModel(backbone_config(args)).eval()
    keys = ("mAP", "mINP", "rank1", "rank5", "rank10")
    scores = {}
    candidates = {f"{method_name(args)} pre-trained (frozen)": model, "random init (frozen)": random_init}
    for name, candidate in candidates.items():
        results = evaluate_model(candidate, data["query"], data["gallery"], accelerator=accelerator,
                                 num_workers=args.num_workers, progress=False)
        scores[name] = {key: float(results[key]) for key in keys}
    return scores


def export_teacher(model: pass_hub.PassViTModel, args: argparse.Namespace, results: dict, folder: Path) -> Path:
    """The teacher backbone as a hub folder (ImageNet mean/std processor) with a model card."""
    training = (
        f"{method_name(args)} pre-training on `{args.data}` ({results['images']} images), "
        f"{results['steps']} steps with a global batch of {results['global_batch']} over {args.epochs} epochs; "
        f"AdamW, peak lr {args.lr} x batch/256 with {args.warmup_epochs} warm-up epochs then cosine to {args.min_lr}; "
        f"weight decay {args.weight_decay} -> {args.weight_decay_end}; teacher EMA {args.momentum_teacher} -> 1; "
        f"{args.out_dim} prototypes per head; teacher targets by {TARGETS_TEXT[args.centering]}; "
        f"{args.local_crops_per_stripe} local crops per stripe; colour jitter "
        f"x{args.colour_jitter} of the paper's, grayscale p {args.grayscale}; "
        f"input {args.image_size[0]}x{args.image_size[1]}; seed {args.seed}. The published weights are the teacher's."
    )
    frozen = results.get("frozen_eval")
    card = render_model_card(
        model.config,
        kind="backbone",
        summary=f"A part-aware ViT backbone pre-trained with {method_name(args)} by pass-hub's `training/pretrain.py`"
        + (" (an ablation: its [PART] tokens were never trained)." if args.no_part_tokens else "."),
        training=training,
        results_table=(
            "Frozen-feature ReID on the evaluation split of the pre-training data (raw embedding, no fine-tuning):"
            f"\n\n{results_table(frozen)}" if frozen else None
        ),
    )
    return pass_hub.save_hub_folder(model, folder, model_card=card, overwrite=True)


if __name__ == "__main__":
    main()
