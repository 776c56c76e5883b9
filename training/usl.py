"""Unsupervised (USL) and domain-adaptive (UDA) person ReID with cluster-contrast and accelerate.

    accelerate launch training/usl.py                                   # cpu_demo: USL on SynthPerson, CPU
    accelerate launch training/usl.py --init outputs/pretrain/pass-vit-pretrained           # USL from PASS weights
    accelerate launch training/usl.py --init outputs/finetune/pass-vit-reid \\
        --dataset synthetic:domain=1 --source_dataset synthetic               # UDA: labelled source -> new target
    accelerate launch --multi_gpu --num_processes 4 training/usl.py --recipe market_usl_vit_small \\
        --init pass_vit_small_full.pth --data_dir /data/Market-1501-v15.09.15   # market_usl_cat_singleneck.sh

No identity label of the training split is used. Every epoch the training images are embedded, clustered by
DBSCAN on k-reciprocal Jaccard distances (outliers sit the epoch out) and a memory of cluster centroids is built;
training minimises the cluster-contrast loss on batches of pseudo-identities (the original's camera-aware
sampler: an anchor, then members from other cameras) while the hardest member of each cluster in a batch
updates its centroid. UDA is the same run starting from a model fine-tuned on a labelled source dataset
(``finetune.py``'s folder, or an original fine-tuned checkpoint); only its backbone is kept. The published
folder holds the final weights, or, in the paper recipes as in the original scripts, those of the best
test-split evaluation (its card says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pass_hub.flags import FlagParser
from training.cluster_contrast.step import ClusterContrastTrainer
from training.engine import recipes, runtime
from training.engine.data import SeededTransformDataset
from training.engine.optim import describe_reid_optimizer
from training.engine.reid import (
    PublishedWeights,
    add_evaluation_arguments,
    add_init_arguments,
    dataset_name,
    evaluate,
    finish_run,
    load_data_spec,
    load_start,
)
from training.engine.reid_start import load_usl_start
from training.engine.samplers import CameraAwareSampler, PKBatchSampler
from training.engine.transforms import reid_train_transform

UPDATES = {"hardest": "the hardest member of each cluster in a batch", "every_instance": "every member of a batch"}
LOGGED = ("loss", "lr", "clusters", "outlier_fraction", "label_ari", "mAP", "rank1", "images_per_second")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    runtime.add_run_arguments(parser, default_output_dir="outputs/usl")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--data_dir", default=None, help="dataset root for a loader name (same as --dataset NAME:DIR)")
    inputs.add_argument("--split", default="train", help="the split trained on; its identity labels are never used")
    add_init_arguments(inputs, "pass-hub folder / hub id (a PassViTForReID folder from finetune.py for UDA), original "
                       "PASS checkpoint, or a preset name (random init); default: the recipe's")
    add_evaluation_arguments(parser)
    args = recipes.parse_script_args(parser, "usl", argv, inputs=("init", "data_dir", "split"))
    if args.init is None:
        parser.error(f"--recipe {args.recipe} needs --init: {args.resolved.recipe.needs}")
    return args


def load_data(args: argparse.Namespace):
    data = load_data_spec(args)
    missing = [split for split in (args.split, "query", "gallery") if split not in data]
    if missing:
        raise SystemExit(f"--dataset {args.dataset}: no {', '.join(missing)} split(s) (has {sorted(data)})")
    if len(data[args.split]) == 0:
        raise SystemExit(f"--dataset {args.dataset}: the split {args.split!r} (--split) is empty")
    return data, data[args.split]


class PseudoLabelled(Dataset):
    """The clustered images of a split with their pseudo-label in ``label`` (outliers left out)."""

    def __init__(self, split: Any, labels: np.ndarray) -> None:
        self.split = split
        self.indices = np.flatnonzero(labels >= 0)
        self.labels = labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.split[int(self.indices[index])]["image"], "label": int(self.labels[index])}


def make_clusters(trainer: ClusterContrastTrainer, split, epoch: int, args) -> dict[str, float]:
    """Embed and cluster ``split`` for ``epoch`` (every process gets the labels and centroids); statistics."""
    features = trainer.extract_cluster_features(split, batch_size=args.eval_batch_size, num_workers=args.num_workers)
    clustering = trainer.cluster(features, split["camid"], epoch=epoch)
    labels, clusters = clustering.pseudo_labels, clustering.num_clusters
    outliers = float(np.mean(labels < 0))
    found = (f"epoch {epoch}: DBSCAN (--eps {args.eps}, --min_samples {args.min_samples}) found {clusters} "
             f"cluster(s) among {len(labels)} images ({100 * outliers:.0f}% outliers)")
    hint = "raise --eps or lower --min_samples" if outliers > 0.5 else "lower --eps"
    if clusters < 2:  # one cluster: the loss is 0 whatever the features
        raise SystemExit(f"{found}; cluster-contrast needs 2 or more: {hint}")
    if clusters < args.global_batch_size // args.num_instances:
        trainer.accelerator.print(f"{found}, fewer than --global_batch_size / --num_instances: this epoch's batches "
                                  f"hold only {clusters} x {args.num_instances} images (to avoid it: {hint})")
    statistics = {"clusters": float(clusters), "outlier_fraction": outliers}
    pids = np.asarray(split["pid"])
    if (pids >= 0).all():  # the split has identities: report how well the clusters match them (never trained on)
        from sklearn.metrics import adjusted_rand_score

        statistics["label_ari"] = float(adjusted_rand_score(pids[labels >= 0], labels[labels >= 0]))
    return statistics


def pseudo_labelled_loader(split, labels: np.ndarray, epoch: int, args: argparse.Namespace, accelerator):
    """The epoch's loader over the clustered images: exactly ``--iters_per_epoch`` steps on every process."""
    clustered = PseudoLabelled(split, labels)
    transform = reid_train_transform(tuple(args.image_size), erasing=args.random_erasing)
    dataset = SeededTransformDataset(clustered, transform, seed=args.seed, keep_columns=("label",))
    batch_size = runtime.per_process_batch(args, accelerator)
    batches = args.iters_per_epoch * args.gradient_accumulation_steps * accelerator.num_processes
    if args.sampler == "camera_aware":
        camids = np.asarray(split["camid"])[clustered.indices]
        try:
            sampler = CameraAwareSampler(clustered.labels, camids, args.num_instances, batch_size,
                                         args.global_batch_size, num_batches=batches, seed=args.seed)
            sampler.batches(epoch)
        except ValueError as err:
            raise SystemExit(f"epoch {epoch}: {err} (or use --sampler pk)") from None
    else:
        # Fewer clusters than batch / --num_instances (features that collapsed early on) give smaller batches.
        identities = min(batch_size // args.num_instances, len(np.unique(clustered.labels)))
        sampler = PKBatchSampler(clustered.labels, identities, args.num_instances, seed=args.seed,
                                 num_batches=batches)
    sampler.set_epoch(epoch)
    # Worker seeds come from this generator, not the global RNG, which must stay as a resumed run left it.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        generator=torch.Generator().manual_seed(args.seed))
    return accelerator.prepare_data_loader(loader), dataset, sampler


def read_source_dataset(init: str) -> str | None:
    """The dataset the card of the ``--init`` folder names, if any."""
    from huggingface_hub import ModelCard

    card = Path(init) / "README.md"
    datasets = ModelCard.load(card).data.datasets if card.is_file() else None
    return datasets[0] if datasets else None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator, output_dir, started = runtime.start_run(args)

    with accelerator.main_process_first():
        data, train = load_data(args)
    runtime.per_process_batch(args, accelerator)  # refuses a batch that does not split over the processes
    start, model = load_start(args, 0, accelerator, read=load_usl_start)  # cluster-contrast learns no classifier
    source = args.source_dataset or (read_source_dataset(args.init) if start.fine_tuned else None)
    setting = "UDA" if start.fine_tuned or args.source_dataset else "USL"
    trainer = ClusterContrastTrainer.build(args.settings, model, accelerator)
    model = trainer.model
    state = runtime.TrainingState()
    weights = PublishedWeights(output_dir / "published", args.publish)
    accelerator.register_for_checkpointing(state, weights, trainer.cluster_memory)

    steps_per_epoch = args.iters_per_epoch
    epoch_steps = [steps_per_epoch] * args.epochs
    schedule_length = args.epochs * steps_per_epoch
    total_steps = schedule_length if args.max_steps is None else min(schedule_length, args.max_steps)
    global_batch = args.global_batch_size

    checkpointer, resumed = runtime.resume_and_track(accelerator, args, "pass_usl")
    accelerator.print(
        f"{setting} from {args.init} on {args.dataset} ({len(train)} unlabelled images"
        + (f"; source {source}" if setting == "UDA" else "")
        + f"), {accelerator.num_processes} process(es), global batch {global_batch}, {total_steps} steps"
        + (f", resumed from {resumed}" if resumed else "")
    )

    monitor = runtime.RunMonitor(accelerator, args, state, checkpointer, total_steps, LOGGED, setting)
    model.train()
    step_means = runtime.StepMeans()
    while not monitor.finished:
        epoch = state.step // steps_per_epoch
        # A run resumed mid-epoch finds this epoch's clusters in its checkpoint (the model has moved on since).
        memory = trainer.cluster_memory
        statistics = {} if int(memory.epoch) == epoch else make_clusters(trainer, train, epoch, args)
        loader, dataset, sampler = pseudo_labelled_loader(train, memory.labels.cpu().numpy(), epoch, args,
                                                          accelerator)
        for _, batch in monitor.batches(loader, epoch_steps, dataset, sampler):
            step = state.step
            try:
                outcome = trainer.step(batch["pixel_values"], batch["label"], epoch)
            except FloatingPointError as err:
                raise SystemExit(f"{err} (step {step}); stopping (lower --lr?)") from None
            step_means.add(loss=outcome.loss)
            if not accelerator.sync_gradients:
                continue
            values = {"epoch": epoch, **step_means.pop(accelerator), "lr": trainer.learning_rate(epoch), **statistics}
            statistics = {}
            end_of_epoch = (step + 1) % steps_per_epoch == 0
            if args.eval_every and end_of_epoch and (epoch + 1) % args.eval_every == 0 and step + 1 < total_steps:
                evaluation = evaluate(model, data, args, accelerator, progress=False, return_per_query=True)
                values.update(weights.consider(evaluation, step + 1, accelerator.unwrap_model(model), accelerator))
            shares = accelerator.num_processes * args.gradient_accumulation_steps
            monitor.step_done(values, images=sampler.batch_size * shares)
            if end_of_epoch:
                break
    monitor.close()

    results = {
        "setting": setting,
        "init": args.init,
        "source_dataset": source,
        "dataset": args.dataset,
        "train_images": len(train),
        "clustering": [
            {key: entry[key] for key in ("epoch", "clusters", "outlier_fraction", "label_ari") if key in entry}
            for entry in state.history
            if "clusters" in entry
        ],
        "steps": state.step,
        "global_batch": global_batch,
    }
    return finish_run(args, accelerator, model, data, weights, results, started=started,
                      base_model=start.base_model,
                      describe=lambda results: card_text(args, results, setting, source),
                      checked=[*accelerator.unwrap_model(model).buffers(), *trainer.cluster_memory.buffers()])


def card_text(args: argparse.Namespace, results: dict[str, Any], setting: str, source: str | None) -> dict[str, Any]:
    """Name, summary, training section and tags of the model card."""
    target = dataset_name(args.dataset)
    last = results["clustering"][-1] if results["clustering"] else {}
    if setting == "UDA":
        summary = (
            f"A PASS part-aware ViT adapted to person ReID on `{args.dataset}` without its identity labels "
            f"(unsupervised domain adaptation, UDA) from the labelled source dataset `{source or 'unknown'}`, "
            f"starting from the model fine-tuned there (`{args.init}`), with pass-hub's `training/usl.py` "
            "(cluster-contrast)."
        )
        tags: tuple[str, ...] = ("unsupervised", "domain-adaptation", "cluster-contrast")
    else:
        summary = (
            f"A PASS part-aware ViT trained for person ReID on `{args.dataset}` without identity labels "
            f"(unsupervised learning, USL), starting from `{args.init}`, with pass-hub's `training/usl.py` "
            "(cluster-contrast)."
        )
        tags = ("unsupervised", "cluster-contrast")
    identities = args.global_batch_size // args.num_instances
    sampler = (f"camera-aware batches ({identities} pseudo-identities x {args.num_instances}: an anchor, then "
               "members from other cameras)" if args.sampler == "camera_aware"
               else f"P x K batches ({identities} x {args.num_instances})")
    neck = f"{args.neck} BatchNorm neck(s), {args.feature_fusion} fusion" + (
        ", each neck output L2-normalised" if args.normalize_neck_outputs else "")
    training = (
        f"{setting}: source `{source or 'unknown'}` (labelled) -> target `{args.dataset}` (unlabelled). "
        if setting == "UDA" else f"{setting} on `{args.dataset}` (no labels). "
    ) + (
        f"Settings: {args.resolved.describe()}. {results['steps']} steps, re-clustering the "
        f"{results['train_images']} training images every {args.iters_per_epoch} steps: DBSCAN (eps {args.eps}, "
        f"min samples {args.min_samples}) on k-reciprocal Jaccard distances ({args.jaccard} convention, k1 "
        f"{args.k1}, k2 {args.k2}) of the L2-normalised {args.reid_feature.replace('_', ' ')} feature ({neck})"
        + (", minus the mean feature of its camera" if args.camera_centering else "")
        + (f" ({int(last['clusters'])} clusters, {100 * last['outlier_fraction']:.0f}% outliers at the last "
           "clustering)" if last else "")
        + f"; cluster-contrast loss (temperature {args.temperature}) against a centroid memory updated by "
        f"{UPDATES[args.memory_update]} (momentum {args.memory_momentum}); {sampler}, global batch "
        f"{results['global_batch']}; "
        f"{describe_reid_optimizer(args)}, x0.1 every {args.lr_step_epochs} epochs; input {args.image_size[0]}x"
        f"{args.image_size[1]}, flip / pad-crop / {args.random_erasing.replace('_', '-')} random erasing, "
        f"mean = std = 0.5, {args.test_resize} test resize; drop path {args.drop_path_rate}; seed {args.seed}."
    )
    name = args.model_name or f"pass-vit-{target}-{setting.lower()}"
    return {"name": name, "summary": summary, "training": training, "extra_tags": tags}


if __name__ == "__main__":
    runtime.run_script(main)
