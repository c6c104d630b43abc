"""Inference speed of checkpoints side by side: `bench.bench_inference` (eager and
TorchScript-traced, batch-norm folded, batch 1024, 4,096 simulated spectra of each
model's own ranges; then the median of 100 one-spectrum calls), every checkpoint in
turn, `--rounds` times, so that machine drift hits them alike.

    python scripts/bench_inference_ckpts.py A.ckpt B.ckpt --rounds 2
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from dysonian_pl.bench import bench_inference, load_checkpoint
from dysonian_pl.model import fuse_for_inference
from dysonian_pl.simulate import simulate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpts", nargs="+", help="checkpoints written by dysonian_pl training")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the checkpoints (default 2)")
    args = ap.parse_args(argv)
    print(
        "| round | checkpoint | eager spectra/s | eager one (ms) | traced spectra/s | traced one (ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in range(args.rounds):
        for path in args.ckpts:
            model = load_checkpoint(path)
            x = simulate(model.sim, 0, np.arange(4096))[0]
            res = bench_inference(fuse_for_inference(model.net), x, torch.device("cpu"), calls=100)
            e, t = res["eager"], res["traced"]
            traced = (
                f"{t['batched_spectra_per_s']:.0f} | {t['latency_ms']:.2f}"
                if isinstance(t, dict)
                else f"{t} | "
            )
            print(
                f"| {r + 1} | {path} | {e['batched_spectra_per_s']:.0f} | {e['latency_ms']:.2f} "
                f"| {traced} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
