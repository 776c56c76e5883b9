"""What the ReID training scripts share (``finetune.py``, ``usl.py``): the initial backbone, the ``PassViTForReID``
model, evaluation on query / gallery, the best model so far, and the published hub folder with its card.

Example:
    >>> initial = load_initial_backbone("pass_vit_tiny")  # a preset: random init
    >>> model = build_model(initial, image_size=(128, 64), num_labels=10, drop_path_rate=0.1)
    >>> initial.fine_tuned, model.config.num_labels
    (False, 10)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast

import pass_hub
from pass_hub.atomic import write_json_atomic
from pass_hub.backbone import PRESETS
from pass_hub.evaluation import evaluate_model, save_rank_lists
from pass_hub.model_card import reid_card_data, render_model_card, results_table
from pass_hub.timm_models import checkpoint_filter_fn
from training import runtime
from training.transforms import REID_MEAN, REID_STD

MODEL_FOLDER = "pass-vit-reid"


@dataclass(frozen=True)
class InitialBackbone:
    """What ``--init`` names, resolved.

    Attributes:
        weights: Backbone state dict (timm names), or None for a preset (random init).
        arch: ``embed_dim``, ``depth``, ``num_heads``.
        base_model: Hub id of the checkpoint (for the card's ``base_model``), None for local files and presets.
        fine_tuned: The checkpoint is a ReID model (it has BatchNorm necks / a classifier): a UDA source model.
    """

    weights: dict[str, torch.Tensor] | None
    arch: dict[str, int]
    base_model: str | None = None
    fine_tuned: bool = False


def load_initial_backbone(init: str) -> InitialBackbone:
    """Resolve ``--init``: a preset name, an original PASS checkpoint file, a pass-hub folder (``PassViTModel``
    or ``PassViTForReID``: the backbone is taken) or a cached hub id.

    Example:
        >>> load_initial_backbone("tiny").arch
        {'embed_dim': 192, 'depth': 12, 'num_heads': 3}
    """
    if init in PRESETS or f"pass_vit_{init}" in PRESETS:
        preset = init if init in PRESETS else f"pass_vit_{init}"
        return InitialBackbone(None, dict(PRESETS[preset]))
    path = Path(init)
    if path.is_file() or (path.is_dir() and not (path / "config.json").is_file()):
        extracted = pass_hub.extract_weights(pass_hub.load_checkpoint_file(path), source=str(path))
        args = pass_hub.convert.infer_backbone_args(extracted.backbone)
        arch = {k: args[k] for k in ("embed_dim", "depth", "num_heads")}
        return InitialBackbone(extracted.backbone, arch, fine_tuned=bool(extracted.reid_head))
    try:
        backbone = pass_hub.PassViTModel.from_pretrained(init)  # from a PassViTForReID folder: its backbone
    except (OSError, ValueError) as err:
        raise SystemExit(
            f"--init {init}: not a preset, checkpoint file, pass-hub folder or cached hub id ({err})"
        ) from None
    config = backbone.config
    arch = dict(embed_dim=config.hidden_size, depth=config.num_hidden_layers, num_heads=config.num_attention_heads)
    return InitialBackbone(
        backbone.vit.state_dict(),
        arch,
        base_model=None if path.exists() else init,
        fine_tuned="PassViTForReID" in (config.architectures or ()),
    )


def build_model(
    initial: InitialBackbone,
    *,
    image_size: Sequence[int],
    num_labels: int,
    drop_path_rate: float,
    reid_feature: str = "before_neck",
    label_smoothing: float = 0.0,
) -> pass_hub.PassViTForReID:
    """A ``PassViTForReID`` (ReID mean/std 0.5) on the initial backbone; necks and classifier start fresh.

    ``num_labels=0`` gives a model without an identity classifier (cluster-contrast learns none). A size the
    model cannot take or weights that do not fit it end the run with a message.
    """
    try:
        config = pass_hub.PassViTConfig(
            hidden_size=initial.arch["embed_dim"],
            num_hidden_layers=initial.arch["depth"],
            num_attention_heads=initial.arch["num_heads"],
            image_size=tuple(image_size),
            image_mean=REID_MEAN,
            image_std=REID_STD,
            drop_path_rate=drop_path_rate,
            reid_feature=reid_feature,
            label_smoothing=label_smoothing,
            num_labels=num_labels,
        )
        model = pass_hub.PassViTForReID(config)
        if initial.weights is not None:
            backbone = model.pass_vit.vit
            # Resamples the position table when the init was trained at another size (e.g. 256x128 -> 384x128).
            backbone.load_state_dict(checkpoint_filter_fn(initial.weights, backbone))
    except ValueError as err:
        raise SystemExit(f"cannot build the model: {err}") from None
    return model


def sync_buffers(accelerator, model: torch.nn.Module) -> None:
    """Give every process the main process's buffers (BatchNorm running statistics).

    DDP copies them from the main process at each forward, so after the last step they differ by one batch's
    update; features computed on several processes would otherwise mix slightly different models.
    """
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            buffer.copy_(broadcast(buffer.clone()))


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation and publishing flags :func:`evaluate` and :func:`finish_run` read."""
    evaluation = parser.add_argument_group("evaluation and publishing")
    evaluation.add_argument("--eval_every", type=int, default=0, help="evaluate every N epochs (0: at the end only)")
    evaluation.add_argument("--eval_batch_size", type=int, default=64)
    evaluation.add_argument("--flip_test", action="store_true", help="average embeddings with mirrored images")
    evaluation.add_argument("--model_name", default=None, help="name in the model card (default: derived)")
    evaluation.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the published folder")
    evaluation.add_argument("--hub_private", action="store_true")


def evaluate(model, data, args: argparse.Namespace, accelerator, **options) -> dict[str, Any]:
    """``evaluate_model`` on ``data["query"]`` / ``data["gallery"]`` with the script's evaluation flags."""
    sync_buffers(accelerator, model)
    return evaluate_model(
        accelerator.unwrap_model(model), data["query"], data["gallery"], batch_size=args.eval_batch_size,
        flip=args.flip_test, accelerator=accelerator, num_workers=args.num_workers, **options,
    )


def scalar_metrics(results: dict[str, Any]) -> dict[str, float]:
    keys = ("mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries")
    return {key: float(results[key]) for key in keys}


class BestModel:
    """The best evaluation so far (by mAP); the main process keeps its weights as a hub folder ``folder``.

    ``details`` (per-query results for rank-list pictures) lives in memory only: after a resume it is filled by
    the next evaluation that wins.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.metrics: dict[str, float] = {}
        self.step = 0
        self.details: dict[str, Any] | None = None

    def consider(self, results: dict[str, Any], step: int, model, accelerator) -> dict[str, float]:
        metrics = scalar_metrics(results)
        if not self.metrics or metrics["mAP"] > self.metrics["mAP"]:
            self.metrics, self.step, self.details = metrics, step, results
            if accelerator.is_main_process:
                pass_hub.save_hub_folder(model, self.folder, overwrite=True)
        accelerator.wait_for_everyone()
        return {"mAP": metrics["mAP"], "rank1": metrics["rank1"]}

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics, self.step = dict(state["metrics"]), int(state["step"])


def dataset_name(spec: str) -> str:
    """The short name of a dataset spec for cards: ``market1501`` for ``market1501:/data/...``."""
    return spec.split(":")[0]


def publish(
    best_folder: Path,
    output_dir: Path,
    *,
    data,
    dataset: str,
    best: dict[str, float],
    ranked: dict[str, Any],
    name: str,
    summary: str,
    training: str,
    base_model: str | None = None,
    extra_tags: tuple[str, ...] = (),
) -> Path:
    """The best weights as the published hub folder ``output_dir / MODEL_FOLDER``, with a model card and a
    rank-list picture of ``ranked`` (per-query results on ``data``'s query / gallery).

    Args:
        best_folder: Hub folder holding the best weights (:class:`BestModel`).
        output_dir: Run directory.
        data: The evaluation data (``query`` / ``gallery`` splits).
        dataset: Spec of the evaluation data (its short name goes into the card's metadata).
        best: Scalar metrics of ``best_folder`` (:func:`scalar_metrics`).
        ranked: ``evaluate_model(..., return_per_query=True)`` output to draw rank lists from.
        name: Model name in the card.
        summary: The card's first paragraph.
        training: The card's training section.
        base_model: Hub id the run started from, if any.
        extra_tags: More card tags (``unsupervised``, ``domain-adaptation``).
    """
    model = pass_hub.PassViTForReID.from_pretrained(best_folder)
    short_name = dataset_name(dataset)
    version = data["query"].info.config_name if short_name.startswith("msmt17") else None
    picture = "rank_list.png"
    card = render_model_card(
        model.config,
        kind="reid",
        title=name,
        summary=summary,
        card_data=reid_card_data(
            model_name=name, dataset_name=short_name, dataset_id=short_name, results=best,
            base_model=base_model, dataset_config=version, extra_tags=extra_tags,
        ),
        training=training,
        results_table=results_table({f"{name} ({short_name}, no re-ranking)": best}),
        pictures=f"Ranked gallery lists of a few queries (green: same identity):\n\n![rank lists]({picture})",
    )
    save_rank_lists(ranked, data["query"], data["gallery"], output_dir / picture)
    return pass_hub.save_hub_folder(
        model, output_dir / MODEL_FOLDER, model_card=card, extra_files=[output_dir / picture], overwrite=True
    )


def finish_run(
    args: argparse.Namespace,
    accelerator,
    model,
    data,
    best: BestModel,
    results: dict[str, Any],
    *,
    started: float,
    base_model: str | None,
    describe: Callable[[dict[str, Any]], dict[str, Any]],
    checked: Sequence[torch.Tensor] = (),
) -> dict[str, Any]:
    """The end of a ReID run: final evaluation, best model, ``results.json``, the published folder, the upload.

    Args:
        args: The script's flags (``output_dir``, ``dataset``, evaluation and hub flags).
        accelerator: The run's accelerator.
        model: The trained (prepared) model.
        data: Evaluation data (``query`` / ``gallery``).
        best: The run's :class:`BestModel`.
        results: What the script reports; completed here with metrics, process count and wall time.
        started: ``time.perf_counter()`` at the start of the run.
        base_model: Hub id the run started from (card metadata).
        describe: ``results`` -> :func:`publish`'s ``name``, ``summary``, ``training`` (and ``extra_tags``).
        checked: Tensors besides the parameters that must be equal on every process (``replicas_in_sync``).
    """
    final = evaluate(model, data, args, accelerator, return_per_query=True)
    unwrapped = accelerator.unwrap_model(model)
    best.consider(final, results["steps"], unwrapped, accelerator)
    results.update(
        final=scalar_metrics(final),
        best=best.metrics,
        best_step=best.step,
        num_processes=accelerator.num_processes,
        replicas_in_sync=runtime.replicas_in_sync(accelerator, [*unwrapped.parameters(), *checked]),
        wall_time_seconds=time.perf_counter() - started,
    )
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        folder = publish(best.folder, output_dir, data=data, dataset=args.dataset, best=best.metrics,
                         ranked=best.details or final, base_model=base_model, **describe(results))
        results["model"] = str(folder)
        write_json_atomic(output_dir / "results.json", results)
        accelerator.print(
            f"mAP {100 * best.metrics['mAP']:.1f}, Rank-1 {100 * best.metrics['rank1']:.1f}, "
            f"mINP {100 * best.metrics['mINP']:.1f} (step {best.step}); "
            f"{runtime.seconds_to_text(results['wall_time_seconds'])}; model in {folder}"
        )
        if args.push_to_hub:
            from training.push import push_folder

            accelerator.print(f"uploaded: {push_folder(folder, args.push_to_hub, private=args.hub_private)}")
    accelerator.end_training()
    return results
