"""What the ReID training scripts share (``finetune.py``, ``usl.py``): the initial backbone, the ``PassViTForReID``
model, evaluation on query / gallery, the weights to publish, and the published hub folder with its card.

Example:
    >>> from training.recipes import RECIPES
    >>> settings = RECIPES["finetune"]["cpu_demo"].settings
    >>> initial = load_initial_backbone("pass_vit_tiny")  # a preset: random init
    >>> model = build_model(initial, settings, num_labels=10)
    >>> initial.fine_tuned, model.config.num_labels, model.config.image_size
    (False, 10, (128, 64))
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
from pass_hub.calibration import Calibration, draw_calibration
from pass_hub.evaluation import evaluate_model, save_rank_lists
from pass_hub.model_card import deployment_section, reid_card_data, render_model_card, results_table
from pass_hub.timm_models import checkpoint_filter_fn
from training import runtime
from training.data import dataset_spec
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


def load_initial_backbone(init: str, needs: str = "") -> InitialBackbone:
    """Resolve ``--init``: a preset name, an original PASS checkpoint file, a pass-hub folder (``PassViTModel``
    or ``PassViTForReID``: the backbone is taken) or a cached hub id. ``needs`` says, in words, what the run
    needs; it ends the message when ``--init`` names a file that does not exist.

    Example:
        >>> load_initial_backbone("tiny").arch
        {'embed_dim': 192, 'depth': 12, 'num_heads': 3}
    """
    if init in PRESETS or f"pass_vit_{init}" in PRESETS:
        preset = init if init in PRESETS else f"pass_vit_{init}"
        return InitialBackbone(None, dict(PRESETS[preset]))
    path = Path(init)
    if not path.exists() and path.suffix in (".pth", ".pt", ".bin", ".tar", ".safetensors"):
        raise SystemExit(f"--init {init}: no such file" + (f"; this recipe needs {needs}" if needs else ""))
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


def load_data_spec(args: argparse.Namespace):
    """The ``DatasetDict`` of ``--dataset`` / ``--data_dir`` (``args.dataset`` becomes the full spec)."""
    from pass_hub.data import load_dataset_spec

    args.dataset = dataset_spec(args.dataset, args.data_dir, args.resolved.recipe.needs)
    try:
        return load_dataset_spec(args.dataset)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"--dataset {args.dataset}: {err}") from None


def check_architecture(initial: InitialBackbone, init: str, settings: Any, recipe: str) -> None:
    """End the run when ``--init`` is not the backbone the settings' ``preset`` names (a ViT-B for a ViT-S recipe);
    ``preset="from_init"`` takes whatever ``--init`` holds."""
    if settings.preset == "from_init":
        return
    expected = PRESETS[settings.preset]
    if initial.arch != {key: expected[key] for key in initial.arch}:
        found = next((name for name, arch in PRESETS.items() if initial.arch == {k: arch[k] for k in initial.arch}),
                     f"a ViT of width {initial.arch['embed_dim']}, depth {initial.arch['depth']}")
        raise SystemExit(
            f"--init {init} is {found}, but --recipe {recipe} trains {settings.preset}; pick the recipe for that "
            f"backbone or pass --preset {found if found in PRESETS else '...'} to override"
        )


def build_model(initial: InitialBackbone, settings: Any, num_labels: int) -> pass_hub.PassViTForReID:
    """A ``PassViTForReID`` (ReID mean/std 0.5) on the initial backbone; necks and classifier start fresh.

    ``settings`` (a fine-tuning or cluster-contrast settings object) gives the input size, drop path, the neck
    variant, the fusion, the test-time feature and resize. ``num_labels=0`` gives a model without an identity
    classifier (cluster-contrast learns none). A size the model cannot take or weights that do not fit it end
    the run with a message.
    """
    try:
        config = pass_hub.PassViTConfig(
            hidden_size=initial.arch["embed_dim"],
            num_hidden_layers=initial.arch["depth"],
            num_attention_heads=initial.arch["num_heads"],
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
    """The evaluation and publishing flags :func:`evaluate` and :func:`finish_run` read besides the settings
    (``eval_every``, ``flip_test``, ``publish``)."""
    evaluation = parser.add_argument_group("evaluation and publishing")
    evaluation.add_argument("--eval_batch_size", type=int, default=64)
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


class PublishedWeights:
    """The weights a ReID run publishes and their scores: the final ones (``selection="final"``), or those of the
    best test-split evaluation by mAP (``"best_test_evaluation"``, what the original USL / UDA scripts report).

    Every evaluation goes through :meth:`consider`; the main process keeps the chosen weights as a hub folder
    ``folder``. ``details`` (per-query results for rank-list pictures) lives in memory only: after a resume it is
    filled by the next evaluation that is chosen.
    """

    def __init__(self, folder: Path, selection: str) -> None:
        if selection not in ("final", "best_test_evaluation"):
            raise ValueError(f"selection={selection!r}; expected 'final' or 'best_test_evaluation'")
        self.folder, self.selection = folder, selection
        self.metrics: dict[str, float] = {}
        self.step = 0
        self.evaluations = 0
        self.details: dict[str, Any] | None = None

    def consider(
        self, results: dict[str, Any], step: int, model, accelerator, *, final: bool = False
    ) -> dict[str, float]:
        """Count an evaluation (``final``: the one at the end of the run); keep its weights if they are chosen.
        Returns the values to log."""
        metrics = scalar_metrics(results)
        self.evaluations += 1
        better = not self.metrics or metrics["mAP"] > self.metrics["mAP"]
        if final if self.selection == "final" else better:
            self.metrics, self.step, self.details = metrics, step, results
            if accelerator.is_main_process:
                pass_hub.save_hub_folder(model, self.folder, overwrite=True)
        accelerator.wait_for_everyone()
        return {"mAP": metrics["mAP"], "rank1": metrics["rank1"]}

    def describe(self) -> str:
        """Which weights were published, in words (for the model card)."""
        if self.selection == "final":
            return f"The published weights are the final ones (step {self.step})."
        return (
            f"The published weights are the best of {self.evaluations} evaluations on the test split (step "
            f"{self.step}, by mAP), as the original USL / UDA scripts report their results; choosing weights by "
            "their test-split score leaks the test set into model selection, so the scores below are optimistic."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "step": self.step, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics, self.step = dict(state["metrics"]), int(state["step"])
        self.evaluations = int(state["evaluations"])


def dataset_name(spec: str) -> str:
    """The short name of a dataset spec for cards: ``market1501`` for ``market1501:/data/...``."""
    return spec.split(":")[0]


def publish(
    weights: PublishedWeights,
    output_dir: Path,
    *,
    data,
    dataset: str,
    ranked: dict[str, Any],
    name: str,
    summary: str,
    training: str,
    base_model: str | None = None,
    extra_tags: tuple[str, ...] = (),
    eval_batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[Path, Calibration]:
    """The chosen weights as the published hub folder ``output_dir / MODEL_FOLDER``, with a model card, a
    rank-list picture of ``ranked`` (per-query results on ``data``'s query / gallery) and the score thresholds of
    the deployment feature (:func:`pass_hub.calibration.calibrate`) with their picture. Returns the folder and
    the calibration.

    Args:
        weights: The run's :class:`PublishedWeights` (its folder, scores and how they were chosen).
        output_dir: Run directory.
        data: The evaluation data (``query`` / ``gallery`` splits).
        dataset: Spec of the evaluation data (its short name goes into the card's metadata).
        ranked: ``evaluate_model(..., return_per_query=True)`` output to draw rank lists from (with its
            ``calibration`` when the final weights are published).
        name: Model name in the card.
        summary: The card's first paragraph.
        training: The card's training section (:meth:`PublishedWeights.describe` is appended).
        base_model: Hub id the run started from, if any.
        extra_tags: More card tags (``unsupervised``, ``domain-adaptation``).
        eval_batch_size / device: Batch size and device of the calibration pass, when one is needed.
    """
    model = pass_hub.PassViTForReID.from_pretrained(weights.folder)
    short_name = dataset_name(dataset)
    version = data["query"].info.config_name if short_name.startswith("msmt17") else None
    picture, calibration_picture = "rank_list.png", "calibration.png"
    calibration = ranked.get("calibration") if weights.selection == "final" else None
    if calibration is None:  # the chosen weights are not the final ones: measure theirs
        calibration = evaluate_model(model.to(device), data["query"], data["gallery"], batch_size=eval_batch_size,
                                     calibration=True, progress=False)["calibration"]
        model.cpu()
    chosen = "final weights" if weights.selection == "final" else f"best of {weights.evaluations} test evaluations"
    card = render_model_card(
        model.config,
        kind="reid",
        title=name,
        summary=summary,
        card_data=reid_card_data(
            model_name=name, dataset_name=short_name, dataset_id=short_name, results=weights.metrics,
            base_model=base_model, dataset_config=version, extra_tags=extra_tags,
        ),
        training=f"{training} {weights.describe()}",
        results_table=results_table({f"{name} ({short_name}, no re-ranking, {chosen})": weights.metrics}),
        pictures=f"Ranked gallery lists of a few queries (green: same identity):\n\n![rank lists]({picture})",
        deployment=deployment_section(calibration, short_name, calibration_picture),
    )
    save_rank_lists(ranked, data["query"], data["gallery"], output_dir / picture)
    draw_calibration(calibration, output_dir / calibration_picture, title=f"{name} on {short_name}")
    folder = pass_hub.save_hub_folder(
        model, output_dir / MODEL_FOLDER, model_card=card,
        extra_files=[output_dir / picture, output_dir / calibration_picture], overwrite=True,
    )
    return folder, calibration


def finish_run(
    args: argparse.Namespace,
    accelerator,
    model,
    data,
    weights: PublishedWeights,
    results: dict[str, Any],
    *,
    started: float,
    base_model: str | None,
    describe: Callable[[dict[str, Any]], dict[str, Any]],
    checked: Sequence[torch.Tensor] = (),
) -> dict[str, Any]:
    """The end of a ReID run: final evaluation, the published weights, ``results.json``, the folder, the upload.

    Args:
        args: The script's flags (``output_dir``, ``dataset``, evaluation and hub flags, ``resolved``).
        accelerator: The run's accelerator.
        model: The trained (prepared) model.
        data: Evaluation data (``query`` / ``gallery``).
        weights: The run's :class:`PublishedWeights`.
        results: What the script reports; completed here with metrics, the recipe, process count and wall time.
        started: ``time.perf_counter()`` at the start of the run.
        base_model: Hub id the run started from (card metadata).
        describe: ``results`` -> :func:`publish`'s ``name``, ``summary``, ``training`` (and ``extra_tags``).
        checked: Tensors besides the parameters that must be equal on every process (``replicas_in_sync``).
    """
    # Calibrated here only when these are the weights published; otherwise publish() calibrates the chosen ones.
    final = evaluate(model, data, args, accelerator, return_per_query=True,
                     calibration=weights.selection == "final")
    unwrapped = accelerator.unwrap_model(model)
    weights.consider(final, results["steps"], unwrapped, accelerator, final=True)
    results.update(
        recipe=args.resolved.recipe.name,
        overridden=args.resolved.overridden,
        final=scalar_metrics(final),
        published={"selection": weights.selection, "step": weights.step, "evaluations": weights.evaluations,
                   "metrics": weights.metrics},
        num_processes=accelerator.num_processes,
        replicas_in_sync=runtime.replicas_in_sync(accelerator, [*unwrapped.parameters(), *checked]),
        wall_time_seconds=time.perf_counter() - started,
    )
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        folder, calibration = publish(
            weights, output_dir, data=data, dataset=args.dataset, ranked=weights.details or final,
            base_model=base_model, eval_batch_size=args.eval_batch_size, device=accelerator.device,
            **describe(results),
        )
        results["model"] = str(folder)
        results["calibration"] = calibration.to_dict()
        write_json_atomic(output_dir / "results.json", results)
        metrics = weights.metrics
        accelerator.print(
            f"mAP {100 * metrics['mAP']:.1f}, Rank-1 {100 * metrics['rank1']:.1f}, mINP {100 * metrics['mINP']:.1f} "
            f"({'final' if weights.selection == 'final' else 'best test evaluation'}, step {weights.step}); "
            f"{runtime.seconds_to_text(results['wall_time_seconds'])}; model in {folder}"
        )
        if args.push_to_hub:
            from training.push import push_folder

            accelerator.print(f"uploaded: {push_folder(folder, args.push_to_hub, private=args.hub_private)}")
    accelerator.end_training()
    return results
