"""The original PASS code (a checkout of CASIA-IVA-Lab/PASS-reID), imported at run time and run on the CPU beside
pass-hub, for ``parity_with_original.py`` and ``bench_original_steps.py``. Nothing of it is copied here.

The checkout was written for torch 1.8 on CUDA. What it needs to run here, all scoped to this process:

* ``torch._six`` (removed in torch 2.0), which ``PASS_transreid`` and the cluster-contrast model import
  ``container_abcs`` from: a stand-in module holding ``collections.abc``;
* its steps hard-code CUDA (``do_train``: ``img.to("cuda")``, ``torch.cuda.synchronize()``; ``train_one_epoch``:
  ``.cuda()``): while an original step runs (:func:`as_on_one_gpu`), tensors asked onto CUDA stay on the CPU and
  synchronising does nothing; its ``torch.cuda.amp`` autocast and grad scaler disable themselves without a GPU, so
  the step runs in fp32;
* ``DINOLoss`` all-reduces its centers over ``torch.distributed``: over one process that is the identity, and so
  is the stand-in (:func:`as_on_one_gpu`);
* the student is called as ``student.module``: a plain wrapper stands in for DDP, which over one process changes
  no gradient;
* its own dependencies ``yacs`` (the fine-tuning config: ``pip install yacs``) and ``faiss`` (the clustering's
  neighbour search: ``pip install faiss-cpu``);
* ``compute_jaccard_distance`` (cluster-contrast) always builds its faiss index on the GPUs
  (``search_option = 2``): while :func:`faiss_on_cpu` is active it gets the original's own CPU index
  (``index_init_cpu``, the ``IndexFlatL2`` of its CPU branch) instead.

Its folders hold top-level modules named ``utils``, ``model``, ``config``, ``datasets`` ...; each part is imported
with its folder first on ``sys.path`` and its modules taken out of ``sys.modules`` afterwards, so that they clash
neither with each other nor with the libraries of the same names.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import importlib
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

PARTS = ("PASS", "PASS_transreid", "PASS_cluster_contrast_reid")
SIGNATURE = {"PASS": "main_pass.py", "PASS_transreid": "processor/processor.py",
             "PASS_cluster_contrast_reid": "clustercontrast/trainers.py"}


def _is_cuda(device: Any) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda")


@contextlib.contextmanager
def as_on_one_gpu() -> Iterator[None]:
    """While an original step runs: tensors asked onto CUDA stay on the CPU, ``torch.cuda.synchronize`` does
    nothing, ``torch.distributed.all_reduce`` over the one process is the identity and the world size 1 (what a
    one-process group gives, without one: the original's loggers would then gather on CUDA), and the warnings of
    ``torch.cuda.amp`` disabling itself are silenced."""
    saved = (torch.Tensor.to, torch.Tensor.cuda, torch.cuda.synchronize, dist.all_reduce, dist.get_world_size)
    to = saved[0]

    def to_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple("cpu" if _is_cuda(arg) else arg for arg in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.cuda.synchronize = lambda *args, **kwargs: None
    dist.all_reduce = lambda tensor, *args, **kwargs: None
    dist.get_world_size = lambda *args, **kwargs: 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.Tensor.to, torch.Tensor.cuda, torch.cuda.synchronize, dist.all_reduce, dist.get_world_size = saved


@contextlib.contextmanager
def faiss_on_cpu(faiss_rerank: types.ModuleType) -> Iterator[None]:
    """While active, the original's ``compute_jaccard_distance`` searches with its CPU index (module docstring)."""
    saved = faiss_rerank.index_init_gpu
    faiss_rerank.index_init_gpu = lambda ngpus, feat_dim: faiss_rerank.index_init_cpu(feat_dim)
    try:
        yield
    finally:
        faiss_rerank.index_init_gpu = saved


class Wrapped(nn.Module):
    """What ``DistributedDataParallel`` is to the original loop over one process: ``.module`` and a forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class OriginalCheckout:
    """A checkout of CASIA-IVA-Lab/PASS-reID whose parts are imported on demand (module docstring).

    Raises:
        SystemExit: the folder is not such a checkout, or ``yacs`` is missing (naming what to do).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        missing = [f"{part}/{file}" for part, file in SIGNATURE.items() if not (self.folder / part / file).is_file()]
        if missing:
            raise SystemExit(f"--original {folder}: not a checkout of CASIA-IVA-Lab/PASS-reID (no "
                             f"{', '.join(missing)})")
        sys.modules.setdefault("torch._six", types.SimpleNamespace(container_abcs=collections.abc,
                                                                   string_classes=(str, bytes), int_classes=int))

    def _import(self, part: str, names: tuple[str, ...]) -> types.SimpleNamespace:
        folder = self.folder / part
        own = {path.stem for path in folder.glob("*.py")} | {
            path.name for path in folder.iterdir() if (path / "__init__.py").is_file()}
        saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in own}
        for name in saved:
            del sys.modules[name]
        sys.path.insert(0, str(folder))
        try:
            modules = {name.replace(".", "_"): importlib.import_module(name) for name in names}
        finally:
            sys.path.remove(str(folder))
            for name in [name for name in sys.modules if name.split(".")[0] in own]:
                del sys.modules[name]
            sys.modules.update(saved)
        return types.SimpleNamespace(**modules)

    @functools.cached_property
    def pretraining(self) -> types.SimpleNamespace:
        """``main_pass`` (``train_one_epoch``, ``DINOLoss``), ``utils`` and ``vision_transformer`` of ``PASS/``."""
        return self._import("PASS", ("main_pass", "utils", "vision_transformer"))

    @functools.cached_property
    def finetuning(self) -> types.SimpleNamespace:
        """``config``, ``model.make_model``, ``model.backbones.vit_pytorch``, ``loss``, ``loss.triplet_loss``,
        ``solver``, ``solver.scheduler_factory`` and ``processor`` of ``PASS_transreid/`` (dots become ``_``)."""
        try:
            import yacs  # noqa: F401
        except ImportError:
            raise SystemExit("the original fine-tuning code reads its settings with yacs: pip install yacs") from None
        return self._import("PASS_transreid", ("config", "model.make_model", "model.backbones.vit_pytorch", "loss",
                                               "loss.triplet_loss", "solver", "solver.scheduler_factory", "processor"))

    @functools.cached_property
    def cluster_contrast(self) -> types.SimpleNamespace:
        """``vision_transformer`` (the USL / UDA model), ``cm`` (``ClusterMemory``), ``trainers``, ``evaluators``
        and ``faiss_rerank`` of ``PASS_cluster_contrast_reid/clustercontrast`` (attributes without the package)."""
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise SystemExit("the original clustering searches neighbours with faiss: pip install faiss-cpu") from None
        names = ("models.vision_transformer", "models.cm", "trainers", "evaluators", "utils.faiss_rerank")
        modules = self._import("PASS_cluster_contrast_reid", tuple(f"clustercontrast.{name}" for name in names))
        return types.SimpleNamespace(**{name.split(".")[-1]: getattr(modules, f"clustercontrast_{name}".replace(
            ".", "_")) for name in names})

    def finetuning_config(self, yml: str, *overrides: Any) -> Any:
        """The original's config: its defaults, then ``configs/<yml>``, then ``overrides`` (key, value, ...)."""
        cfg = self.finetuning.config.cfg.clone()
        cfg.merge_from_file(str(self.folder / "PASS_transreid" / "configs" / yml))
        cfg.merge_from_list(list(overrides))
        return cfg

    def register_vit(self, name: str, embed_dim: int, depth: int, num_heads: int) -> None:
        """Add a ViT of any shape to ``make_model``'s table of backbones (the original has ViT-S and ViT-B)."""
        vit_pytorch = self.finetuning.model_backbones_vit_pytorch

        def factory(**kwargs: Any) -> nn.Module:
            vit = vit_pytorch.TransReID(patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                        mlp_ratio=4, qkv_bias=True, **kwargs)
            vit.in_planes = embed_dim
            return vit

        vars(self.finetuning.model_make_model)["__factory_T_type"][name] = factory


class SteppingLoader:
    """A data loader over given batches that calls ``after_step`` between them and after the last, so that the
    state after each iteration of an original loop can be read while the loop runs."""

    def __init__(self, batches: list[Any], after_step: Any, batch_size: int) -> None:
        self.batches, self.after_step, self.batch_size = batches, after_step, batch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield batch
            self.after_step()
