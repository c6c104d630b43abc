"""Strip a training checkpoint to what prediction needs, for `dysonian_pl/pretrained/`.

    python scripts/export_pretrained.py BEST.ckpt dysonian_pl/pretrained/universal-plate.ckpt \
        --note "trained by: python -m dysonian_pl fit --config ..."

Keeps the weights (float32), the hyper-parameters and the `dysonian_pl` section
(simulation config, field axis, ranges, calibration); drops optimizer and scheduler
states, callbacks and loop state. The result loads with `torch.load(weights_only=True)`
and `dysonian_pl.infer.load_model`, and predicts exactly what the source checkpoint
predicts (checked here before the file is written, atomically).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from dysonian_pl.atomic import atomic_open
from dysonian_pl.infer import load_model, predict_arrays, read_checkpoint
from dysonian_pl.simulate import simulate

KEEP = ("state_dict", "hyper_parameters", "dysonian_pl", "pytorch-lightning_version", "epoch",
        "global_step")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="training checkpoint (.ckpt)")
    ap.add_argument("dst", help="output path")
    ap.add_argument("--note", default="", help="provenance text stored in the file")
    a = ap.parse_args(argv)

    ckpt = read_checkpoint(a.src)
    out = {k: ckpt[k] for k in KEEP if k in ckpt}
    out["dysonian_pl"] = {**ckpt["dysonian_pl"], "exported_from": Path(a.src).name}
    if a.note:
        out["dysonian_pl"]["note"] = a.note
    dst = Path(a.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(dst, "wb") as f:
        torch.save(out, f)

    src_model, dst_model = load_model(a.src), load_model(dst)
    x = simulate(src_model.sim, 0, 10**9 + np.arange(64))[0].numpy()
    a_val, a_sig = predict_arrays(src_model, x, return_sigma=True)
    b_val, b_sig = predict_arrays(dst_model, x, return_sigma=True)
    if not (np.array_equal(a_val, b_val) and np.array_equal(a_sig, b_sig, equal_nan=True)):
        dst.unlink()
        print(f"error: {dst} does not predict what {a.src} predicts; removed", file=sys.stderr)
        return 1
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    size = dst.stat().st_size
    print(f"{dst}: {size / 1e6:.2f} MB, sha256 {digest}, predictions identical on 64 spectra")
    return 0


if __name__ == "__main__":
    sys.exit(main())
