"""Running the training scripts from tests: offline, one thread, on one process or two (gloo on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def script_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


def run_script(
    script: Path, args: list[str], launcher: list[str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` (under ``launcher``, e.g. :func:`two_processes`); check it succeeded."""
    command = (launcher or [sys.executable]) + [str(script), *args]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def two_processes(port: int) -> list[str]:
    """``accelerate launch`` of two processes; run with ``ACCELERATE_USE_CPU=1`` in the environment."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
    ]
