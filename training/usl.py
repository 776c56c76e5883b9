"""Unsupervised (USL) and domain-adaptive (UDA) person ReID with cluster-contrast and accelerate (spec §4, end).

    accelerate launch training/usl.py                                   # USL on SynthPerson from random init, CPU
    accelerate launch training/usl.py --init outputs/pretrain/pass-vit-pretrained           # USL from PASS weights
    accelerate launch training/usl.py --init outputs/finetune/pass-vit-reid \\
        --dataset synthetic:domain=1 --source_dataset synthetic               # UDA: labelled source -> new target
    accelerate launch --multi_gpu --num_processes 4 training/usl.py \\
        --init pass_vit_small_full.pth --dataset market1501 --data_dir /data/Market-1501-v15.09.15 \\
        --image_size 256 128 --epochs 50 --iters_per_epoch 200 --lr 3.5e-4 --lr_step_epochs 20 \\
        --drop_path_rate 0.3 --batch_size 64 --eps 0.6 --eval_every 10           # the paper's recipe
    # (4 x 64 = 256 = 32 pseudo-identities x 8 per step; MSMT17: --eps 0.7; UDA: --init a fine-tuned model)

No identity label of the training split is used. Every epoch the training images are embedded, clustered by
DBSCAN on k-reciprocal Jaccard distances (outliers sit the epoch out) and a memory of cluster centroids is built;
training minimises the cluster-contrast loss on P x K batches of pseudo-identities while the hardest member of
each cluster in a batch updates its centroid. UDA is the same run starting from a model fine-tuned on a labelled
source dataset (``finetune.py``'s folder, or an original fine-tuned checkpoint). The published folder holds the
best evaluated weights with a model card.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader, Dataset

if __package__ in (None, ""):  # run as a script: make the repository's `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pass_hub
from pass_hub.evaluation import extract_features, preprocessing_transform
from training import runtime
from training.cluster_contrast import ClusterMemory, center_per_camera, cluster_centroids, cluster_pseudo_labels
from training.data import SeededTransformDataset
from training.optim import (
    add_optimizer_arguments,
    describe_reid_optimizer,
    fill_weight_decay,
    reid_optimizer,
    set_hyperparameters,
)
from training.reid import (
    BestModel,
    add_evaluation_arguments,
    build_model,
    dataset_name,
    evaluate,
    finish_run,
    load_initial_backbone,
    sync_buffers,
)
from training.samplers import PKBatchSampler
from training.schedules import step_schedule
from training.transforms import reid_train_transform

# The paper's SGD decay; cluster-contrast's own code uses the same with Adam.
WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 5e-4}
LOGGED = ("loss", "lr", "clusters", "outlier_fraction", "label_ari", "mAP", "rank1", "images_per_second")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    runtime.add_run_arguments(parser, default_output_dir="outputs/usl")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic",
                      help="target dataset spec (synthetic, synthetic:domain=1, market1501, msmt17 ...); needs "
                           "query/gallery splits for evaluation")
    data.add_argument("--data_dir", default=None, help="dataset root for a loader name (same as --dataset NAME:DIR)")
    data.add_argument("--split", default="train", help="the split trained on; its identity labels are never used")
    data.add_argument("--image_size", nargs=2, type=int, default=[128, 64], metavar=("H", "W"),
                      help="training input; 128x64 keeps CPU runs short, the paper uses 256 128")
    data.add_argument("--num_instances", type=int, default=8,
                      help="K images per pseudo-identity in a batch (a batch needs batch_size / K clusters)")
    model = parser.add_argument_group("model")
    model.add_argument("--init", default="pass_vit_tiny",
                       help="pass-hub folder / hub id (a PassViTForReID folder from finetune.py for UDA), original "
                            "PASS checkpoint, or a preset name (random init)")
    model.add_argument("--source_dataset", default=None,
                       help="UDA: the labelled dataset --init was fine-tuned on (named in the model card); default: "
                            "the one the --init folder's card names")
    model.add_argument("--drop_path_rate", type=float, default=0.1,
                       help="stochastic depth; 0.3 in the paper, 0.1 as in finetune.py for the short CPU runs")
    model.add_argument("--reid_feature", choices=("before_neck", "after_neck"), default="after_neck",
                       help="feature clustered, trained and evaluated; the original cluster-contrast code uses the "
                            "BatchNorm-neck feature")
    cluster = parser.add_argument_group("clustering and memory")
    cluster.add_argument("--eps", type=float, default=0.6,
                         help="DBSCAN radius on Jaccard distances (0.6 Market-1501, 0.7 MSMT17)")
    cluster.add_argument("--min_samples", type=int, default=4, help="DBSCAN neighbours of a core point (self included)")
    cluster.add_argument("--k1", type=int, default=30, help="k-reciprocal neighbourhood size")
    cluster.add_argument("--k2", type=int, default=6, help="neighbours of the local query expansion")
    cluster.add_argument("--camera_centering", action="store_true",
                         help="cluster features minus their camera's mean feature (images without a camera "
                              "count as one; the memory keeps the raw features); not in the paper, helps when "
                              "cameras differ more than people")
    cluster.add_argument("--temperature", type=float, default=0.05, help="softmax temperature of the loss")
    cluster.add_argument("--memory_momentum", type=float, default=0.2,
                         help="weight of the old centroid in the hardest-instance update")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--iters_per_epoch", type=int, default=20,
                       help="optimizer steps per epoch, i.e. between two clusterings (200 in the original scripts)")
    add_optimizer_arguments(optim, lr=3.5e-4, weight_decay=WEIGHT_DECAY)
    optim.add_argument("--lr_step_epochs", type=int, default=20, help="learning rate x0.1 every this many epochs")
    add_evaluation_arguments(parser)
    args = fill_weight_decay(parser.parse_args(argv), WEIGHT_DECAY)
    args.epochs = 10 if args.epochs is None else args.epochs
    args.batch_size = 64 if args.batch_size is None else args.batch_size
    if args.batch_size % args.num_instances:
        parser.error(f"--batch_size {args.batch_size} is not a multiple of --num_instances {args.num_instances}")
    for flag in ("iters_per_epoch", "lr_step_epochs", "min_samples", "k1", "k2"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.eps <= 0 or args.temperature <= 0 or not 0 <= args.memory_momentum < 1:
        parser.error("--eps and --temperature must be > 0 and --memory_momentum in [0, 1)")
    if args.data_dir:
        args.dataset = f"{args.dataset}:{args.data_dir}"
    return args


def load_data(args: argparse.Namespace):
    from pass_hub.data import load_dataset_spec

    data = load_dataset_spec(args.dataset)
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


def embed_split(model, split, args: argparse.Namespace, accelerator) -> torch.Tensor:
    """(N, 2D) L2-normalised test-time features of ``split``, on every process (each embeds a shard)."""
    sync_buffers(accelerator, model)
    model = accelerator.unwrap_model(model)
    embedder = pass_hub.load_reid_model(model)  # eval mode: BatchNorm uses its running statistics
    try:
        features = extract_features(
            embedder, split, preprocessing_transform(embedder.preprocessing), batch_size=args.eval_batch_size,
            num_workers=args.num_workers, accelerator=accelerator, description="clustering features",
        )
    finally:
        model.train()
    return features.features


def make_clusters(model, split, memory: ClusterMemory, epoch: int, args, accelerator) -> dict[str, float]:
    """Cluster ``split`` on the main process, give every process the labels and centroids; returns statistics."""
    features = embed_split(model, split, args, accelerator)
    payload: list[Any] = [None]
    if accelerator.is_main_process:
        clustered = center_per_camera(features, split["camid"]) if args.camera_centering else features
        labels = cluster_pseudo_labels(clustered, eps=args.eps, min_samples=args.min_samples, k1=args.k1, k2=args.k2)
        payload = [(labels, cluster_centroids(features, labels))]
    labels, centroids = broadcast_object_list(payload)[0]
    clusters, outliers = int(labels.max(initial=-1)) + 1, float(np.mean(labels < 0))
    found = (f"epoch {epoch}: DBSCAN (--eps {args.eps}, --min_samples {args.min_samples}) found {clusters} "
             f"cluster(s) among {len(labels)} images ({100 * outliers:.0f}% outliers)")
    hint = "raise --eps or lower --min_samples" if outliers > 0.5 else "lower --eps"
    if clusters < 2:  # one cluster: the loss is 0 whatever the features
        raise SystemExit(f"{found}; cluster-contrast needs 2 or more: {hint}")
    if clusters < args.batch_size // args.num_instances:
        accelerator.print(f"{found}, fewer than --batch_size / --num_instances: this epoch's batches hold only "
                          f"{clusters} x {args.num_instances} images (to avoid it: {hint})")
    memory.reset(centroids, labels, epoch)
    statistics = {"clusters": float(clusters), "outlier_fraction": outliers}
    pids = np.asarray(split["pid"])
    if (pids >= 0).all():  # the split has identities: report how well the clusters match them (never trained on)
        from sklearn.metrics import adjusted_rand_score

        statistics["label_ari"] = float(adjusted_rand_score(pids[labels >= 0], labels[labels >= 0]))
    return statistics


def pseudo_labelled_loader(split, labels: np.ndarray, args: argparse.Namespace, accelerator):
    """The epoch's P x K loader over the clustered images: exactly ``--iters_per_epoch`` steps on every process."""
    clustered = PseudoLabelled(split, labels)
    dataset = SeededTransformDataset(clustered, reid_train_transform(tuple(args.image_size)), seed=args.seed,
                                     keep_columns=("label",))
    batches = args.iters_per_epoch * args.gradient_accumulation_steps * accelerator.num_processes
    # Fewer clusters than --batch_size / --num_instances (features that collapsed early on) give smaller batches.
    identities = min(args.batch_size // args.num_instances, len(np.unique(clustered.labels)))
    sampler = PKBatchSampler(clustered.labels, identities, args.num_instances, seed=args.seed, num_batches=batches)
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
    initial = load_initial_backbone(args.init)
    source = args.source_dataset or (read_source_dataset(args.init) if initial.fine_tuned else None)
    setting = "UDA" if initial.fine_tuned or args.source_dataset else "USL"
    model = build_model(initial, image_size=args.image_size, num_labels=0, drop_path_rate=args.drop_path_rate,
                        reid_feature=args.reid_feature)
    # Parameters without a gradient would stall DDP: the necks are only used for after_neck.
    if args.reid_feature == "before_neck":
        model.cls_neck.requires_grad_(False)
        model.part_necks.requires_grad_(False)
    optimizer = reid_optimizer(model, args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                               momentum=args.momentum)
    memory = ClusterMemory(model.config.embedding_size, args.temperature, args.memory_momentum)
    model, optimizer = accelerator.prepare(model, optimizer)
    memory.to(accelerator.device)
    state = runtime.TrainingState()
    best = BestModel(output_dir / "best")
    accelerator.register_for_checkpointing(state, best, memory)

    steps_per_epoch = args.iters_per_epoch
    schedule_length = args.epochs * steps_per_epoch
    total_steps = schedule_length if args.max_steps is None else min(schedule_length, args.max_steps)
    lr_schedule = step_schedule(args.lr, schedule_length, args.lr_step_epochs * steps_per_epoch)
    global_batch = args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps

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
        statistics = {} if int(memory.epoch) == epoch else make_clusters(model, train, memory, epoch, args, accelerator)
        loader, dataset, sampler = pseudo_labelled_loader(train, memory.labels.cpu().numpy(), args, accelerator)
        for _, batch in monitor.batches(loader, steps_per_epoch, dataset, sampler):
            step = state.step
            with accelerator.accumulate(model):
                embeddings = model(batch["pixel_values"]).embeddings
                loss = memory(embeddings, batch["label"])
                if not math.isfinite(loss.item()):
                    raise SystemExit(f"loss is {loss.item()} at step {step}; stopping (lower --lr?)")
                set_hyperparameters(optimizer, float(lr_schedule[step]))
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                # Every process applies the update of the whole global batch: the memories stay identical.
                memory.update(accelerator.gather(embeddings.detach()), accelerator.gather(batch["label"]))
                step_means.add(loss=loss)
            if not accelerator.sync_gradients:
                continue
            values = {"epoch": epoch, **step_means.pop(accelerator), "lr": float(lr_schedule[step]), **statistics}
            statistics = {}
            end_of_epoch = (step + 1) % steps_per_epoch == 0
            if args.eval_every and end_of_epoch and (epoch + 1) % args.eval_every == 0 and step + 1 < total_steps:
                evaluation = evaluate(model, data, args, accelerator, progress=False, return_per_query=True)
                values.update(best.consider(evaluation, step + 1, accelerator.unwrap_model(model), accelerator))
            monitor.step_done(values, images=sampler.batch_size * global_batch // args.batch_size)
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
    return finish_run(args, accelerator, model, data, best, results, started=started, base_model=initial.base_model,
                      describe=lambda results: card_text(args, results, setting, source),
                      checked=[*accelerator.unwrap_model(model).buffers(), *memory.buffers()])


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
    identities = args.batch_size // args.num_instances
    training = (
        f"{setting}: source `{source or 'unknown'}` (labelled) -> target `{args.dataset}` (unlabelled). "
        if setting == "UDA" else f"{setting} on `{args.dataset}` (no labels). "
    ) + (
        f"{results['steps']} steps (best evaluation at step {results['best_step']}), re-clustering the "
        f"{results['train_images']} training images every {args.iters_per_epoch} steps: DBSCAN (eps {args.eps}, "
        f"min samples {args.min_samples}) on k-reciprocal Jaccard distances (k1 {args.k1}, k2 {args.k2}) of the "
        f"L2-normalised {args.reid_feature.replace('_', ' ')} feature"
        + (", minus the mean feature of its camera" if args.camera_centering else "")
        + (f" ({int(last['clusters'])} clusters, {100 * last['outlier_fraction']:.0f}% outliers at the last "
           "clustering)" if last else "")
        + f"; cluster-contrast loss (temperature {args.temperature}) against a centroid memory with hardest-"
        f"instance updates (momentum {args.memory_momentum}); P x K batches ({identities} x {args.num_instances}, "
        f"global {results['global_batch']}); {describe_reid_optimizer(args)}, x0.1 every "
        f"{args.lr_step_epochs} epochs; input {args.image_size[0]}x"
        f"{args.image_size[1]}, flip / pad-crop / random erasing, mean = std = 0.5; drop path {args.drop_path_rate}; "
        f"seed {args.seed}."
    )
    name = args.model_name or f"pass-vit-{target}-{setting.lower()}"
    return {"name": name, "summary": summary, "training": training, "extra_tags": tags}


if __name__ == "__main__":
    main()
