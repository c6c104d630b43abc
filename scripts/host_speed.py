"""How fast is this host today? Training samples/s of the prior work's network and of the
default network, interleaved in one process, on identical simulated set-4 spectra.

The CPU machines this project runs on are not all alike: in the same `bench` command
the prior network trained at 17 samples/s on 2026-11-24 and at 47 on 2026-11-25
(`docs/benchmarks.md`); the project brief quotes about 35 for "this CPU". The
wall-clock results of 2026-11-25 in `docs/benchmarks.md` are quoted with this script's
numbers from the same session (prior 46.4 samples/s), so a reader can tell a better
recipe from a faster host:

    python scripts/host_speed.py            # about 1 minute; prints one JSON line

Both networks train with AdamW and batch 32 (the optimized regime's batch) on the
default `fit`'s thread count; the first step of each round is not timed.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np
import torch

from dysonian_pl.model import DysonNet
from dysonian_pl.params import preset
from dysonian_pl.simulate import simulate

BATCH = 32


def main(rounds: int = 3, seconds: float = 8.0) -> dict:
    x, _ = simulate(preset("set-4"), 0, np.arange(BATCH))
    y = torch.rand(BATCH, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    nets = {
        "prior": DysonNet(arch="prior"),
        "default": DysonNet(integral=True, dispersion=True, detrend=2),
    }
    opts = {k: torch.optim.AdamW(n.parameters(), lr=1e-4) for k, n in nets.items()}
    counts = {k: [0, 0.0] for k in nets}  # samples, seconds

    def step(name: str) -> None:
        loss = ((nets[name](x) - y) ** 2).mean()
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for _ in range(rounds):
        for name in nets:  # interleaved: drift within the run hits both alike
            step(name)  # untimed warm-up of this round
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                step(name)
                counts[name][0] += BATCH
            counts[name][1] += elapsed
    rate = {k: round(n / s, 1) for k, (n, s) in counts.items()}
    return {
        "prior_samples_per_s": rate["prior"],
        "default_samples_per_s": rate["default"],
        "ratio": round(rate["default"] / rate["prior"], 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "batch": BATCH,
    }


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(__doc__)
    print(json.dumps(main()))
