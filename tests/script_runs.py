"""Running the training scripts from tests: offline, one thread, on one process or two (gloo on the CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def script_env(threads: int = 1) -> dict[str, str]:
    # ACCELERATE_USE_CPU: the 2-process launch (gloo) must not look for GPUs; single processes run on CPU anyway.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
            "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}


def run_script(
    script: Path, args: list[str], launcher: list[str] | None = None, check: bool = True, threads: int = 1
) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` (under ``launcher``, e.g. :func:`two_processes`) on ``threads`` threads per
    process; check it succeeded."""
    command = (launcher or [sys.executable]) + [str(script), *args]
    result = subprocess.run(command, env=script_env(threads), capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def two_processes(port: int) -> list[str]:
    """``accelerate launch`` of two CPU processes (:func:`script_env` sets ``ACCELERATE_USE_CPU=1``)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
    ]


def signal_after_checkpoint(
    script: Path, args: list[str], output_dir: Path, step: int, signum: int
) -> subprocess.CompletedProcess:
    """Run ``script`` into ``output_dir`` and send it ``signum`` as soon as the checkpoint of ``step`` exists;
    checked that it did not finish. Returns the ended process with its output."""
    args = [*args, "--output_dir", str(output_dir)]
    checkpoint = output_dir / "checkpoints" / f"step_{step:08d}"
    process = subprocess.Popen([sys.executable, str(script), *args], env=script_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not checkpoint.exists():
        assert process.poll() is None and time.time() < deadline, "run ended before the checkpoint"
        time.sleep(0.02)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert not (output_dir / "results.json").exists(), "the run finished before the signal"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def kill_then_resume(script: Path, args: list[str], output_dir: Path, step: int) -> None:
    """Run ``script`` into ``output_dir``, SIGKILL it as soon as the checkpoint of ``step`` exists (a crash
    mid-run; checked that it really died), then run it again with ``--resume`` to the end."""
    killed = signal_after_checkpoint(script, args, output_dir, step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    run_script(script, [*args, "--output_dir", str(output_dir), "--resume"])


def assert_same_weights(expected: Path, actual: Path) -> None:
    """The two safetensors files hold the same tensors, bit for bit."""
    first, second = load_file(expected), load_file(actual)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
