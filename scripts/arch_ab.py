"""Architecture A/B for the speed issue: one network variant trained on fresh set-4 spectra
for a fixed wall-time budget with the default recipe, then its held-out MAE.

The recipe is the default `fit`'s, without Lightning (so variants that the CLI does not
offer can be tried): AdamW lr 4e-3 (weight decay 1e-4), batch 128, 100 warm-up steps,
then cosine decay to 2 % over the wall-time budget, MSE on min-max scaled targets with
weights 1, 1, 2 (recipe keys ``weights`` and ``loss``: mse, l1, huber:DELTA), gradient clipping at 1.0; fresh spectra every step (simulated 1,024 at a
time); 2,000 held-out spectra from another seed. Run variants in pairs, one thread each,
so that both see the same machine:

    python scripts/arch_ab.py default 480 > a.json & python scripts/arch_ab.py integral 480 > b.json & wait

Variants: ``default`` (the default fast network without the integral channel), ``lr=X``
(that network at learning rate X), ``integral`` (with `model.integral`: the spectrum's
running integral as a fourth input channel, as the default `fit` trains it), or a JSON
object: `DysonNet` keyword arguments plus recipe keys ``lr``, ``weights`` (the loss
weights of B0, dB, p), ``batch`` and ``seed`` (of the initial weights; the data are
the same for every seed), e.g. ``'{"integral": true, "weights": [2, 0.5, 4]}'``;
``"mlp_heads": true`` replaces the one linear head by one 256-128-1 MLP per parameter;
``"ema": [0.999, ...]`` also reports the MAE of exponential moving averages of the
weights (same run, same steps), ``"weight_decay"`` AdamW's (default 1e-4);
``"flatten": true`` feeds all 32 positions of the last stage to the trunk (no pooling);
``"hilbert": true`` is ``"integral": true, "dispersion": true`` (the name pairs 6-8
used; those ran an earlier copy of `model.dispersion_channel` that summed in float64);
with a ``fold`` key, a fold-F network without the four-stage pyramid, e.g.
``'{"fold": 4, "width": 32, "dilations": [1, 2, 4, 8]}'`` (space-to-depth by F, 1 x 3
residual blocks with those dilations at 1/F resolution, attention pooling). Prints one
JSON line: steps, samples/s and MAE (B0 G, dB G, p).
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch
from torch import nn

from dysonian_pl.model import (
    AttentionPool,
    Block2d,
    DysonNet,
    _statistics,
)
from dysonian_pl.params import preset
from dysonian_pl.simulate import simulate


class FlatNet(nn.Module):
    """Space-to-depth by `fold`, dilated 1 x 3 residual blocks at that resolution, pooling."""

    def __init__(self, fold: int = 4, width: int = 32, dilations=(1, 2, 4, 8)) -> None:
        super().__init__()
        self.fold = fold
        self.features = nn.Sequential(
            nn.Conv2d(3 * fold, width, (1, 1), bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            *(Block2d(width, 3, d) for d in dilations),
        )
        self.pool = AttentionPool(width, 4)
        self.trunk = nn.Sequential(nn.Linear(4 * width + 4, 256), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape
        mean, std, lo, span = _statistics(x)
        pos = torch.linspace(-1.0, 1.0, length).expand(n, length)
        m, f = length // self.fold, self.fold
        chans = [((x - mean) / std), (2 * (x - lo) / span - 1), pos]
        h = torch.cat([c.reshape(n, m, f) for c in chans], -1).view(n, 1, m, 3 * f)
        h = self.features(h.permute(0, 3, 1, 2)).squeeze(2)
        return self.head(self.trunk(self.pool(h)))


#: recipe keys a JSON variant may set besides the network's
RECIPE = {
    "lr": 4e-3, "weights": (1.0, 1.0, 2.0), "batch": 128, "seed": 0, "loss": "mse",
    "ema": (), "weight_decay": 1e-4,
}  # fmt: skip


def elementwise_loss(err: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-element loss of scaled errors: ``mse``, ``l1`` or ``huber:DELTA`` (scaled units)."""
    if kind == "mse":
        return err**2
    if kind == "l1":
        return err.abs()
    if kind.startswith("huber:"):
        delta = float(kind[6:])
        a = err.abs()
        return torch.where(a < delta, 0.5 * err**2 / delta, a - 0.5 * delta)
    raise ValueError(f"loss: mse, l1 or huber:DELTA (got {kind!r})")


def build(variant: str) -> tuple[nn.Module, dict]:
    """(network, recipe) of a variant name."""
    if variant == "default":
        return DysonNet(), dict(RECIPE)
    if variant.startswith("lr="):
        return DysonNet(), {**RECIPE, "lr": float(variant[3:])}
    if variant == "integral":
        return DysonNet(integral=True), dict(RECIPE)
    spec = json.loads(variant)
    recipe = {**RECIPE, **{k: spec.pop(k) for k in RECIPE if k in spec}}
    mlp_heads = spec.pop("mlp_heads", False)
    flatten = spec.pop("flatten", False)
    if spec.pop("hilbert", False):  # the name used in pairs 6-8: model.dispersion
        net = DysonNet(integral=True, dispersion=True)
    elif "fold" in spec:
        net = FlatNet(
            spec.get("fold", 4), spec.get("width", 32), spec.get("dilations", (1, 2, 4, 8))
        )
    else:
        net = DysonNet(**spec)
    if mlp_heads:  # one small MLP per parameter, as the prior work's heads
        net.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Linear(128, 1))
            for _ in range(3)
        )
    if flatten:  # every position of the last stage into the trunk, no pooling
        last = net.features[-1].conv2.out_channels
        net.pool = nn.Flatten(1)
        net.trunk[0] = nn.Linear(last * 32, 256)
    return net, recipe


def main(variant: str, budget_s: float, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    spec = json.loads(variant) if variant.startswith("{") else {}
    torch.manual_seed(int(spec.get("seed", 0)))  # the network's initial weights
    cfg = preset("set-4")
    net, recipe = build(variant)
    lr0 = recipe["lr"]
    net = net.to(memory_format=torch.channels_last)
    x_val, y_val = simulate(cfg, 999, np.arange(2000))
    lo, span = torch.tensor([3300.0, 3.0, 0.2]), torch.tensor([100.0, 97.0, 1.8])
    weights = torch.tensor(recipe["weights"], dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr0, weight_decay=recipe["weight_decay"])
    emas = [
        torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(d), use_buffers=True
        )
        for d in recipe["ema"]
    ]
    batch, block = int(recipe["batch"]), 8
    t0, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - t0) < budget_s:
        cosine = 0.5 * (1 + math.cos(math.pi * min(elapsed / budget_s, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr0 * min(1.0, (step + 1) / 100) * (0.02 + 0.98 * cosine)
        if step % block == 0:
            xs, ys = simulate(cfg, 0, np.arange(step * batch, (step + block) * batch))
        k = (step % block) * batch
        xb, yb = xs[k : k + batch], (ys[k : k + batch].float() - lo) / span
        net.train()
        err = elementwise_loss(net(xb) - yb, recipe["loss"])
        loss = (err.mean(0) * weights).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        for ema in emas:
            ema.update_parameters(net)
        step += 1

    def mae_of(model: nn.Module) -> list[float]:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x_val[i : i + 500]) for i in range(0, len(x_val), 500)])
        mae = (pred.double() * span.double() + lo.double() - y_val).abs().mean(0)
        return [round(v, 4) for v in mae.tolist()]

    out = {
        "variant": variant,
        "parameters": sum(p.numel() for p in net.parameters()),
        "steps": step,
        "samples_per_s": round(step * batch / budget_s, 1),
        "mae_B0_dB_p": mae_of(net),
    }
    for d, ema in zip(recipe["ema"], emas, strict=True):  # averaged weights, same steps
        out[f"mae_ema_{d}"] = mae_of(ema)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    args = (sys.argv[1], float(sys.argv[2]), *(int(a) for a in sys.argv[3:]))
    print(json.dumps(main(*args)))
