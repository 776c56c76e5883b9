"""Shared test setup: offline hub access, tiny configs, and helpers to lay out hub caches."""

from __future__ import annotations

import os

# Tests never touch the network; set before huggingface_hub / transformers read their settings.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import shutil
from pathlib import Path

import pytest
import torch

import pass_hub


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> pass_hub.PassViTConfig:
    """A 2-block, 64-wide PassViT at 256x128: fast enough for every test."""
    return pass_hub.PassViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)


def populate_hub_cache(folder: Path, repo_id: str, cache_dir: Path, commit: str = "0" * 40) -> None:
    """Lay out ``folder`` in ``cache_dir`` the way huggingface_hub caches a downloaded repo (no network needed)."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
