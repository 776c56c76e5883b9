"""PASS pre-training (part-aware DINO) with accelerate.

    accelerate launch training/pretrain.py                              # cpu_demo: SynthPerson, ViT-tiny, CPU
    accelerate launch --multi_gpu --num_processes 8 training/pretrain.py --recipe pass_vit_small_lup \\
        --data image_folder --data_dir /data/LUPerson                   # PASS/script/vit-s_full_lup-pass.sh
    accelerate launch training/pretrain.py --recipe pass_vit_small_lup --print_config   # its settings, as JSON
    accelerate launch training/pretrain.py --recipe pass_vit_small_lup --init checkpoint.pth \\
        --data image_folder --data_dir /my/crops                        # continue the original on your own crops

The student sees 2 global and 3 x C local views, the teacher (an EMA of the student) the global views only;
four heads (CLS, PART1-3) and four centers. At the end the teacher backbone is published as a hub folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pass_hub
from pass_hub.atomic import write_json_atomic
from pass_hub.evaluation.protocol import evaluate_model
from pass_hub.flags import FlagParser, positive_int
from pass_hub.models.backbone import PassVisionTransformer
from pass_hub.models.model_card import render_model_card, results_table
from training.engine import recipes, runtime
from training.engine.data import SeededTransformDataset, dataset_spec
from training.pretraining.checkpoints import PretrainingStart, load_pretraining_start
from training.pretraining.losses import teacher_collapse_stats
from training.pretraining.step import NUM_STRIPES, PassPretrainer
from training.pretraining.views import PassViews, ViewConfig

MODEL_FOLDER = "pass-vit-pretrained"
TARGETS_TEXT = {"ema": "centering with an EMA center (the paper)", "sinkhorn_knopp": "Sinkhorn-Knopp (DINOv2)"}
LOGGED = (
    "loss", "teacher_entropy", "teacher_batch_entropy", "lr", "weight_decay", "momentum", "teacher_temp",
    "images_per_second",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    runtime.add_run_arguments(parser, default_output_dir="outputs/pretrain")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--data_dir", default=None, help="folder of the --data loader (same as --data NAME:DIR)")
    inputs.add_argument("--split", default=None, help="split to pre-train on (default: 'unlabelled', else 'train')")
    inputs.add_argument("--init", default=None,
                        help="start from an original checkpoint.pth, a pass-hub pre-training run folder (student, "
                        "teacher, heads and centers), or a backbone (pass_vit_small_full.pth, a pass-hub folder: new "
                        "heads); its architecture replaces the recipe's")
    inputs.add_argument("--num_heads", type=positive_int, default=None,
                        help="attention heads of the --init checkpoint, where its width / 64 is not the number")
    inputs.add_argument("--init_optimizer", action="store_true",
                        help="with --init: also take its optimizer state, epoch and fp16 scaler (a true resume)")
    parser.add_argument("--skip_frozen_eval", action="store_true",
                        help="skip the frozen-feature ReID evaluation (run when the data has query/gallery splits)")
    args = recipes.parse_script_args(parser, "pretrain", argv, inputs=("data_dir", "split", "init"))
    if args.init_optimizer and not args.init:
        parser.error("--init_optimizer needs --init")
    return args


def load_start(args: argparse.Namespace) -> PretrainingStart | None:
    """What ``--init`` names; its architecture becomes the run's settings (reported as overrides)."""
    if args.init is None:
        return None
    try:
        start = load_pretraining_start(args.init, num_heads=args.num_heads)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err) if str(args.init) in str(err) else f"--init {args.init}: {err}") from None
    settings = start.settings_for(args.settings)
    try:
        start.check_run(settings, args.init_optimizer)
    except ValueError as err:
        raise SystemExit(f"--init {err}") from None
    args.resolved = args.resolved.with_settings(settings, "--init")
    args.settings = settings
    for name, value in vars(settings).items():
        setattr(args, name, value)
    return start


def load_images(args: argparse.Namespace):
    from pass_hub.data import load_dataset_spec

    args.data = dataset_spec(args.data, args.data_dir, args.resolved.recipe.needs)
    try:
        data = load_dataset_spec(args.data)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"--data {args.data}: {err}") from None
    name = args.split or ("unlabelled" if "unlabelled" in data else "train")
    if name not in data:
        raise SystemExit(f"--data {args.data}: no split {name!r} (has {sorted(data)})")
    if len(data[name]) == 0:
        raise SystemExit(f"--data {args.data}: split {name!r} is empty")
    return data, data[name]


def collate_views(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack global views as (2B, ...) view-major and local views as (S*C*B, ...) stripe, crop, sample order."""
    global_views = torch.stack([item["global_views"] for item in items], dim=1)  # (2, B, 3, H, W)
    local_views = torch.stack([item["local_views"] for item in items], dim=1)  # (S*C, B, 3, h, w)
    return {"global_views": global_views.flatten(0, 1), "local_views": local_views.flatten(0, 1)}


def view_config(args: argparse.Namespace) -> ViewConfig:
    return ViewConfig(
        image_size=tuple(args.image_size),
        local_size=tuple(args.local_image_size),
        global_scale=tuple(args.global_crop_scale),
        local_scale=tuple(args.local_crop_scale),
        num_stripes=NUM_STRIPES,
        local_crops_per_stripe=args.local_crops_per_stripe,
        colour_jitter=args.colour_jitter,
        grayscale_p=args.grayscale,
    )


def backbone_config(args: argparse.Namespace) -> pass_hub.PassViTConfig:
    return pass_hub.PassViTConfig.from_preset(args.preset, image_size=tuple(args.image_size))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = load_start(args)
    accelerator, output_dir, started = runtime.start_run(args)
    if start is not None:
        accelerator.print(f"--init {start.describe()}")
        grid = start.grid_change(args.settings)
        if grid:
            accelerator.print(f"--init {start.source}: its position table resampled from {grid[0]} to {grid[1]} "
                              f"patches (--image_size {args.image_size[0]} {args.image_size[1]})")

    with accelerator.main_process_first():
        dataset_dict, images = load_images(args)
    batch_size = runtime.per_process_batch(args, accelerator)
    dataset = SeededTransformDataset(images, PassViews(view_config(args)), seed=args.seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        collate_fn=collate_views,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG out of data loading
    )
    if len(loader) == 0:
        raise SystemExit(f"{len(images)} images are fewer than one batch of {batch_size} per process")
    loader = accelerator.prepare(loader)
    steps_per_epoch = len(loader) // args.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise SystemExit(f"{len(loader)} batches per process are fewer than --gradient_accumulation_steps")
    state = runtime.TrainingState()
    if start is None:
        trainer = PassPretrainer.build(args.settings, steps_per_epoch, accelerator)
    else:
        student, teacher, centers = start.networks(args.settings)
        trainer = PassPretrainer.build(args.settings, steps_per_epoch, accelerator, networks=(student, teacher),
                                       centers=centers)
        if args.init_optimizer:
            resume_original(start, trainer, state, accelerator)
    accelerator.register_for_checkpointing(trainer.teacher, trainer.centers, state)

    schedule_length = args.epochs * steps_per_epoch  # schedules span the full run even when --max_steps cuts it
    total_steps = schedule_length if args.max_steps is None else min(schedule_length, args.max_steps)
    checkpointer, resumed = runtime.resume_and_track(accelerator, args, "pass_pretrain")
    accelerator.print(
        f"pre-training {args.preset} on {len(images)} images ({args.data}), {accelerator.num_processes} process(es), "
        f"global batch {args.global_batch_size}, {total_steps} steps" + (f", resumed from {resumed}" if resumed else "")
    )

    def reduced_mean(value: float) -> float:
        return accelerator.reduce(torch.tensor(value, device=accelerator.device), "mean").item()

    monitor = runtime.RunMonitor(accelerator, args, state, checkpointer, total_steps, LOGGED, "pre-training")
    trainer.student.train()
    step_means = runtime.StepMeans()
    schedules = trainer.schedules
    for epoch, batch in monitor.batches(loader, [steps_per_epoch] * args.epochs, dataset, loader):
        step = state.step
        try:
            outcome = trainer.step(batch["global_views"], batch["local_views"], iteration=step)
        except FloatingPointError as err:
            raise SystemExit(f"{err}; stopping (lower --lr?)") from None
        step_means.add(loss=outcome.loss)
        if not outcome.optimizer_stepped:
            continue
        collapse = teacher_collapse_stats(outcome.targets)  # of the last micro-batch
        monitor.step_done(
            {
                "epoch": epoch,
                **step_means.pop(accelerator),
                **{name: reduced_mean(value) for name, value in collapse.items()},
                "lr": float(schedules.lr[step]),
                "weight_decay": float(schedules.weight_decay[step]),
                "momentum": float(schedules.momentum[step]),
                "teacher_temp": float(schedules.teacher_temp[epoch]),
            },
            images=args.global_batch_size,
        )
    monitor.close()

    student = trainer.student_network
    in_sync = runtime.replicas_in_sync(
        accelerator, [*trainer.teacher.parameters(), *student.parameters(), trainer.centers.centers]
    )
    backbone = teacher_as_model(trainer.teacher.backbone, args)
    results = {
        "recipe": args.recipe,
        "overridden": args.resolved.overridden,
        "preset": args.preset,
        "data": args.data,
        "images": len(images),
        "steps": state.step,
        "epochs": args.epochs,
        "global_batch": args.global_batch_size,
        "steps_per_epoch": steps_per_epoch,
        "init": start.describe() if start else None,
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


def resume_original(
    start: PretrainingStart, trainer: PassPretrainer, state: runtime.TrainingState, accelerator
) -> None:
    """``--init_optimizer``: the source's optimizer state and fp16 scaler, and its epoch as the run's start."""
    if start.epoch is None:
        raise SystemExit(f"--init_optimizer: {start.source} does not say which epoch it reached")
    try:
        start.load_optimizer(trainer.optimizer, trainer.student_network)
    except ValueError as err:
        raise SystemExit(f"--init_optimizer: {err}") from None
    if start.scaler and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(start.scaler)
    state.step = start.epoch * trainer.schedules.steps_per_epoch
    accelerator.print(f"--init_optimizer: continuing at epoch {start.epoch} (step {state.step}) with its optimizer")


def method_name(args: argparse.Namespace) -> str:
    return "PASS" if args.part_tokens else "DINO (no [PART] tokens)"


def teacher_as_model(backbone: PassVisionTransformer, args: argparse.Namespace) -> pass_hub.PassViTModel:
    """The teacher backbone inside a ``PassViTModel`` (ImageNet mean/std, the training input size).

    The published model adds the position table as learned at its own grid, as the original fine-tuning code does,
    whatever ``pos_embed_resampling`` the pre-training used.
    """
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
        f"Settings: {args.resolved.describe()}. {method_name(args)} pre-training on `{args.data}` "
        f"({results['images']} images), {results['steps']} steps with a global batch of {results['global_batch']} "
        f"over {args.epochs} epochs; AdamW, peak lr {args.lr} x batch/256 with {args.warmup_epochs} warm-up epochs "
        f"then cosine to {args.min_lr}; weight decay {args.weight_decay} -> {args.weight_decay_end}; teacher EMA "
        f"{args.momentum_teacher} -> 1; {args.out_dim} prototypes per head; teacher targets by "
        f"{TARGETS_TEXT[args.centering]}; {args.local_crops_per_stripe} local crops per stripe; colour jitter "
        f"x{args.colour_jitter} of the paper's, grayscale p {args.grayscale}; input {args.image_size[0]}x"
        f"{args.image_size[1]}; position table {args.pos_embed_resampling.replace('_', ' ')}, token init "
        f"{args.token_init}; {args.mixed_precision} mixed precision; seed {args.seed}. The published weights are "
        "the teacher's."
    )
    frozen = results.get("frozen_eval")
    card = render_model_card(
        model.config,
        kind="backbone",
        summary=f"A part-aware ViT backbone pre-trained with {method_name(args)} by pass-hub's `training/pretrain.py`"
        + ("." if args.part_tokens else " (an ablation: its [PART] tokens were never trained)."),
        training=training,
        results_table=(
            "Frozen-feature ReID on the evaluation split of the pre-training data (raw embedding, no fine-tuning):"
            f"\n\n{results_table(frozen)}" if frozen else None
        ),
    )
    return pass_hub.save_hub_folder(model, folder, model_card=card, overwrite=True)


if __name__ == "__main__":
    runtime.run_script(main)
