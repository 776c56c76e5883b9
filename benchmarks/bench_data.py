"""Throughput of the data pipeline: SynthPerson generation, and loading + decoding through a DataLoader.

Run: ``.venv/bin/python benchmarks/bench_data.py`` (about a minute on 2 cores). One run, nothing asserted:

* generation: ``generate_synthperson`` in memory, and ``write_market_layout`` to disk (one process);
* loading: ``load_reid_dataset("market1501", ...)`` on the written folder (listing + header checks);
* decoding: one pass over all labelled images through ``torch.utils.data.DataLoader`` with ``--workers``
  workers, images decoded from JPEG files to ``uint8`` tensors (``with_format("torch")``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datasets import concatenate_datasets
from torch.utils.data import DataLoader

from pass_hub.data import SynthPersonConfig, generate_synthperson, load_reid_dataset, write_market_layout


def _rate(images: int, seconds: float) -> str:
    return f"{images:6d} images in {seconds:6.2f} s = {images / seconds:7.1f} images/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-ids", type=int, default=100, help="SynthPerson train identities (default: 100)")
    parser.add_argument("--test-ids", type=int, default=50, help="SynthPerson test identities (default: 50)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    config = SynthPersonConfig(train_ids=args.train_ids, test_ids=args.test_ids, unlabelled=0)

    start = time.perf_counter()
    in_memory = generate_synthperson(config, splits=["train", "query", "gallery"], progress=False)
    generated = sum(split.num_rows for split in in_memory.values())
    print(f"generate_synthperson (in memory, 1 process):  {_rate(generated, time.perf_counter() - start)}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = write_market_layout(Path(tmp) / "synth-market", config, progress=False)
        print(f"write_market_layout (JPEG files, 1 process):  {_rate(generated, time.perf_counter() - start)}")

        start = time.perf_counter()
        data = load_reid_dataset("market1501", root)
        print(f"load_reid_dataset (list + header checks):     {_rate(generated, time.perf_counter() - start)}")

        images = concatenate_datasets(list(data.values())).with_format("torch")
        loader = DataLoader(images, batch_size=args.batch_size, num_workers=args.workers)
        start = time.perf_counter()
        decoded = sum(batch["image"].shape[0] for batch in loader)
        seconds = time.perf_counter() - start
        shape = tuple(images[0]["image"].shape)
        print(f"DataLoader decode ({args.workers} workers, {shape} uint8): {_rate(decoded, seconds)}")


if __name__ == "__main__":
    main()
