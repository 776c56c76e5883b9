"""Where a pre-training run starts from (``pretrain.py --init``), and the original checkpoint layout both ways.

Three sources are accepted:

* an original PASS pre-training checkpoint (``checkpoint.pth`` as ``main_pass.py`` saves it): ``student`` (DDP
  ``module.`` prefix), ``teacher``, ``optimizer``, ``epoch``, ``args``, ``dino_loss`` with the four centers
  (``center_cls``, ``center_pt1..3``; plain DINO: ``center``) and ``fp16_scaler``. Student, teacher, the four heads
  and the centers are loaded; the optimizer state, the epoch and the scaler too when asked (a true resume);
* a pass-hub pre-training run (its ``--output_dir``, or one of its ``checkpoints/step_*`` folders): the same, from
  its latest complete checkpoint;
* a flat backbone (``pass_vit_small_full.pth``, a pass-hub backbone folder, any layout ``pass-hub convert``
  reads): the backbone goes into student and teacher; heads and centers start fresh.

The architecture (width, depth, heads, prototypes, head sizes, [PART] tokens, trained grid) is read from the
tensor shapes, as ``pass-hub convert`` does, and keys are loaded strictly: a missing, unexpected or mis-shaped key
is named and nothing is loaded. Pickles go through the allow-listed safe loader of ``pass-hub convert``.

The original names map to pass-hub's one to one, except that ``part_token1..3`` form ``reg_token`` and
``cls_pos``, ``part1_pos..part3_pos`` and the patch ``pos_embed`` form ``pos_embed``; the heads ``mlp_cls`` /
``mlp_pt<k>`` and ``last_layer_cls`` / ``last_layer_pt<k>`` (``weight_g`` / ``weight_v``) are
``heads.heads.<k>.mlp`` and the weight-norm parametrisation of ``heads.heads.<k>.last_layer``.

Example:
    >>> start = load_pretraining_start("checkpoint.pth")  # doctest: +SKIP
    >>> start.describe()  # doctest: +SKIP
    'checkpoint.pth (original pre-training checkpoint, epoch 100): student, teacher, 4 heads and centers loaded'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pass_hub.models.backbone import PRESETS, architecture_name
from pass_hub.models.convert import (
    check_state_dict,
    extract_weights,
    infer_backbone_args,
    load_checkpoint_file,
    load_pass_hub_folder,
    original_backbone_pieces,
    split_as_original,
)
from pass_hub.models.timm_models import grid_change, position_table_for
from training.pretraining.networks import PATCH_SIZE, PartAwareDINO, new_network
from training.pretraining.step import CentersState

if TYPE_CHECKING:
    from training.engine.recipes import PretrainSettings

WEIGHT_NORM = {"original0": "weight_g", "original1": "weight_v"}
NORMED = "last_layer.parametrizations.weight."


# ------------------------------------------------------------------------------------ the key mapping
def _head_name(token_type: int, plain: bool) -> str:
    if plain:
        return ""
    return "_cls" if token_type == 0 else f"_pt{token_type}"


def original_pieces(key: str, num_parts: int, plain: bool) -> list[str]:
    """The original key(s) of one pass-hub ``PartAwareDINO`` key; several are concatenated along dim 1.

    Example:
        >>> original_pieces("backbone.reg_token", 3, plain=False)
        ['backbone.part_token1', 'backbone.part_token2', 'backbone.part_token3']
        >>> original_pieces("heads.heads.2.last_layer.parametrizations.weight.original1", 3, plain=False)
        ['head.last_layer_pt2.weight_v']
    """
    if key.startswith("backbone."):
        return [f"backbone.{piece}" for piece in original_backbone_pieces(key.removeprefix("backbone."), num_parts)]
    head = re.fullmatch(r"heads\.heads\.(\d+)\.(.*)", key)
    if head is None:
        return [key]
    token_type, rest = int(head.group(1)), head.group(2)
    suffix = _head_name(token_type, plain)
    if rest.startswith(NORMED):
        return [f"head.last_layer{suffix}.{WEIGHT_NORM[rest[len(NORMED):]]}"]
    return [f"head.{rest.replace('mlp.', f'mlp{suffix}.', 1)}"]


def from_original_layout(
    state: Mapping[str, torch.Tensor], network: PartAwareDINO, source: str
) -> dict[str, torch.Tensor]:
    """An original-layout network state (``backbone.*`` / ``head.*``) as ``network``'s state dict, checked strictly.

    Raises:
        ValueError: naming, in the original's names, every missing, unexpected and mis-shaped key.
    """
    plain, parts = network.num_parts == 0, network.backbone.num_parts
    check_state_dict(to_original_layout(network.state_dict(), network), state, source)  # in the original's names
    pieces_of = {key: original_pieces(key, parts, plain) for key in network.state_dict()}
    return {
        key: state[pieces[0]] if len(pieces) == 1 else torch.cat([state[piece] for piece in pieces], dim=1)
        for key, pieces in pieces_of.items()
    }


def to_original_layout(state: Mapping[str, torch.Tensor], network: PartAwareDINO) -> dict[str, torch.Tensor]:
    """``network``'s state dict (pass-hub names) in the original layout: the inverse of :func:`from_original_layout`."""
    plain, parts = network.num_parts == 0, network.backbone.num_parts
    out = {}
    for key, tensor in state.items():
        pieces = original_pieces(key, parts, plain)
        views = split_as_original(key.removeprefix("backbone."), tensor, parts) if len(pieces) > 1 else [tensor]
        out.update(zip(pieces, views, strict=True))
    return out


def centers_from_original(dino_loss: Mapping[str, torch.Tensor], num_parts: int, source: str) -> torch.Tensor:
    """The (1 + P, K) centers from the original ``dino_loss`` state (``center_cls``, ``center_pt1..``)."""
    names = ["center"] if num_parts == 0 else ["center_cls", *(f"center_pt{k}" for k in range(1, num_parts + 1))]
    missing = [name for name in names if name not in dino_loss]
    if missing:
        raise ValueError(f"{source}: 'dino_loss' lacks {missing} (has {sorted(dino_loss)})")
    return torch.cat([dino_loss[name].reshape(1, -1) for name in names])


def centers_to_original(centers: torch.Tensor) -> dict[str, torch.Tensor]:
    if len(centers) == 1:
        return {"center": centers[:1].clone()}
    return {"center_cls": centers[:1].clone(), **{f"center_pt{k}": centers[k : k + 1].clone()
                                                 for k in range(1, len(centers))}}


# ------------------------------------------------------------------------------------ optimizer state
def _original_parameter_order(student_keys: list[str], student: Mapping[str, torch.Tensor]) -> list[str]:
    """The original optimizer's parameter ids, in order: its group 0 (not a bias, not 1-D: weights, tokens,
    positions, weight_v) then group 1, each in state-dict order, the frozen ``weight_g`` left out."""
    trainable = [key for key in student_keys if not key.endswith(".weight_g")]
    decayed = [key for key in trainable if not key.endswith(".bias") and student[key].ndim != 1]
    return decayed + [key for key in trainable if key not in set(decayed)]


def optimizer_state_from_original(
    original: Mapping[str, Any],
    student_keys: list[str],
    student: Mapping[str, torch.Tensor],
    network: PartAwareDINO,
    optimizer: torch.optim.Optimizer,
    source: str,
) -> dict[str, Any]:
    """The original AdamW state as a state dict ``optimizer`` (AdamW over :func:`weight_decay_groups` of
    ``network``) loads: moments of split tensors concatenated, parameter ids renumbered."""
    ids = {key: index for index, key in enumerate(_original_parameter_order(student_keys, student))}
    states = original.get("state", {})
    named = dict(network.named_parameters())
    names = {id(param): name for name, param in named.items()}
    plain, parts = network.num_parts == 0, network.backbone.num_parts
    state: dict[int, dict[str, Any]] = {}
    groups = []
    position = 0
    for group in optimizer.param_groups:
        indices = []
        for param in group["params"]:
            name = names[id(param)]
            pieces = original_pieces(name, parts, plain)
            missing = [piece for piece in pieces if piece not in ids]
            if missing:
                raise ValueError(f"{source}: the optimizer state has no parameter {missing}")
            found = [states.get(ids[piece]) for piece in pieces]
            if all(entry is not None for entry in found):
                entry = {"step": torch.as_tensor(float(found[0]["step"]))}
                for moment in ("exp_avg", "exp_avg_sq"):
                    tensors = [piece[moment] for piece in found]
                    entry[moment] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)
                    if entry[moment].shape != param.shape:
                        raise ValueError(f"{source}: optimizer {moment} of {pieces} is {tuple(entry[moment].shape)}, "
                                         f"the parameter {tuple(param.shape)}")
                state[position] = entry
            indices.append(position)
            position += 1
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": indices})
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------ the start
@dataclass
class PretrainingStart:
    """What ``--init`` provides, in pass-hub names.

    Attributes:
        source: The ``--init`` argument.
        source_format: ``original_pretraining``, ``pass_hub_run`` or ``backbone``.
        architecture: Settings the weights fix (``preset``, ``out_dim``, ``head_hidden_dim``,
            ``head_bottleneck_dim``, ``part_tokens``; heads only when they are loaded) and the ``trained_size``
            of the position table.
        student / teacher: ``PartAwareDINO`` state dicts (for a backbone: ``backbone.*`` only).
        centers: (1 + P, K), or None for fresh centers.
        optimizer: The optimizer state, in the source's layout, or None.
        student_keys: The original student's keys in their order (the original optimizer's parameter ids).
        original_student: The original student state (to order the optimizer's parameters).
        epoch: The epoch the source would run next, or None.
        scaler: The fp16 grad-scaler state, or None.
    """

    source: str
    source_format: str
    architecture: dict[str, Any]
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    centers: torch.Tensor | None = None
    optimizer: dict[str, Any] | None = None
    student_keys: list[str] = dataclasses.field(default_factory=list)
    original_student: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    epoch: int | None = None
    scaler: dict[str, Any] | None = None

    @property
    def heads_loaded(self) -> bool:
        return self.source_format != "backbone"

    def describe(self) -> str:
        """One line for the log: what was loaded from where."""
        kinds = {"original_pretraining": "original pre-training checkpoint",
                 "pass_hub_run": "pass-hub pre-training run", "backbone": "backbone"}
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        if not self.heads_loaded:
            return (f"{self.source} ({kinds[self.source_format]}): backbone loaded into student and teacher; new "
                    "heads and centers")
        heads = 1 + (3 if self.architecture["part_tokens"] else 0)
        return f"{self.source} ({kinds[self.source_format]}{epoch}): student, teacher, {heads} heads and centers loaded"

    def settings_for(self, settings: PretrainSettings) -> PretrainSettings:
        """``settings`` with the architecture the weights fix."""
        return dataclasses.replace(settings, **{k: v for k, v in self.architecture.items() if k != "trained_size"})

    def grid_change(self, settings: PretrainSettings) -> tuple[str, str] | None:
        """(``"16x8"``, ``"24x8"``) when the run's ``image_size`` puts the patches on another grid than the one the
        source's position table is laid out for; None when they agree."""
        return grid_change(self.architecture["trained_size"], settings.image_size, PATCH_SIZE)

    def check_run(self, settings: PretrainSettings, init_optimizer: bool) -> None:
        """Raise ``ValueError`` (one line) for a run these weights cannot start: a true resume (the optimizer's
        state, ``init_optimizer``) at another grid, whose Adam moments of the position table have the old shape."""
        grid = self.grid_change(settings)
        if grid and init_optimizer:
            height, width = self.architecture["trained_size"]
            raise ValueError(
                f"{self.source}: its position table is laid out for {height}x{width} inputs ({grid[0]} patches) and "
                f"its optimizer state with it; resume it at --image_size {height} {width}, or drop --init_optimizer "
                f"to continue at {settings.image_size[0]}x{settings.image_size[1]} with a new optimizer"
            )

    def networks(self, settings: PretrainSettings) -> tuple[PartAwareDINO, PartAwareDINO, CentersState | None]:
        """Student, teacher and centers for ``settings`` (see :meth:`settings_for`) with these weights; a position
        table laid out for another grid is resampled once to the run's (:meth:`grid_change`), so training,
        checkpoints and the published model all use the run's grid."""
        student = new_network(settings, settings.drop_path_rate)
        teacher = new_network(settings, 0.0)
        for network, state, role in ((student, self.student, "student"), (teacher, self.teacher, "teacher")):
            state = dict(state)
            if "backbone.pos_embed" in state:
                state["backbone.pos_embed"] = position_table_for(state["backbone.pos_embed"], network.backbone)
            if self.heads_loaded:
                check_state_dict(network.state_dict(), state, f"{self.source} ({role})")
                network.load_state_dict(state)
            else:
                network.backbone.load_state_dict(_strict_backbone(network, state, self.source))
        teacher.requires_grad_(False)
        centers = None
        if self.centers is not None:
            centers = CentersState(*self.centers.shape)
            centers.centers.copy_(self.centers)
        return student, teacher, centers

    def load_optimizer(self, optimizer: torch.optim.Optimizer, network: PartAwareDINO) -> None:
        """Give ``optimizer`` the source's state (``--init_optimizer``)."""
        if self.optimizer is None:
            raise ValueError(f"{self.source}: no optimizer state to load (a {self.source_format} source)")
        if self.source_format == "original_pretraining":
            state = optimizer_state_from_original(self.optimizer, self.student_keys, self.original_student, network,
                                                  optimizer, self.source)
        else:
            state = self.optimizer
        optimizer.load_state_dict(state)


def _strict_backbone(network: PartAwareDINO, state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()}
    check_state_dict(network.backbone.state_dict(), backbone, source)
    return backbone


def _preset_of(
    backbone: Mapping[str, torch.Tensor], arch: str | None, source: str, num_heads: int | None
) -> tuple[str, tuple[int, int]]:
    """The ``preset`` setting of a backbone (a preset name, or its shape written out) and its trained input size;
    an original ``args.arch`` that names another preset is refused."""
    named = f"pass_{arch}" if arch and f"pass_{arch}" in PRESETS else None
    heads = num_heads
    if heads is None and named and PRESETS[named]["embed_dim"] == backbone["cls_token"].shape[-1]:
        heads = PRESETS[named]["num_heads"]
    args = infer_backbone_args(backbone, num_heads=heads, source=source)
    name = architecture_name(args["embed_dim"], args["depth"], args["num_heads"])
    if named and named != name:
        raise ValueError(f"{source}: its args say arch {arch!r} but its tensors are {name}")
    return name, tuple(args["img_size"])


def _head_architecture(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Head sizes and the [PART] tokens from pass-hub-named heads (``heads.heads.<t>.*``)."""
    types = {int(m.group(1)) for key in state if (m := re.match(r"heads\.heads\.(\d+)\.", key))}
    if not types:
        raise ValueError(f"{source}: no heads in the checkpoint")
    last = state.get(f"heads.heads.0.{NORMED}original1")
    first, bottleneck = state.get("heads.heads.0.mlp.0.weight"), state.get("heads.heads.0.mlp.4.weight")
    if last is None or first is None or bottleneck is None:
        raise ValueError(f"{source}: the CLS head lacks its mlp.0 / mlp.4 / last layer weights")
    return {"out_dim": last.shape[0], "head_hidden_dim": first.shape[0], "head_bottleneck_dim": bottleneck.shape[0],
            "part_tokens": len(types) > 1}


def _heads_to_pass_hub(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original head names (``head.mlp_cls.0.weight`` ...) renamed to pass-hub's, for reading the head sizes."""
    renamed = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"head\.(mlp|last_layer)(?:_(?:cls|pt(\d)))?\.(.*)", key)
        if match is None:
            continue
        kind, part, rest = match.groups()
        token_type = int(part) if part else 0
        if kind == "mlp":
            renamed[f"heads.heads.{token_type}.mlp.{rest}"] = tensor
        else:
            names = {v: k for k, v in WEIGHT_NORM.items()}
            renamed[f"heads.heads.{token_type}.{NORMED}{names.get(rest, rest)}"] = tensor
    return renamed


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _from_original_checkpoint(
    checkpoint: Mapping[str, Any], source: str, num_heads: int | None = None
) -> PretrainingStart:
    for key in ("student", "teacher"):
        if not isinstance(checkpoint.get(key), Mapping):
            raise ValueError(f"{source}: a pre-training checkpoint needs a '{key}' state dict")
    student = _strip_module(checkpoint["student"])
    teacher = _strip_module(checkpoint["teacher"])
    backbone = _backbone_shapes({k.removeprefix("backbone."): v for k, v in teacher.items()
                                 if k.startswith("backbone.")}, source)
    arch = getattr(checkpoint.get("args"), "arch", None)
    preset, trained_size = _preset_of(backbone, arch, source, num_heads)
    heads = _head_architecture(_heads_to_pass_hub(teacher), source)
    architecture = {"preset": preset, **heads, "trained_size": trained_size}
    probe = new_network(_probe_settings(architecture), 0.0, trained_size=trained_size)
    converted = {role: from_original_layout(state, probe, f"{source} ({role})")
                 for role, state in (("student", student), ("teacher", teacher))}
    if "dino_loss" not in checkpoint:
        raise ValueError(f"{source}: the checkpoint has no 'dino_loss' (the centers)")
    centers = centers_from_original(checkpoint["dino_loss"], probe.num_parts, source)
    if centers.shape[1] != heads["out_dim"]:
        raise ValueError(f"{source}: centers of {centers.shape[1]} prototypes for heads of {heads['out_dim']}")
    return PretrainingStart(
        source, "original_pretraining", architecture, converted["student"], converted["teacher"], centers,
        optimizer=checkpoint.get("optimizer"), student_keys=list(student), original_student=student,
        epoch=int(checkpoint["epoch"]) if "epoch" in checkpoint else None, scaler=checkpoint.get("fp16_scaler"),
    )


def _backbone_shapes(original: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """An original backbone with tensors of the pass-hub layout's shapes in place of the split ones: enough for
    :func:`infer_backbone_args`, before any shape is checked."""
    if "cls_token" not in original or "pos_embed" not in original:
        raise ValueError(f"{source}: the teacher has no 'backbone.cls_token' / 'backbone.pos_embed'")
    dim = original["cls_token"].shape[-1]
    parts = sum(1 for key in original if re.fullmatch(r"part_token\d+", key))
    shapes = dict(original)
    shapes["reg_token"] = torch.empty(1, parts, dim)
    shapes["pos_embed"] = torch.empty(1, 1 + parts + original["pos_embed"].shape[1], dim)
    return shapes


def _probe_settings(architecture: dict[str, Any]) -> Any:
    """Just enough settings to build a network of ``architecture`` (no token init: weights come from the source)."""
    from training.engine.recipes import RECIPES

    base = RECIPES["pretrain"]["cpu_demo"].settings
    fields = {k: v for k, v in architecture.items() if k != "trained_size"}
    return dataclasses.replace(base, **fields, token_init="timm")


def latest_run_checkpoint(folder: Path) -> Path:
    """The latest complete ``checkpoints/step_*`` folder of a pass-hub run (or ``folder`` itself if it is one)."""
    if (folder / "model.safetensors").is_file() and any(folder.glob("custom_checkpoint_*.pkl")):
        return folder
    steps = sorted(p for p in (folder / "checkpoints").glob("step_*") if p.is_dir())
    if not steps:
        raise FileNotFoundError(f"{folder}: a pass-hub pre-training run folder without checkpoints/step_* folders")
    return steps[-1]


def _from_pass_hub_run(folder: Path, source: str, num_heads: int | None = None) -> PretrainingStart:
    from safetensors.torch import load_file

    checkpoint = latest_run_checkpoint(folder)
    student = load_file(checkpoint / "model.safetensors")
    parts: dict[str, dict[str, Any]] = {}
    for file in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        state = load_checkpoint_file(file)
        kind = "teacher" if "backbone.cls_token" in state else "centers" if "centers" in state else "state"
        parts[kind] = state
    missing = [kind for kind in ("teacher", "centers", "state") if kind not in parts]
    if missing:
        raise ValueError(f"{checkpoint}: not a pass-hub pre-training checkpoint (no {', '.join(missing)})")
    teacher = parts["teacher"]
    backbone = {k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")}
    preset, trained_size = _preset_of(backbone, None, source, num_heads)
    architecture = {"preset": preset, **_head_architecture(teacher, source), "trained_size": trained_size}
    optimizer = None
    if (checkpoint / "optimizer.bin").is_file():
        optimizer = torch.load(checkpoint / "optimizer.bin", map_location="cpu", weights_only=True)
    results = folder / "results.json"
    epoch = None
    if results.is_file():
        import json

        done = json.loads(results.read_text())
        if done.get("steps_per_epoch"):
            epoch = int(parts["state"]["step"]) // int(done["steps_per_epoch"])
    return PretrainingStart(source, "pass_hub_run", architecture, dict(student), dict(teacher),
                            parts["centers"]["centers"], optimizer=optimizer, epoch=epoch)


def _from_backbone(path: str, source: str, num_heads: int | None = None) -> PretrainingStart:
    if (Path(path) / "config.json").is_file():  # a pass-hub folder: read with its config, which names the heads
        model = load_pass_hub_folder(path)
        weights = extract_weights(model.state_dict(), source=source)
        num_heads = num_heads or model.config.num_attention_heads
    else:
        weights = extract_weights(load_checkpoint_file(path), source=source)
    preset, trained_size = _preset_of(weights.backbone, None, source, num_heads)
    state = {f"backbone.{k}": v for k, v in weights.backbone.items()}
    return PretrainingStart(source, "backbone", {"preset": preset, "trained_size": trained_size}, state, state)


def load_pretraining_start(spec: str, num_heads: int | None = None) -> PretrainingStart:
    """Read what ``--init spec`` names (module docstring); ``FileNotFoundError`` / ``ValueError`` name the problem.

    The backbone may have any width and depth; ``num_heads`` gives its attention heads where width / 64 is not
    the number (the checkpoint does not say).
    """
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--init {spec}: no such file or folder")
    if path.is_dir() and ((path / "checkpoints").is_dir() or any(path.glob("custom_checkpoint_*.pkl"))):
        return _from_pass_hub_run(path, spec, num_heads)
    if path.is_file() and path.suffix != ".safetensors":
        checkpoint = load_checkpoint_file(path)
        if {"student", "teacher", "dino_loss"} & set(checkpoint):
            return _from_original_checkpoint(checkpoint, spec, num_heads)
    return _from_backbone(spec, spec, num_heads)


def original_checkpoint(
    student: PartAwareDINO, teacher: PartAwareDINO, centers: torch.Tensor, epoch: int, args: Any = None
) -> dict[str, Any]:
    """A ``checkpoint.pth`` dict in the original layout (no optimizer): what a test or a user hands back to the
    original code, and what :func:`load_pretraining_start` reads."""
    return {
        "student": {f"module.{k}": v for k, v in to_original_layout(student.state_dict(), student).items()},
        "teacher": to_original_layout(teacher.state_dict(), teacher),
        "epoch": epoch,
        "args": args,
        "dino_loss": centers_to_original(centers),
    }
